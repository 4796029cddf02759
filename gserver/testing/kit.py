"""Serve a handler as ``python -m gserver`` does and talk to it: the pytest kit's parts.

:func:`serve` starts ``python -m gserver --handler SPEC`` (or ``--mode NAME``) with the same
settings and code path as on the command line, on an ephemeral port of 127.0.0.1, with its
JSON log collected; :class:`Client` is a plain blocking socket whose reads wait for what
they want up to a timeout (never a guessed sleep) and fail with what did arrive.

Standard library only (no gevent): the test process stays an ordinary one, and the server
under test is a separate process, exactly as a user runs it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, overload

from gserver.settings import FIELDS
from gserver.testing.probes import free_port, wait_until
from gserver.testing.process import WAIT, ServerProcess

HOST = "127.0.0.1"
# How long a client read waits by default: far above what a local reply takes, short
# enough that a test waiting for a reply that never comes fails promptly.
READ_TIMEOUT = 5.0
RECV_SIZE = 65536
# Where a failure report cuts the bytes it shows.
SHOWN_BYTES = 2000


class GserverFailed(AssertionError):
    """The server under test did not start, or did not stop gracefully."""


class ReadFailed(AssertionError):
    """A client read was not satisfied: timed out, or the server closed or reset first.

    ``received`` holds the bytes that did arrive and were not read yet."""

    def __init__(self, problem: str, received: bytes) -> None:
        shown = received if len(received) <= SHOWN_BYTES else b"..." + received[-SHOWN_BYTES:]
        super().__init__(f"{problem}; received so far (unread): {shown!r}")
        self.received = received


class Client:
    """One connection to the server under test, in blocking style.

    Reads take from what has arrived, waiting for more up to ``timeout`` seconds: a read
    that cannot be satisfied raises :class:`ReadFailed` with the bytes that did arrive."""

    def __init__(self, host: str, port: int, timeout: float = READ_TIMEOUT) -> None:
        self.timeout = timeout
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._buffer = bytearray()
        self._eof = False

    # -- writing --------------------------------------------------------------------------

    def send(self, data: bytes | str) -> None:
        """Send bytes, or text as UTF-8, all of it."""
        self._sock.sendall(data.encode() if isinstance(data, str) else data)

    def send_line(self, text: str) -> None:
        """Send ``text`` and a ``\\n``."""
        self.send(text + "\n")

    # -- reading --------------------------------------------------------------------------

    def read_line(self, timeout: float | None = None) -> str:
        """The next line as text, without its ending (``\\n`` or ``\\r\\n``)."""
        end = self._wait_for(lambda: self._buffer.find(b"\n"), "a whole line", timeout)
        line = self._take(end + 1)[:-1]
        return line.removesuffix(b"\r").decode("utf-8", "replace")

    @overload
    def read_until(self, marker: str, timeout: float | None = None) -> str: ...

    @overload
    def read_until(self, marker: bytes, timeout: float | None = None) -> bytes: ...

    def read_until(self, marker: str | bytes, timeout: float | None = None) -> str | bytes:
        """Everything up to and including ``marker`` (a prompt, say): text for a text
        marker, bytes for a bytes marker."""
        token = marker.encode() if isinstance(marker, str) else marker
        if not token:
            raise ValueError("read_until() needs a non-empty marker")
        end = self._wait_for(lambda: self._buffer.find(token), repr(marker), timeout)
        data = self._take(end + len(token))
        return data.decode("utf-8", "replace") if isinstance(marker, str) else data

    def read_exactly(self, count: int, timeout: float | None = None) -> bytes:
        """Exactly ``count`` bytes."""
        self._wait_for(lambda: 0 if len(self._buffer) >= count else -1, f"{count} bytes", timeout)
        return self._take(count)

    def read_to_close(self, timeout: float | None = None) -> str:
        """Everything until the server closes the connection, as text."""
        self._wait_for(lambda: 0 if self._eof else -1, "the server to close", timeout)
        return self._take(len(self._buffer)).decode("utf-8", "replace")

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _take(self, count: int) -> bytes:
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    def _wait_for(self, find: Callable[[], int], wanted: str, timeout: float | None) -> int:
        """Receive until ``find()`` (an index into the buffer) is not -1; return it."""
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while (found := find()) < 0:
            if self._eof:
                raise ReadFailed(f"the server closed the connection before {wanted}", self._held)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ReadFailed(f"waited {limit} s for {wanted}", self._held)
            self._sock.settimeout(remaining)
            try:
                data = self._sock.recv(RECV_SIZE)
            except TimeoutError:
                raise ReadFailed(f"waited {limit} s for {wanted}", self._held) from None
            except ConnectionResetError:
                problem = f"connection reset by the server before {wanted}"
                raise ReadFailed(problem, self._held) from None
            if data:
                self._buffer += data
            else:
                self._eof = True
        return found

    @property
    def _held(self) -> bytes:
        return bytes(self._buffer)


class RunningGserver:
    """A gserver process under test: its address, its log, clients, a graceful stop."""

    def __init__(self, process: ServerProcess, host: str, port: int, label: str) -> None:
        self.process = process
        self.host = host
        self.port = port
        self.label = label
        self.exit_status: int | None = None
        self._clients: list[Client] = []

    @property
    def pid(self) -> int:
        return self.process.proc.pid

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def logs(self) -> list[dict[str, Any]]:
        """The JSON log entries so far (``event``, ``level`` and their fields)."""
        return list(self.process.logs)

    def log_text(self) -> str:
        """Everything the server printed so far (JSON log lines and anything else)."""
        return "\n".join(self.process.raw_stderr)

    def wait_for_log(self, event: str, timeout: float = WAIT, **fields: Any) -> dict[str, Any]:
        """The first log entry of ``event`` (with these fields), waiting for it."""
        return self.process.wait_for_log(event, timeout, **fields)

    def wait_for_events(
        self, event: str, count: int, timeout: float = WAIT
    ) -> list[dict[str, Any]]:
        """At least ``count`` log entries of ``event``, waiting for them."""
        return self.process.wait_for_events(event, count, timeout)

    def events(self, event: str) -> list[dict[str, Any]]:
        """The log entries of ``event`` so far."""
        return self.process.events(event)

    def client(self, timeout: float = READ_TIMEOUT) -> Client:
        """A new connection to the server; closed at the latest when the server stops."""
        client = Client(self.host, self.port, timeout)
        self._clients.append(client)
        return client

    def signal(self, signum: int) -> None:
        self.process.signal(signum)

    def stop(self, timeout: float = WAIT) -> int:
        """SIGTERM (gserver's graceful stop) and wait; the exit status.  Idempotent."""
        for client in self._clients:
            client.close()
        proc = self.process.proc
        if self.exit_status is not None:
            return self.exit_status
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                self.exit_status = proc.returncode
                raise GserverFailed(
                    f"gserver ({self.label}) did not stop within {timeout} s of SIGTERM; killed"
                ) from None
        self.exit_status = self.process.wait(timeout)
        return self.exit_status

    def __enter__(self) -> RunningGserver:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        stopped_by_us = self.process.proc.poll() is None
        status = self.stop()
        # A failed graceful stop is worth a failure, but never hides the test's own.
        if kind is None and stopped_by_us and status != 0:
            raise GserverFailed(f"gserver ({self.label}) exited with status {status} on SIGTERM")


def setting_flags(settings: Mapping[str, Any]) -> list[str]:
    """Keyword settings as gserver's flags: ``idle_timeout=5`` -> ``--idle-timeout 5``."""
    flags: list[str] = []
    for name, value in settings.items():
        if name not in FIELDS:
            raise TypeError(f"unknown gserver setting {name!r}")
        flag = "--" + name.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        else:
            flags += [flag, str(value)]
    return flags


def project_paths() -> list[str]:
    """This process's import path less the interpreter's own and installed packages: where
    the test run found the user's modules (rootdir, test directories, ``pythonpath``)."""
    installed = {
        os.path.realpath(p)
        for key in ("stdlib", "platstdlib", "purelib", "platlib")
        if (p := sysconfig.get_paths().get(key))
    }
    out = []
    for entry in sys.path:
        real = os.path.realpath(entry or os.getcwd())
        if not os.path.isdir(real) or real.startswith(tuple(installed)):
            continue
        if real.startswith((os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix))):
            continue
        out.append(real)
    return out


