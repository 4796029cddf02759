"""Interoperability with the seed's own Node programs (../shared/reference).

Skipped, with a note, where that folder or node is missing: users of gserver have neither.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from gserver.testing.probes import free_port
from tests.conftest import SHARED, WAIT, Client

REFERENCE = SHARED / "reference"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(
    NODE is None or not (REFERENCE / "client.js").is_file(),
    reason="the seed's Node programs (../shared/reference) or node are not available here",
)


def wait_listening(port: int) -> None:
    """Wait until the port is taken, without connecting (a probe would count as a client)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


@pytest.fixture
def node_server() -> Iterator[object]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(script: str) -> int:
        port = free_port()
        proc = subprocess.Popen(
            [str(NODE), str(REFERENCE / script)],
            env={"PORT": str(port), "HOST": "127.0.0.1", "QUIET": "1", "PATH": "/usr/bin:/bin"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        wait_listening(port)
        return port

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_the_seeds_client_works_with_basic_mode(start_server) -> None:
    server = start_server("--mode", "basic")
    proc = subprocess.Popen(
        [str(NODE), str(REFERENCE / "client.js")],
        env={"PORT": str(server.port), "HOST": "127.0.0.1", "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out = b""
    try:
        assert proc.stdout is not None
        while b"Echo: Hello server!" not in out:
            chunk = proc.stdout.read1(4096)  # type: ignore[attr-defined]
            assert chunk, f"client.js ended early: {out!r}"
            out += chunk
    finally:
        proc.kill()
        proc.wait()
    text = out.decode()
    assert text.startswith("Connected to server\n")
    assert "Received from server: Welcome to TCP Server!\n" in text
    assert "Echo: Hello server!" in text


def converse(port: int, script: list[tuple[str, str]]) -> list[str]:
    """Send each message and read until its expected end marker; the transcript."""
    transcript = []
    with Client(port) as client:
        for message, until in script:
            if message:
                client.send(message)
            transcript.append(client.read_until(until))
    return transcript


def normalise(lines: list[str]) -> list[str]:
    return [re.sub(r"\[\d{4}-[^\]]+Z\]", "[TIME]", line) for line in lines]


@pytest.mark.parametrize(
    ("mode", "script", "conversation"),
    [
        ("basic", "basic-server.js", [("", "\n"), ("hello\n", "\n"), ("no newline", "line")]),
        ("echo", "echo-server.js", [("", "\n"), ("hello  \n", "\n"), ("  spaced\n", "\n")]),
    ],
)
def test_single_client_sessions_match_node(
    start_server, node_server, mode: str, script: str, conversation: list[tuple[str, str]]
) -> None:
    ours = converse(start_server("--mode", mode).port, conversation)
    theirs = converse(node_server(script), conversation)  # type: ignore[operator]
    assert normalise(ours) == normalise(theirs)


def chat_transcripts(port: int) -> tuple[list[str], list[str]]:
    alice, bob = Client(port), Client(port)
    a, b = [], []
    a.append(alice.read_until(": "))
    alice.send("alice\n")
    a.append(alice.read_line())
    b.append(bob.read_until(": "))
    bob.send("bob\n")
    b.append(bob.read_line())
    a.append(alice.read_line())
    alice.send("hi bob\n")
    a.append(alice.read_line())
    b.append(bob.read_line())
    bob.send("/users\n")
    b.append(bob.read_line())
    bob.send("/help\n")
    b.append(bob.read_until("/quit - Exit chat\n"))
    bob.send("/nope\n")
    # gserver lists more commands after the seed's four; compare what follows them.
    b.append(bob.read_until("Type /help for help\n").splitlines(keepends=True)[-1])
    bob.send("/quit\n")
    b.append(bob.read_to_close())
    bob.close()  # Node announces the leave only once the client has closed its side too
    a.append(alice.read_line())
    alice.close()
    return a, b


def test_chat_session_matches_node(start_server, node_server) -> None:
    ours = chat_transcripts(start_server("--mode", "chat").port)
    theirs = chat_transcripts(node_server("chat-server.js"))  # type: ignore[operator]
    assert ours == theirs
