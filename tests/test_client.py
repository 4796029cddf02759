"""``python -m gserver.client``: one-shot, piped and at a terminal, and how fast it starts."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator

import pytest

from tests.conftest import REPO, WAIT, clean_env


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


def test_client_brackets_an_ipv6_address_in_its_messages() -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
            free_port = probe.getsockname()[1]
    except OSError:
        pytest.skip("no IPv6 loopback here")
    result = run_client("--host", "::1", "--port", str(free_port), "--send", "x")
    assert result.returncode == 1
    assert result.stderr.startswith(f"Error: cannot connect to [::1]:{free_port}: "), result.stderr


# -- at a terminal ---------------------------------------------------------------------------

# Escape sequences a terminal acts on (cursor moves, colours, erasing) and carriage returns:
# what is left is the text that was drawn, in the order it was drawn.
_CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>78]|\r")


class Terminal:
    """``python -m gserver.client`` on a pseudo-terminal, as a person would run it."""

    def __init__(self, port: int) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gserver.client", "--host", "127.0.0.1", "--port", str(port)],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            # No cursor-position request: no one here answers it, and nothing needs it.
            env=clean_env(TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1"),
            cwd=REPO,
            # Its own session, with this terminal as its controlling terminal, as in a shell.
            start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
        os.close(slave)
        self.master = master
        self.raw = b""
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the client has exited and closed the terminal
                return
            if not data:
                return
            with self._lock:
                self.raw += data

    @property
    def screen(self) -> str:
        """Everything drawn so far, control sequences taken out."""
        with self._lock:
            return _CONTROL.sub("", self.raw.decode("utf-8", "replace"))

    def wait_for(self, text: str, start: int = 0) -> int:
        """Where ``text`` is drawn (at or after ``start``), waiting for it."""
        deadline = time.monotonic() + WAIT
        while (found := self.screen.find(text, start)) < 0:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never drawn; screen: {self.screen[start:]!r}")
            time.sleep(0.02)
        return found

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def wait(self) -> int:
        code = self.proc.wait(WAIT)
        self._reader.join(WAIT)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


@pytest.fixture
def line_server() -> Iterator[socket.socket]:
    """A listening socket: the test plays the server, byte by byte."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(WAIT)
        yield listener


def read_line(peer: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = peer.recv(1)
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data


def nothing_arrives(peer: socket.socket, seconds: float = 0.3) -> bool:
    peer.settimeout(seconds)
    try:
        peer.recv(1)
    except TimeoutError:
        return True
    finally:
        peer.settimeout(WAIT)
    return False


def test_at_a_terminal_a_line_arriving_while_typing_does_not_break_the_typed_line(
    line_server: socket.socket,
) -> None:
    terminal = Terminal(line_server.getsockname()[1])
    try:
        peer, _ = line_server.accept()
        with peer:
            peer.settimeout(WAIT)
            # A prompt without a newline shows, and the answer is typed after it.
            peer.sendall(b"Enter your username: ")
            terminal.wait_for("Connected to server")
            terminal.wait_for("Enter your username:")  # (a trailing space is not drawn)
            terminal.type("carol\r")
            assert read_line(peer) == b"carol\n"
            peer.sendall(b"Welcome carol!\n")
            terminal.wait_for("Welcome carol!")
            # Half a line typed; a line arrives; the rest typed; Enter.
            terminal.type("hello wo")
            mark = terminal.wait_for("hello wo")
            assert nothing_arrives(peer)  # nothing is sent before Enter
            peer.sendall(b"[bob]: news from bob\n")
            news = terminal.wait_for("[bob]: news from bob", mark)
            # The line being typed is drawn again below the new line, whole.
            terminal.wait_for("hello wo", news)
            terminal.type("rld\r")
            assert read_line(peer) == b"hello world\n"
            # Ctrl-D ends the input (half-close); what the server still says shows.  (The
            # prompt is drawn only while the client reads keys: between two reads the
            # terminal would take Ctrl-D for itself.)
            peer.sendall(b"> ")
            terminal.wait_for(">", terminal.wait_for("hello world", news))
            terminal.type("\x04")
            assert peer.recv(1) == b""
            peer.sendall(b"bye carol\n")
        terminal.wait_for("bye carol")
        terminal.wait_for("Disconnected")
        assert terminal.wait() == 0
    finally:
        terminal.close()


def test_at_a_terminal_ctrl_c_exits_0(line_server: socket.socket) -> None:
    # (Today's behaviour, kept on the prompt_toolkit path: a guard, not a new feature.)
    terminal = Terminal(line_server.getsockname()[1])
    try:
        peer, _ = line_server.accept()
        with peer:
            peer.sendall(b"> ")
            terminal.wait_for(">")
            terminal.type("never sent\x03")
            assert terminal.wait() == 0
            peer.settimeout(WAIT)
            assert peer.recv(100) == b""  # closed, and the half-typed line not sent
    finally:
        terminal.close()