def serve(
    handler: str | None = None,
    *,
    mode: str | None = None,
    cwd: str | Path | None = None,
    pythonpath: Iterable[str | Path] = (),
    env: Mapping[str, str] | None = None,
    start_timeout: float = WAIT,
    **settings: Any,
) -> RunningGserver:
    """Start ``python -m gserver --handler HANDLER`` (or ``--mode MODE``) and wait until it
    listens; keyword arguments are settings (``idle_timeout=5`` -> ``--idle-timeout 5``).

    It listens on 127.0.0.1 on a port it picks (unless ``host``/``port`` are given) and logs
    JSON lines; ``GSERVER_*`` and ``PORT`` of this environment are not passed on, so the
    test alone decides its settings (a ``conf/gserver.toml`` in ``cwd`` is still read, as
    gserver reads it).  ``pythonpath`` goes first on the server's import path."""
    if handler is not None and mode is not None:
        raise TypeError("serve() takes a handler or a mode, not both")
    if "log_format" in settings and settings["log_format"] != "json":
        raise TypeError("the kit reads gserver's JSON log: log_format must stay 'json'")
    settings = {"host": HOST, **settings, "log_format": "json"}
    quiet = settings.get("log_level") in ("warning", "error")  # no `listening` line then
    if quiet and not settings.get("port"):
        settings["port"] = free_port(settings["host"])
    settings.setdefault("port", 0)
    argv = [sys.executable, "-m", "gserver"]
    if handler is not None:
        argv += ["--handler", handler]
    if mode is not None:
        argv += ["--mode", mode]
    argv += setting_flags(settings)
    child_env = {
        k: v for k, v in os.environ.items() if not k.startswith("GSERVER_") and k != "PORT"
    }
    child_env.update(env or {})
    child_env["PYTHONUNBUFFERED"] = "1"  # so a handler's print() shows as it happens
    paths = [str(p) for p in pythonpath]
    if child_env.get("PYTHONPATH"):
        paths.append(child_env["PYTHONPATH"])
    if paths:
        child_env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=child_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    process = ServerProcess(proc, proc.stdout)
    label = handler or f"--mode {mode or settings.get('mode', 'default')}"
    host = str(settings["host"])
    try:
        if quiet:
            port = int(settings["port"])
            wait_until(lambda: _accepting(process, host, port), start_timeout, "gserver listening")
        else:
            port = int(process.wait_for_log("listening", start_timeout)["port"])
    except AssertionError:
        if proc.poll() is None:
            proc.kill()
        status = process.wait(WAIT)
        raise GserverFailed(
            f"gserver ({label}) exited with status {status} before listening; it printed:\n"
            + "\n".join(process.raw_stderr)
        ) from None
    return RunningGserver(process, host, port, label)


def _accepting(process: ServerProcess, host: str, port: int) -> bool:
    if process.proc.poll() is not None:
        raise AssertionError("exited")
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True
