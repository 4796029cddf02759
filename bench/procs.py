"""Building the C programs, and starting, probing, measuring and stopping server processes.

Every server listens on 127.0.0.1 only, on a free port picked here, and every wait is bounded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gserver.testing.probes import cpu_seconds, free_port

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
BUILD = BENCH / "build"
REFERENCE = REPO.parent / "shared" / "reference"
HOST = "127.0.0.1"

STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


class BenchError(RuntimeError):
    """A run that could not be measured (server died, loadgen failed, a bound ran out)."""


def raise_nofile_limit() -> int:
    """Raise RLIMIT_NOFILE to the hard limit (inherited by servers and loadgen)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def build_c(cc: str = "cc") -> dict[str, Path]:
    """Compile loadgen.c and echo_server.c into bench/build/ with ``cc -O2``."""
    compiler = shutil.which(cc)
    if compiler is None:
        raise BenchError(f"no C compiler {cc!r} on PATH")
    BUILD.mkdir(exist_ok=True)
    out: dict[str, Path] = {}
    for name in ("loadgen", "echo_server"):
        target = BUILD / name
        cmd = [compiler, "-O2", "-Wall", "-o", str(target), str(BENCH / f"{name}.c")]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise BenchError(f"building {name} failed:\n{result.stderr}")
        out[name] = target
    return out


def node_available() -> str | None:
    """Why the Node side cannot run, or None when it can."""
    if shutil.which("node") is None:
        return "`node` is not on PATH"
    if not REFERENCE.is_dir():
        return f"{REFERENCE} does not exist"
    missing = [
        f
        for f in ("basic-server.js", "echo-server.js", "chat-server.js")
        if not (REFERENCE / f).is_file()
    ]
    if missing:
        return f"{REFERENCE} lacks {', '.join(missing)}"
    return None


