"""``--reload``: serve, and start the server afresh when a ``.py`` file changes.

``python -m gserver --reload ...`` checks its settings and the handler as always, then
replaces itself (``exec``) with this module's supervisor, a plain Python process with
neither gevent's monkey-patching nor its hub, as uvicorn's and gunicorn's reloaders are
plain parents.  The supervisor runs the real server as a child, ``python -m gserver`` with
the same arguments and ``--no-reload`` (so that a ``reload`` from the settings file or the
environment is overruled too), and watches the current directory (and the handler's
package, where that lies elsewhere) with watchfiles.

On a change it first imports the handler (or gserver's modes) in a throwaway process, as
the server would: if that fails, one line on stderr says why and the old child keeps
serving.  Otherwise the child is stopped gracefully (SIGTERM) and a new one started on
the same port; clients connected to the old one are told ``Server shutting down``, and a
client connecting in between may be refused for a moment, since the port is bound anew.

Children run with ``PYTHONDONTWRITEBYTECODE=1``: two edits of the same size within one
second would otherwise leave a stale ``.pyc`` that looks current.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import os
import signal
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gserver.settings import Settings

PREFIX = "gserver: reload:"
# Past shutdown_grace, how long a stopping child may take before it is killed (as the
# workers' master allows: the rest of a stop is bounded and normally takes milliseconds).
KILL_MARGIN_SECONDS = 5.0
# How often the watch loop looks up from waiting for changes, to see whether the child is
# still there: watchfiles' wait cannot also wait for a process.
CHILD_POLL_MS = 300
IMPORT_CHECK_TIMEOUT = 60.0
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


# -- in the process that was started (gevent already imported): hand over ------------------


def supervise(settings: Settings, argv: Sequence[str]) -> int:
    """Become the reloading supervisor of ``python -m gserver *argv`` (never returns)."""
    child = [sys.executable, "-m", "gserver", *argv, "--no-reload"]
    if settings.port == 0:
        # Every child must serve on the port the first one got: pick it once, here.
        from gserver.testing.probes import free_port

        child += ["--port", str(free_port(settings.host))]
    plan = {
        "child": child,
        "watch": [str(p) for p in watched_directories(settings.handler)],
        "handler": settings.handler,
        "stop_timeout": settings.shutdown_grace + KILL_MARGIN_SECONDS,
    }
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "gserver.reload", json.dumps(plan)])


def watched_directories(handler: str | None) -> list[Path]:
    """The current directory, and the handler's package where it lies outside it (but not
    an installed one: a change there is an upgrade, not an edit)."""
    cwd = Path.cwd().resolve()
    out = [cwd]
    if handler:
        package = sys.modules.get(handler.partition(":")[0].split(".")[0])
        installed = [
            Path(p).resolve()
            for key in ("stdlib", "platstdlib", "purelib", "platlib")
            if (p := sysconfig.get_paths().get(key))
        ]
        for entry in getattr(package, "__path__", []):
            where = Path(entry).resolve()
            inside = [cwd, *installed]
            if not any(where == d or d in where.parents for d in inside):
                out.append(where)
    return out


# -- the supervisor -----------------------------------------------------------------------


class Supervisor:
    def __init__(
        self, child: list[str], watch: list[str], handler: str | None, stop_timeout: float
    ) -> None:
        self.child_argv = child
        self.watch = watch
        self.handler = handler
        self.stop_timeout = stop_timeout
        self.env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        self.stop_requested = threading.Event()  # watchfiles checks it between waits
        self.interrupts = 0
        self.child: subprocess.Popen[bytes] | None = None
        self._prctl = _prctl()

    def run(self) -> int:
        from watchfiles import PythonFilter, watch

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        shown = " and ".join(self.watch)
        say(f"watching {shown} for changes to .py files")
        self.child = self._start()
        restarted = False
        changes_seen = watch(
            *self.watch,
            watch_filter=PythonFilter(),
            stop_event=self.stop_requested,
            rust_timeout=CHILD_POLL_MS,
            yield_on_timeout=True,
            raise_interrupt=False,
        )
        for changes in changes_seen:
            if self.stop_requested.is_set():
                break
            if self.child is not None and (status := self.child.poll()) is not None:
                self.child = None
                if not restarted:  # it could not start (port in use...): as without --reload
                    return exit_status(status)
                say(f"the server exited with status {status}; starting it again on a change")
            if not changes:
                continue
            names = sorted({_shown_path(path) for _, path in changes})
            problem = self._check_import()
            if problem is not None:
                still = "still serving the previous code" if self.child else "not serving"
                say(f"{problem}; {still}")
                continue
            say(f"{', '.join(names)} changed; restarting")
            if self.child is not None:
                status = self._stop(self.child)
                self.child = None
                if self.stop_requested.is_set():  # told to stop while it was stopping
                    return exit_status(status)
            self.child = self._start()
            restarted = True
        return 0 if self.child is None else exit_status(self._stop(self.child))

    def _start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.child_argv, env=self.env, preexec_fn=self._follow_parent)

    def _follow_parent(self) -> None:
        """In the child before exec: die with the supervisor, even if it is killed."""
        if self._prctl is not None:
            self._prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGTERM), 0, 0, 0)

    def _stop(self, child: subprocess.Popen[bytes]) -> int:
        """SIGTERM (gserver's graceful stop) and wait; kill at the deadline."""
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
        try:
            return child.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            say(f"the server did not stop within {self.stop_timeout:g} s; killing it")
            child.kill()
            return child.wait()

    def _check_import(self) -> str | None:
        """Why the handler (or gserver itself) does not import now, or None when it does."""
        command = [sys.executable, "-m", "gserver.reload", "--check", self.handler or ""]
        try:
            result = subprocess.run(
                command,
                env=self.env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=IMPORT_CHECK_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            return f"importing {self.handler or 'gserver'} took over {IMPORT_CHECK_TIMEOUT:g} s"
        if result.returncode == 0:
            return None
        lines = (result.stdout or result.stderr).strip().splitlines()
        return lines[-1] if lines else f"the import check exited with {result.returncode}"

    def _on_signal(self, signum: int, _frame: Any) -> None:
        child = self.child
        if signum in (signal.SIGTERM, signal.SIGINT):
            if signum == signal.SIGINT:
                self.interrupts += 1
            self.stop_requested.set()
            forward = signal.SIGQUIT if self.interrupts > 1 else signal.SIGTERM
        else:  # SIGHUP (TLS reload) and SIGQUIT (exit at once) are the child's to act on
            forward = signal.Signals(signum)
        if child is not None and child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(forward)


def exit_status(returncode: int) -> int:
    """A child's return code as a shell would give it (128 + n when killed by signal n)."""
    return 128 - returncode if returncode < 0 else returncode


def say(text: str) -> None:
    print(f"{PREFIX} {text}", file=sys.stderr, flush=True)


def _shown_path(path: str) -> str:
    with contextlib.suppress(ValueError):
        return str(Path(path).relative_to(Path.cwd()))
    return path


def _prctl() -> Any:
    """Linux's prctl(2) from the C library, or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# -- the import check (its own process) ---------------------------------------------------


def check_import(handler: str) -> str | None:
    """Import ``handler`` (``module:function``; gserver's modes when empty) as the server
    would, monkey-patched first; a one-line reason when that fails."""
    from gevent import monkey

    monkey.patch_all()
    module_name, _, function = handler.partition(":")
    try:
        module = importlib.import_module(module_name or "gserver.cli")
    except Exception as exc:  # whatever the user's module raises is the answer
        return f"cannot import {module_name or 'gserver'!r}: {describe(exc)}"
    if function and not callable(getattr(module, function, None)):
        return f"{module_name!r} has no function {function!r}"
    return None


def describe(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        where = _shown_path(exc.filename) if exc.filename else "?"
        return f"{type(exc).__name__}: {exc.msg} ({where}, line {exc.lineno})"
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def main(argv: Sequence[str]) -> int:
    if len(argv) == 2 and argv[0] == "--check":
        problem = check_import(argv[1])
        if problem is not None:
            print(problem)
            return 1
        return 0
    if len(argv) != 1:
        print("usage: python -m gserver --reload ... (this module is its supervisor)")
        return 2
    plan = json.loads(argv[0])
    return Supervisor(**plan).run()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
