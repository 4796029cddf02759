"""The handler API (--handler and Server in a script) and the Procfile."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO, SHOUT, WAIT, Client, ServerProcess, chat_join, clean_env


def test_own_handler_with_lines_send_close_and_broadcast(gserver_serve, tmp_path: Path) -> None:
    (tmp_path / "myhandlers.py").write_text(SHOUT)
    with gserver_serve("myhandlers:shout", cwd=tmp_path) as server:
        a, b = server.client(), server.client()
        assert a.read_line() == b.read_line() == "Say something!"
        a.send_line("hello")
        assert a.read_line() == b.read_line() == "[Broadcast] HELLO"
        a.send_line("bye")
        assert a.read_to_close() == ""


def test_handler_that_raises_only_drops_its_own_client(gserver_serve, tmp_path: Path) -> None:
    (tmp_path / "faulty.py").write_text(
        "def handle(conn):\n"
        "    for line in conn.lines():\n"
        "        if line == 'boom':\n"
        "            raise ValueError('boom')\n"
        "        conn.send(line + '\\n')\n"
    )
    with gserver_serve("faulty:handle", cwd=tmp_path) as server:
        other = server.client()
        with server.client() as victim:
            victim.send_line("boom")
            assert victim.read_to_close() == ""
        other.send_line("still here")
        assert other.read_line() == "still here"
        assert server.wait_for_log("handler_error")["level"] == "error"


def test_server_as_a_library_in_a_script(tmp_path: Path) -> None:
    script = tmp_path / "serve.py"
    script.write_text(
        SHOUT
        + textwrap.dedent(
            """
            from gserver import Server, Settings, configure_logging
            configure_logging("json")
            raise SystemExit(Server(shout, Settings(host="127.0.0.1", port=0)).serve_forever())
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], cwd=tmp_path, env=clean_env(), stderr=subprocess.PIPE
    )
    server = ServerProcess(proc)
    try:
        port = server.wait_for_log("listening")["port"]
        with Client(port) as client:
            assert client.read_line() == "Say something!\n"
            client.send_line("lib")
            assert client.read_line() == "[Broadcast] LIB\n"
            proc.send_signal(signal.SIGTERM)
            assert client.read_to_close() == "Server shutting down\n"
        assert server.wait() == 0
    finally:
        server.stop()


def test_procfile_runs_under_honcho_with_port_set(tmp_path: Path) -> None:
    honcho = shutil.which(
        "honcho", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    )
    if honcho is None:
        pytest.skip("honcho is not installed (pip install -e '.[dev]' brings it)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = clean_env(PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    proc = subprocess.Popen(
        [honcho, "-d", str(REPO), "-f", str(REPO / "Procfile"), "start", "-p", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            if b'"listening"' in raw or b"listening" in raw:
                assert f'"port": {port}'.encode() in raw, raw
                break
        else:
            pytest.fail("honcho exited before gserver listened")
        alice = chat_join(port, "alice")
        bob = chat_join(port, "bob")
        assert alice.read_line() == "bob joined the chat\n"
        bob.send_line("via honcho")
        assert alice.read_line() == "[bob]: via honcho\n"
        alice.close()
        bob.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(WAIT)
