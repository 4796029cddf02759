"""Helpers for end-to-end tests: gserver runs as a subprocess, as a user would run it, on
127.0.0.1 with an ephemeral port that it reports in its JSON log."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gserver.testing.probes import free_port
from gserver.testing.process import WAIT, ServerProcess

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
REDIS_SERVER = shutil.which("redis-server")


# The README's example handler, as a file for tests that serve it.
SHOUT = textwrap.dedent(
    """
    from gserver import Connection

    def shout(conn: Connection) -> None:
        conn.send("Say something!\\n")
        for line in conn.lines():
            if line == "bye":
                conn.close()
            else:
                conn.registry.broadcast(line.upper())
    """
)


def gserver_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "gserver", *args]


def run_gserver(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m gserver`` to completion (for start-up errors)."""
    return subprocess.run(
        gserver_command(*args),
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=30,
    )


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GSERVER_") and k != "PORT"}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start gserver with these flags (``--port 0`` and JSON logs unless given)."""
    started: list[ServerProcess] = []

    def start(
        *args: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        wait: bool = True,
        open_files: tuple[int, int] | None = None,
    ) -> ServerProcess:
        argv = list(args)
        if not any(a.startswith("--port") for a in argv) and not (env and "PORT" in env):
            argv += ["--port", "0"]
        if not any(a.startswith("--host") for a in argv):
            argv += ["--host", "127.0.0.1"]
        if not any(a.startswith("--log-format") for a in argv):
            argv += ["--log-format", "json"]
        proc = subprocess.Popen(
            gserver_command(*argv),
            cwd=cwd or tmp_path,
            env=clean_env(**(env or {})),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, open_files))
            if open_files
            else None,
        )
        server = ServerProcess(proc)
        started.append(server)
        if wait:
            server.port = server.wait_for_log("listening")["port"]
        return server

    yield start
    for server in started:
        server.stop()


class Client:
    """A test client over a real socket, with patient reads that fail loudly."""

    def __init__(self, port: int, host: str = "127.0.0.1", family: int = socket.AF_INET) -> None:
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(WAIT)
        self.sock.connect((host, port))
        self.buffer = b""

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def send_line(self, text: str) -> None:
        self.send(text + "\n")

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buffer += data
        return bool(data)

    def read_until(self, marker: bytes | str) -> str:
        """Everything up to and including ``marker``."""
        token = marker.encode() if isinstance(marker, str) else marker
        while token not in self.buffer:
            if not self._fill():
                raise AssertionError(f"closed before {token!r}; got {self.buffer!r}")
        end = self.buffer.index(token) + len(token)
        out, self.buffer = self.buffer[:end], self.buffer[end:]
        return out.decode("utf-8", "replace")

    def read_line(self) -> str:
        return self.read_until(b"\n")

    def peek(self, count: int) -> bytes:
        """The first ``count`` bytes that arrived, left for the next read."""
        while len(self.buffer) < count:
            if not self._fill():
                break
        return self.buffer[:count]

    def read_exactly(self, count: int) -> bytes:
        while len(self.buffer) < count:
            if not self._fill():
                raise AssertionError(f"closed after {self.buffer!r}")
        out, self.buffer = self.buffer[:count], self.buffer[count:]
        return out

    def read_to_close(self) -> str:
        """Everything until the server closes the connection."""
        while self._fill():
            pass
        out, self.buffer = self.buffer, b""
        return out.decode("utf-8", "replace")

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def chat_join(port: int, name: str) -> Client:
    client = Client(port)
    client.read_until("Enter your username: ")
    client.send_line(name)
    assert client.read_line() == f"Welcome {name}!\n"
    return client


# -- a real redis-server, for the cluster tests (test_cluster.py, test_cluster_faults.py) --


class Redis:
    """A throwaway redis-server on a loopback port, which a test may kill and restart."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.dir = tmp_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                str(REDIS_SERVER),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def hang(self) -> None:
        """Stop answering without closing anything, as in a network partition."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Redis]:
    server = Redis(tmp_path)
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.resume()
        server.kill()
