"""``python -m gserver.client``: one-shot, piped and at a terminal, and how fast it starts."""

from __future__ import annotations

import socket
import subprocess
import sys

from tests.conftest import REPO, clean_env


def run_client(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gserver.client", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(),
        cwd=REPO,
    )


def test_client_send_prints_replies_and_exits_0(start_server) -> None:
    server = start_server("--mode", "basic")
    result = run_client(
        "--host", "127.0.0.1", "--port", str(server.port), "--send", "hi", "--wait", "0.5"
    )
    assert result.returncode == 0
    assert result.stdout == "Connected to server\nWelcome to TCP Server!\nEcho: hi\n"


def test_client_interactive_sends_typed_lines_until_the_server_closes(start_server) -> None:
    server = start_server("--mode", "chat")
    result = run_client("--host", "127.0.0.1", "--port", str(server.port), stdin="carol\n/quit\n")
    assert result.returncode == 0
    assert result.stdout == (
        "Connected to server\nEnter your username: Welcome carol!\nDisconnected\n"
    )


def test_client_refused_connection_is_one_line_exit_1() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    result = run_client("--host", "127.0.0.1", "--port", str(free_port), "--send", "x")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "cannot connect" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_client_imports_nothing_heavy() -> None:
    # gevent, structlog and redis come with the server; prompt_toolkit only for a terminal.
    heavy = ("gevent", "structlog", "redis", "prompt_toolkit")
    code = f"import sys, gserver.client; print([m for m in {heavy!r} if m in sys.modules])"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(),
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