def redis_available() -> str | None:
    """Why the Redis backplane cannot run, or None when it can."""
    if shutil.which("redis-server") is None:
        return "`redis-server` is not on PATH"
    if importlib.util.find_spec("redis") is None:
        return f"the `redis` Python package is not installed for {sys.executable}"
    return None


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server; ``{port}`` in argv and env values is replaced."""

    key: str
    label: str
    argv: tuple[str, ...]
    greeting_end: bytes = b"\n"
    env: tuple[tuple[str, str], ...] = ()
    cwd: Path | None = None
    is_node: bool = False
    # > 0: a fresh redis-server is started for each run ({redis_port} in argv), and the
    # server counts as ready once this many processes subscribe to ``redis_channel``.
    redis_subscribers: int = 0
    redis_channel: str = "gserver:events"
    # Sent on connecting, for servers that greet nobody (Redis): ready once answered.
    probe: bytes = b""
    # A WebSocket server: loadgen's clients speak WebSocket on this path (--ws).
    ws_path: str | None = None
    # Why this server cannot run here (a program or package missing), or None; then only
    # this server is left out of its scenario, with a note.
    requires: Callable[[], str | None] | None = None

    def command(self, port: int, redis_port: int | None = None) -> list[str]:
        argv = [a.replace("{port}", str(port)) for a in self.argv]
        if redis_port is not None:
            argv = [a.replace("{redis_port}", str(redis_port)) for a in argv]
        return argv

    def display(self) -> str:
        env = " ".join(f"{k}={v}" for k, v in self.env)
        cmd = " ".join(self.argv).replace(sys.executable, "python").replace(str(REPO) + "/", "")
        where = f"(cd {self.cwd}) " if self.cwd else ""
        out = f"{where}{env + ' ' if env else ''}{cmd}"
        if self.redis_subscribers:
            redis = " ".join(a or "''" for a in redis_argv("{redis_port}"))
            out += f"` with a fresh `{redis}"
        return out


def redis_argv(port: int | str) -> list[str]:
    """A throwaway redis-server on loopback: no snapshots, no append-only file."""
    return ["redis-server", "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]


GSERVER_FLAGS = (
    "--host",
    HOST,
    "--port",
    "{port}",
    "--log-level",
    "warning",
    "--log-format",
    "json",
    "--flood-rate",
    "0",
)


def export_gserver(ref: str, dest: Path) -> str:
    """Extract gserver/ as of git ``ref`` into ``dest``; return the full commit id."""
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{ref}^{{commit}}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if commit.returncode != 0:
        raise BenchError(f"unknown git ref {ref!r}: {commit.stderr.strip()}")
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit.stdout.strip(), "gserver"],
        cwd=REPO,
        capture_output=True,
        timeout=60,
    )
    if archive.returncode != 0:
        raise BenchError(f"git archive failed: {archive.stderr.decode(errors='replace')}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True, timeout=60)
    return commit.stdout.strip()


def gserver(mode: str, *extra: str, cwd: Path = REPO) -> ServerSpec:
    """``python -m gserver`` run in ``cwd``: the gserver package found there is the one run."""
    suffix = "".join(f" {x}" for x in extra)
    return ServerSpec(
        key=f"gserver-{mode}",
        label=f"gserver {mode}{suffix}",
        argv=(sys.executable, "-m", "gserver", "--mode", mode, *GSERVER_FLAGS, *extra),
        greeting_end=b"username: " if mode == "chat" else b"\n",
        cwd=cwd,
    )


def gserver_workers(mode: str, workers: int, cwd: Path = REPO) -> ServerSpec:
    """gserver with ``--workers N`` and a Redis backplane on a fresh redis-server per run."""
    spec = gserver(
        mode, "--workers", str(workers), "--backplane", f"redis://{HOST}:{{redis_port}}/0", cwd=cwd
    )
    return dataclasses.replace(
        spec,
        key=f"gserver-{mode}-workers{workers}",
        label=f"gserver {mode} --workers {workers} + Redis",
        redis_subscribers=workers,
    )


def gserver_defaults(mode: str, cwd: Path = REPO) -> ServerSpec:
    """``python -m gserver --mode MODE`` with every other setting at its default (log
    level info, JSON logs to the log file), but host and port; run from bench/build, where
    no conf/gserver.toml lies, with the gserver package found there first on PYTHONPATH."""
    return ServerSpec(
        key=f"gserver-{mode}",
        label=f"gserver {mode} (default settings)",
        argv=(sys.executable, "-m", "gserver", "--mode", mode, "--host", HOST, "--port", "{port}"),
        greeting_end=b"username: " if mode == "chat" else b"\n",
        env=(("PYTHONPATH", str(cwd)),),
        cwd=BUILD,
    )


def node(script: str, quiet: bool = True) -> ServerSpec:
    """One of the seed's Node servers; ``quiet=False`` keeps its console.log lines (each
    connection logged, to the log file)."""
    mode = script.split("-")[0]
    return ServerSpec(
        key=f"node-{mode}",
        label=f"node {script}" + ("" if quiet else " (logging)"),
        argv=("node", script),
        greeting_end=b"username: " if mode == "chat" else b"\n",
        env=(("PORT", "{port}"), ("HOST", HOST), *((("QUIET", "1"),) if quiet else ())),
        cwd=REFERENCE,
        is_node=True,
    )


def gserver_kv(cwd: Path = REPO) -> ServerSpec:
    """examples/kv.py (the Redis-protocol example) served by ``python -m gserver``; the
    example is taken from this repository even when gserver/ is an older export."""
    return ServerSpec(
        key="gserver-kv",
        label="gserver examples.kv:handle",
        argv=(sys.executable, "-m", "gserver", "--handler", "examples.kv:handle", *GSERVER_FLAGS),
        greeting_end=b"+PONG\r\n",
        env=(("PYTHONPATH", str(REPO)),),
        cwd=cwd,
        probe=b"PING\r\n",
    )


REDIS_SERVER = ServerSpec(
    key="redis-server",
    label="redis-server",
    argv=(*redis_argv("{port}"), "--loglevel", "warning"),
    greeting_end=b"+PONG\r\n",
    probe=b"PING\r\n",
)


def redis_benchmark_available() -> str | None:
    """Why the kv scenario cannot run, or None when it can."""
    missing = [p for p in ("redis-benchmark", "redis-server") if shutil.which(p) is None]
    if missing:
        return f"{' and '.join(f'`{m}`' for m in missing)} not on PATH (Debian: redis-tools)"
    return None


THREADED = ServerSpec(
    key="threaded",
    label="threaded_server.py (thread per conn)",
    argv=(sys.executable, str(BENCH / "threaded_server.py"), "--host", HOST, "--port", "{port}"),
)
BARE_GEVENT = ServerSpec(
    key="bare-gevent",
    label="bare_gevent.py (StreamServer)",
    argv=(sys.executable, str(BENCH / "bare_gevent.py"), "--host", HOST, "--port", "{port}"),
)
C_ECHO = ServerSpec(
    key="c-echo",
    label="echo_server.c (epoll)",
    argv=(str(BUILD / "echo_server"), "--host", HOST, "--port", "{port}"),
)


@dataclass
class Running:
    spec: ServerSpec
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    startup_secs: float = 0.0
    exit_code: int | None = None
    killed: bool = False
    notes: list[str] = field(default_factory=list)
    redis: RedisRunning | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass
class RedisRunning:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    exit_code: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def client(self) -> Any:
        import redis

        return redis.Redis(host=HOST, port=self.port, socket_timeout=5, decode_responses=True)


@contextlib.contextmanager
def redis_server(log_dir: Path) -> Iterator[RedisRunning]:
    """A fresh redis-server on a free loopback port, answering PING; stopped on exit."""
    import redis

    port = free_port()
    log_path = log_dir / f"redis-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            redis_argv(port), stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=log_dir
        )
    rs = RedisRunning(proc=proc, port=port, log_path=log_path)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise BenchError(
                    f"redis-server exited with {proc.returncode} before serving:\n" + tail(log_path)
                )
            try:
                if rs.client().ping():
                    break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"redis-server not answering after {STARTUP_TIMEOUT}s"
                    ) from None
                time.sleep(0.01)
        yield rs
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        rs.exit_code = proc.returncode


def _wait_subscribers(run: Running) -> None:
    """Until every worker has subscribed to the backplane channel (or a bound runs out)."""
    assert run.redis is not None
    client = run.redis.client()
    deadline = time.monotonic() + STARTUP_TIMEOUT
    want, channel = run.spec.redis_subscribers, run.spec.redis_channel
    while True:
        have = int(dict(client.pubsub_numsub(channel)).get(channel, 0))
        if have >= want:
            return
        if run.proc.poll() is not None:
            raise BenchError(
                f"{run.spec.label} exited with {run.proc.returncode}:\n" + tail(run.log_path)
            )
        if time.monotonic() > deadline:
            raise BenchError(
                f"{run.spec.label}: {have} of {want} workers subscribed to {channel} "
                f"after {STARTUP_TIMEOUT}s"
            )
        time.sleep(0.01)


def greet(port: int, end: bytes, timeout: float = 10.0, probe: bytes = b"") -> float:
    """Connect, send ``probe`` (if any), read up to ``end``; return the seconds it took."""
    t0 = time.perf_counter()
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        if probe:
            s.sendall(probe)
        data = b""
        while end not in data:
            chunk = s.recv(4096)
            if not chunk:
                raise BenchError(f"port {port}: closed before the greeting (got {data!r})")
            data += chunk
    return time.perf_counter() - t0


def _wait_ready(run: Running, t0: float) -> float:
    """Poll until a client gets its greeting; the seconds since ``t0`` (process start)."""
    deadline = t0 + STARTUP_TIMEOUT
    while True:
        if run.proc.poll() is not None:
            raise BenchError(
                f"{run.spec.label} exited with {run.proc.returncode} before serving:\n"
                + tail(run.log_path)
            )
        try:
            greet(run.port, run.spec.greeting_end, timeout=5.0, probe=run.spec.probe)
            return time.perf_counter() - t0
        except (ConnectionRefusedError, ConnectionResetError):
            if time.perf_counter() > deadline:
                raise BenchError(f"{run.spec.label} not serving after {STARTUP_TIMEOUT}s") from None
            time.sleep(0.002)


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextlib.contextmanager
def serve(spec: ServerSpec, log_dir: Path) -> Iterator[Running]:
    """Start ``spec`` on a free port, wait for its first greeting, stop it on exit."""
    with contextlib.ExitStack() as stack:
        rs = stack.enter_context(redis_server(log_dir)) if spec.redis_subscribers else None
        port = free_port()
        log_path = log_dir / f"{spec.key}-{port}.log"
        env = dict(os.environ)
        # Python servers run with their bytecode cached, as after pip install: in a
        # directory of this run's own, whatever PYTHONDONTWRITEBYTECODE says here.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env.setdefault("PYTHONPYCACHEPREFIX", str(log_dir.parent / "pycache"))
        env.update({k: v.replace("{port}", str(port)) for k, v in spec.env})
        with log_path.open("wb") as log:
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                spec.command(port, rs.port if rs else None),
                cwd=spec.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        run = Running(spec=spec, proc=proc, port=port, log_path=log_path, redis=rs)
        try:
            run.startup_secs = _wait_ready(run, t0)
            if rs is not None:
                _wait_subscribers(run)
            yield run
        finally:
            stop(run)  # before its redis-server stops (ExitStack), so it leaves cleanly


def stop(run: Running) -> None:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT seconds."""
    if run.proc.poll() is None:
        run.proc.send_signal(signal.SIGTERM)
        try:
            run.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            run.proc.kill()
            run.proc.wait(5)
            run.killed = True
    run.exit_code = run.proc.returncode


def children(pid: int) -> list[int]:
    """The live processes whose parent is ``pid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
            out.append(int(entry.name))
    return sorted(out)


def tree_cpu_secs(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants (a master and its workers)."""
    total = cpu_seconds(pid)
    for child in children(pid):
        with contextlib.suppress(OSError):
            total += tree_cpu_secs(child)
    return total


def established_inodes(port: int) -> set[str]:
    """Inodes of the IPv4 TCP connections established on local port ``port`` (server side)."""
    out = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[3] == "01" and int(f[1].rsplit(":", 1)[1], 16) == port:
            out.add(f[9])
    return out
