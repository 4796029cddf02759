"""Browsers' transport, end to end: the web port's HTTP and WebSocket over real sockets.

gserver runs as a subprocess (conftest's ``start_server``); the WebSocket client is the
independent ``websockets`` package (its sync client), and where a test needs a client that
misbehaves (never answers a ping, vanishes, never reads, sends half a request), a raw
socket that does the handshake by hand.  The web port is either a listener of its own
(``--web-port P``, P != port) or the port itself (``--port 0 --web-port 0``: equal numbers,
one listener that tells clients apart by their first bytes).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from gserver.protocol.websocket import CONTENT_SECURITY_POLICY
from gserver.testing.probes import free_port, wait_until
from tests.conftest import WAIT, Client, ServerProcess, chat_join

ServerStarter = Callable[..., ServerProcess]
TIMESTAMP = r"\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\]"


# -- helpers -------------------------------------------------------------------------------


def web_server(
    start_server: ServerStarter, *args: str, shared: bool = False
) -> tuple[ServerProcess, int]:
    """gserver with a web port: its own listener, or the port itself; (server, web port)."""
    if shared:
        server = start_server("--port", "0", "--web-port", "0", *args)
        return server, server.port
    server = start_server("--web-port", str(free_port()), *args)
    return server, int(server.wait_for_log("web_listening")["port"])


SHARED = pytest.mark.parametrize("shared", [False, True], ids=["web-port", "same-port"])


def ws_connect(
    port: int, path: str = "/ws", context: ssl.SSLContext | None = None, **options: Any
) -> ClientConnection:
    scheme = "wss" if context is not None else "ws"
    ws = connect(
        f"{scheme}://127.0.0.1:{port}{path}",
        ssl=context,
        proxy=None,
        open_timeout=WAIT,
        close_timeout=WAIT,
        ping_interval=None,  # the client's own pings would only blur the server's
        **options,
    )
    # Entered as `with` would (websockets 17 warns about a connection used bare); callers
    # use it in a `with` or close it.
    return ws.__enter__()


def recv(ws: ClientConnection) -> str | bytes:
    return ws.recv(timeout=WAIT)


def until_closed(ws: ClientConnection) -> tuple[list[str | bytes], int | None]:
    """The messages still to come, and the close code the server sent (None: no frame)."""
    messages: list[str | bytes] = []
    try:
        while True:
            messages.append(ws.recv(timeout=WAIT))
    except ConnectionClosed as closed:
        return messages, closed.rcvd.code if closed.rcvd is not None else None


def ws_join(port: int, name: str, **options: Any) -> ClientConnection:
    ws = ws_connect(port, **options)
    assert recv(ws) == "Enter your username: "
    ws.send(name)
    assert recv(ws) == f"Welcome {name}!"
    return ws


def http_request(
    port: int,
    path: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    conn: http.client.HTTPConnection
    if context is not None:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=WAIT, context=context)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        conn.request(method, path, headers=headers or {})
        reply = conn.getresponse()
        return reply.status, reply.msg, reply.read()
    finally:
        conn.close()


def urlopen(url: str, context: ssl.SSLContext | None = None) -> tuple[int, str]:
    """urllib, as a script or a health checker would use it (and never through a proxy)."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(url, timeout=WAIT) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def reset(sock: socket.socket) -> None:
    """Close with a TCP reset, as a browser tab that is killed or loses its network."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class RawWebSocket:
    """A WebSocket client by hand over a plain socket, for clients that misbehave: one that
    never answers a ping, vanishes without a close frame, or never reads."""

    def __init__(
        self,
        port: int,
        headers: dict[str, str] | None = None,
        rcvbuf: int | None = None,
        first_message: str | None = None,
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connecting, so that the window stays small
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(WAIT)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        request = (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{extra}\r\n".encode()
        )
        if first_message is not None:  # in the same segment as the request
            request += self.frame(0x1, first_message.encode())
        self.sock.sendall(request)
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        self.status_line = head.split(b"\r\n", 1)[0].decode()
        assert self.status_line.startswith("HTTP/1.1 101 "), head

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError(f"closed; had {self.buffer!r}")
        self.buffer += data

    def _take(self, count: int) -> bytes:
        while len(self.buffer) < count:
            self._fill()
        out, self.buffer = self.buffer[:count], self.buffer[count:]
        return out

    def read_frame(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next frame from the server (unmasked, RFC 6455)."""
        first, second = self._take(2)
        assert not second & 0x80, "a server frame must not be masked"
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._take(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._take(8))
        return first & 0x0F, self._take(length)

    def read_message(self) -> str:
        """The next text message, skipping pings (which this client never answers)."""
        while True:
            opcode, payload = self.read_frame()
            if opcode == 0x1:
                return payload.decode()
            assert opcode == 0x9, (opcode, payload)

    @staticmethod
    def frame(opcode: int, payload: bytes) -> bytes:
        """A client frame: final, masked."""
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        elif length < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        return header + mask + masked

    def send_frame(self, opcode: int, payload: bytes) -> None:
        self.sock.sendall(self.frame(opcode, payload))

    def send_text(self, text: str) -> None:
        self.send_frame(0x1, text.encode())

    def at_eof(self) -> bool:
        try:
            return not self.buffer and not self.sock.recv(65536)
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def raw_join(port: int, name: str, **options: Any) -> RawWebSocket:
    raw = RawWebSocket(port, **options)
    assert raw.read_message() == "Enter your username: "
    raw.send_text(name)
    assert raw.read_message() == f"Welcome {name}!"
    return raw


class PingCounter(logging.Handler):
    """Counts the pings a websockets client received (it logs each frame at debug level),
    so that a test waits for pings instead of sleeping for some intervals."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.pings = 0
        self.changed = threading.Condition()
        self.logger = logging.getLogger(f"test-web-pings-{id(self)}")
        self.logger.setLevel(logging.DEBUG)
        self.logger.propagate = False
        self.logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("< PING"):
            with self.changed:
                self.pings += 1
                self.changed.notify_all()

    def wait_for(self, count: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.pings >= count, WAIT), self.pings


def greeted_within(port: int, seconds: float) -> Client:
    client = Client(port)
    client.sock.settimeout(seconds)
    return client


# -- every mode over WebSocket ---------------------------------------------------------------


def test_basic_mode_echoes_each_message_as_one_chunk(start_server: ServerStarter) -> None:
    _, web = web_server(start_server, "--mode", "basic")
    with ws_connect(web) as ws:
        assert recv(ws) == "Welcome to TCP Server!"
        ws.send("hello")
        assert recv(ws) == "Echo: hello"
        ws.send("two words\n")  # a line ending of its own is a line ending
        assert recv(ws) == "Echo: two words"
        ws.send(b"\x00\x01binary")  # a binary message's bytes, as they are
        assert recv(ws) == "Echo: \x00\x01binary"
        ws.send(b"\xff\xfe")  # not UTF-8: the whole output line is one binary message
        assert recv(ws) == b"Echo: \xff\xfe"
        ws.send("caf\u00e9 \U0001f44b")
        assert recv(ws) == "Echo: caf\u00e9 \U0001f44b"


def test_echo_mode_counts_every_transport_and_echoes_each_line(
    start_server: ServerStarter,
) -> None:
    server, web = web_server(start_server, "--mode", "echo")
    with Client(server.port) as tcp:
        assert tcp.read_line() == "Welcome! Currently 1 clients online\n"
        with ws_connect(web) as ws:
            assert recv(ws) == "Welcome! Currently 2 clients online"
            with ws_connect(web) as third:
                assert recv(third) == "Welcome! Currently 3 clients online"
            ws.send("one\ntwo")  # two lines, the last without a line ending
            assert re.fullmatch(f"{TIMESTAMP} Echo: one", str(recv(ws)))
            assert re.fullmatch(f"{TIMESTAMP} Echo: two", str(recv(ws)))
            ws.send("three\r\nfour\r\n")  # \r\n too, and no empty line after the last
            assert re.fullmatch(f"{TIMESTAMP} Echo: three", str(recv(ws)))
            assert re.fullmatch(f"{TIMESTAMP} Echo: four", str(recv(ws)))
            ws.send("five")
            assert re.fullmatch(f"{TIMESTAMP} Echo: five", str(recv(ws)))
        connect_log = server.wait_for_log("connect", transport="websocket")
        assert connect_log["client"].startswith("127.0.0.1:")
        assert server.wait_for_log("connect", transport="tcp")["client"].startswith("127.0.0.1:")
        disconnect = server.wait_for_log("disconnect", transport="websocket")
        assert disconnect["reason"] == "closed by client"
        assert disconnect["bytes_in"] > 0 and disconnect["bytes_out"] > 0


def test_inspect_mode_reports_text_and_binary_messages(start_server: ServerStarter) -> None:
    _, web = web_server(start_server, "--mode", "inspect")
    with ws_connect(web) as ws:
        ws.send("hi")
        assert [recv(ws) for _ in range(4)] == [
            "Length: 2",
            "Hex: 6869",
            'UTF-8: "hi"',
            "Base64: aGk=",
        ]
        ws.send("a\nb")  # one chunk in a byte mode: its line ending is one of its bytes
        assert [recv(ws) for _ in range(4)] == [
            "Length: 3",
            "Hex: 610a62",
            'UTF-8: "a\\nb"',
            "Base64: YQpi",
        ]
        ws.send(b"\x00\xff")
        assert [recv(ws) for _ in range(4)] == [
            "Length: 2",
            "Hex: 00ff",
            'UTF-8: "\\x00\ufffd"',
            "Base64: AP8=",
        ]


def test_chat_prompts_go_as_they_are(start_server: ServerStarter) -> None:
    _, web = web_server(start_server, "--mode", "chat")
    with ws_join(web, "alice") as alice, ws_connect(web) as other:
        assert recv(other) == "Enter your username: "
        other.send("ALICE")
        assert recv(other) == "Username ALICE is taken, choose another: "
        other.send("two words")
        assert recv(other) == "Invalid username (1-32 printable characters, no spaces), try again: "
        other.send("bob\nhello there")  # the name and a first line in one message
        assert recv(other) == "Welcome bob!"
        assert recv(alice) == "bob joined the chat"
        assert recv(alice) == "[bob]: hello there"
        assert recv(other) == "[bob]: hello there"


def test_a_handlers_bytes_are_cut_into_messages(
    start_server: ServerStarter, tmp_path: Path
) -> None:
    (tmp_path / "byteshandler.py").write_text(
        "def handle(conn):\n"
        "    conn.send(b'first\\r\\n\\xff\\xfe not utf-8\\nlast\\n')\n"
        "    conn.send('prompt> ')\n"
        "    conn.send(b'\\xc3')\n"
        "    for line in conn.lines():\n"
        "        conn.send(f'got {line!r}\\n')\n"
    )
    _, web = web_server(start_server, "--handler", "byteshandler:handle")
    with ws_connect(web) as ws:
        assert recv(ws) == "first"
        assert recv(ws) == b"\xff\xfe not utf-8"
        assert recv(ws) == "last"
        assert recv(ws) == "prompt> "
        assert recv(ws) == b"\xc3"  # half a character: not text, so binary
        ws.send("x\ny")
        assert recv(ws) == "got 'x'"
        assert recv(ws) == "got 'y'"


def test_binary_messages_are_never_telnet(start_server: ServerStarter) -> None:
    # On TCP, byte 255 starts a telnet command (Ctrl-C quits); a WebSocket client is no
    # telnet client: its bytes are its line, whatever they are.
    _, web = web_server(start_server, "--mode", "echo")
    with ws_connect(web) as ws:
        recv(ws)
        ws.send(b"caf\xe9 \xff\xfb\x01 hi")  # IAC WILL ECHO, on TCP
        assert str(recv(ws)).endswith("] Echo: caf\ufffd \ufffd\ufffd\x01 hi")
        ws.send(b"x \xff\xf4 y")  # IAC IP: telnet's Ctrl-C, on TCP
        assert str(recv(ws)).endswith("] Echo: x \ufffd\ufffd y")
        ws.send("still here")
        assert str(recv(ws)).endswith("] Echo: still here")


def test_a_message_sent_with_the_handshake_is_not_left_waiting(
    start_server: ServerStarter,
) -> None:
    _, web = web_server(start_server, "--mode", "chat")
    raw = RawWebSocket(web, first_message="early")  # the name, in the request's segment
    assert raw.read_message() == "Enter your username: "
    assert raw.read_message() == "Welcome early!"
    raw.close()


def test_the_server_answers_the_clients_pings(start_server: ServerStarter) -> None:
    _, web = web_server(start_server, "--mode", "echo")
    with ws_connect(web) as ws:
        recv(ws)
        for _ in range(3):
            assert ws.ping(b"are you there").wait(WAIT)  # the pong came
        ws.send("yes")
        assert str(recv(ws)).endswith("] Echo: yes")


# -- TCP and browsers in one chat ------------------------------------------------------------


@SHARED
def test_tcp_and_websocket_clients_chat_together(start_server: ServerStarter, shared: bool) -> None:
    server, web = web_server(start_server, "--mode", "chat", shared=shared)
    nc = chat_join(server.port, "nc")
    alice = ws_join(web, "alice")
    assert nc.read_line() == "alice joined the chat\n"
    bob = ws_join(web, "bob")
    assert nc.read_line() == "bob joined the chat\n"
    assert recv(alice) == "bob joined the chat"

    alice.send("hello from the browser")
    assert nc.read_line() == "[alice]: hello from the browser\n"
    assert recv(alice) == recv(bob) == "[alice]: hello from the browser"
    nc.send_line("hi from nc")
    assert recv(alice) == recv(bob) == "[nc]: hi from nc"
    assert nc.read_line() == "[nc]: hi from nc\n"
    alice.send("/users")
    assert recv(alice) == "Online users: nc, alice, bob"
    alice.send("/msg NC psst")
    assert recv(alice) == "[you -> nc]: psst"
    assert nc.read_line() == "[alice -> you]: psst\n"
    nc.send_line("/msg bob back")
    assert nc.read_line() == "[you -> bob]: back\n"
    assert recv(bob) == "[nc -> you]: back"
    bob.send("/me waves")
    assert nc.read_line() == "* bob waves\n"
    assert recv(alice) == "* bob waves"

    bob.close()  # a close frame: bob left, once
    assert nc.read_line() == "bob left the chat\n"
    assert recv(alice) == "bob left the chat"
    nc.send_line("/users")
    assert nc.read_line() == "Online users: nc, alice\n"
    nc.close()  # and a TCP user leaving is announced to the browser
    assert recv(alice) == "nc left the chat"
    alice.send("/users")
    assert recv(alice) == "Online users: alice"
    alice.close()
    disconnects = server.wait_for_events("disconnect", 3)
    assert {(d["name"], d["transport"]) for d in disconnects} == {
        ("bob", "websocket"),
        ("nc", "tcp"),
        ("alice", "websocket"),
    }


@pytest.mark.parametrize("how", ["close-frame", "fin", "reset"])
def test_a_browser_that_leaves_is_announced_exactly_once(
    start_server: ServerStarter, how: str
) -> None:
    server, web = web_server(start_server, "--mode", "chat")
    nc = chat_join(server.port, "nc")
    browser = raw_join(web, "tab")
    assert nc.read_line() == "tab joined the chat\n"
    if how == "close-frame":
        browser.send_frame(0x8, struct.pack("!H", 1001) + b"tab closed")
        opcode, payload = browser.read_frame()  # the answer: a close frame, the same code
        assert (opcode, payload[:2]) == (0x8, struct.pack("!H", 1001))
        assert browser.at_eof()
        browser.close()
    elif how == "fin":  # gone without a close frame
        browser.close()
    else:
        reset(browser.sock)
    assert nc.read_line() == "tab left the chat\n"
    nc.send_line("/users")
    assert nc.read_line() == "Online users: nc\n"  # no second "left" before this
    disconnect = server.wait_for_log("disconnect", name="tab")
    assert disconnect["transport"] == "websocket"
    assert disconnect["reason"] == ("reset by client" if how == "reset" else "closed by client")
    nc.close()


# -- TLS ---------------------------------------------------------------------------------------


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, Path]:
    trustme = pytest.importorskip("trustme", reason="trustme makes the test certificates")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    paths = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    return paths


@SHARED
def test_the_web_port_serves_https_and_wss(
    start_server: ServerStarter, certs: dict[str, Path], shared: bool
) -> None:
    server, web = web_server(
        start_server,
        "--mode",
        "chat",
        "--tls-cert",
        str(certs["cert"]),
        "--tls-key",
        str(certs["key"]),
        shared=shared,
    )
    context = ssl.create_default_context(cafile=str(certs["ca"]))
    status, headers, body = http_request(web, "/", context=context)
    assert status == 200
    assert b"<!doctype html>" in body.lower()
    assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert urlopen(f"https://127.0.0.1:{web}/healthz", context) == (200, "ok\n")
    with pytest.raises(ssl.SSLError):  # nothing in clear text
        ws_connect(web, context=ssl.create_default_context())  # a CA that is not ours
    alice = ws_join(web, "alice", context=context)
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
    tls = context.wrap_socket(raw, server_hostname="127.0.0.1")
    tls.sendall(b"nc\n")  # speaks first: on the shared port, no wait for the sniff
    received = b""
    while b"nc joined" not in received and b"Welcome nc!\n" not in received:
        received += tls.recv(4096)
    assert recv(alice) == "nc joined the chat"
    alice.send("over wss")
    while b"[alice]: over wss\n" not in received:
        received += tls.recv(4096)
    assert recv(alice) == "[alice]: over wss"
    tls.close()
    alice.close()


# -- the same-port listener ------------------------------------------------------------------


def test_same_port_greets_a_silent_client_after_the_sniff_timeout(
    start_server: ServerStarter,
) -> None:
    server = start_server("--mode", "basic", "--port", "0", "--web-port", "0")
    server.wait_for_log("listening")
    assert server.events("web_listening") == []  # one listener for both
    server = start_server(
        "--mode", "basic", "--port", "0", "--web-port", "0", "--sniff-timeout", "0.5"
    )
    started = time.monotonic()
    with Client(server.port) as nc:
        assert nc.read_line() == "Welcome to TCP Server!\n"
        assert time.monotonic() - started >= 0.45  # it waited to see if an HTTP request came
        nc.send("after")
        assert nc.read_until("after") == "Echo: after"


def test_same_port_serves_a_client_that_speaks_first_as_tcp_input(
    start_server: ServerStarter,
) -> None:
    server = start_server(
        "--mode", "chat", "--port", "0", "--web-port", "0", "--sniff-timeout", "5"
    )
    with Client(server.port) as nc:
        nc.send_line("eager")  # the name, before any prompt
        assert nc.read_until("Enter your username: ") == "Enter your username: "
        assert nc.read_line() == "Welcome eager!\n"
    basic = start_server(
        "--mode", "basic", "--port", "0", "--web-port", "0", "--sniff-timeout", "5"
    )
    with Client(basic.port) as nc:
        nc.send("GETTING ")  # not a request line: input to the mode
        assert nc.read_line() == "Welcome to TCP Server!\n"
        assert nc.read_until("GETTING ") == "Echo: GETTING "


def test_same_port_serves_http_and_websocket_clients(start_server: ServerStarter) -> None:
    server = start_server(
        "--mode", "echo", "--port", "0", "--web-port", "0", "--sniff-timeout", "5"
    )
    port = server.port
    status, page = urlopen(f"http://127.0.0.1:{port}/")
    assert status == 200 and '<script src="/chat.js" defer></script>' in page
    assert urlopen(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
    assert urlopen(f"http://127.0.0.1:{port}/nothing")[0] == 404
    with ws_connect(port) as ws:
        assert recv(ws) == "Welcome! Currently 1 clients online"
        ws.send("over the shared port")
        assert str(recv(ws)).endswith("] Echo: over the shared port")


@pytest.mark.parametrize("web", ["off", "other-port"])
def test_tcp_clients_are_greeted_at_once_unless_the_port_is_shared(
    start_server: ServerStarter, web: str
) -> None:
    extra = ["--web-port", str(free_port())] if web == "other-port" else []
    server = start_server("--mode", "basic", "--sniff-timeout", "10", *extra)
    # A sniff would wait 10 s: the greeting must come well before.
    with greeted_within(server.port, 2.0) as nc:
        assert nc.read_line() == "Welcome to TCP Server!\n"


# -- HTTP ----------------------------------------------------------------------------------------


def test_the_page_and_its_headers(start_server: ServerStarter) -> None:
    _, web = web_server(start_server, "--mode", "chat")
    status, headers, body = http_request(web, "/")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "Server" not in headers
    assert "gserver" not in str(headers).lower()  # no name, no version
    assert b'<script src="/chat.js" defer></script>' in body
    for path, kind in (("/chat.js", "text/javascript"), ("/chat.css", "text/css")):
        status, headers, _ = http_request(web, path)
        assert status == 200 and headers["Content-Type"].startswith(kind)
        assert "Server" not in headers
    status, headers, body = http_request(web, "/", method="HEAD")
    assert status == 200 and body == b""
    assert http_request(web, "/?from=bookmark")[0] == 200
    assert http_request(web, "/", method="POST")[0] == 405


@pytest.mark.parametrize(
    "path",
    [
        "/nothing",
        "/web/",
        "/web/index.html",
        "/index.html",
        "/gserver/",
        "/gserver/web/chat.js",
        "/gserver/web/transport.py",
        "/chat.js/",
        "/../chat.js",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/.git/config",
        "/healthz/",
        "/ws/",
    ],
)
def test_no_other_paths_and_no_directory_listing(start_server: ServerStarter, path: str) -> None:
    _, web = web_server(start_server, "--mode", "chat")
    status, headers, body = http_request(web, path)
    assert status == 404
    assert body == b"not found\n"
    assert "Server" not in headers


def test_healthz_answers_as_the_metrics_port_does(
    start_server: ServerStarter, tmp_path: Path
) -> None:
    # A handler that does not end when told keeps the graceful stop in its grace period,
    # during which an HTTP connection kept alive from before asks again.
    (tmp_path / "stubborn.py").write_text(
        "import gevent\ndef handle(conn):\n    conn.send('hello\\n')\n    gevent.sleep(60)\n"
    )
    server, web = web_server(
        start_server,
        "--handler",
        "stubborn:handle",
        "--metrics-port",
        "0",
        "--shutdown-grace",
        "30",
    )
    metrics = server.wait_for_log("metrics_listening")["port"]
    assert urlopen(f"http://127.0.0.1:{web}/healthz") == (200, "ok\n")
    assert urlopen(f"http://127.0.0.1:{metrics}/healthz") == (200, "ok\n")
    health = http.client.HTTPConnection("127.0.0.1", web, timeout=WAIT)
    health.request("GET", "/healthz")
    reply = health.getresponse()
    assert (reply.status, reply.read()) == (200, b"ok\n")
    stubborn = Client(server.port)
    assert stubborn.read_line() == "hello\n"
    server.signal(signal.SIGTERM)
    assert stubborn.read_line() == "Server shutting down\n"
    health.request("GET", "/healthz")
    reply = health.getresponse()
    assert (reply.status, reply.read()) == (503, b"shutting down\n")
    assert urlopen(f"http://127.0.0.1:{metrics}/healthz") == (503, "shutting down\n")
    health.close()
    stubborn.close()
    server.signal(signal.SIGQUIT)  # no need to wait the grace out
    server.wait()


# -- origins -----------------------------------------------------------------------------------


def test_a_page_from_another_site_is_refused(start_server: ServerStarter) -> None:
    server, web = web_server(start_server, "--mode", "chat")
    for origin in ("https://evil.example", f"http://127.0.0.1:{web + 1}", "null"):
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(web, origin=origin)
        assert refused.value.response.status_code == 403
        entry = server.wait_for_log("ws_refused", origin=origin)
        assert entry["status"] == 403 and entry["reason"] == "origin not allowed"
    assert server.events("connect") == []


@pytest.mark.parametrize("allowed", ["none", "same", "listed", "any"])
def test_allowed_origins(start_server: ServerStarter, allowed: str) -> None:
    args = {
        "listed": ["--web-origins", "https://chat.example, https://other.example:8443"],
        "any": ["--web-origins", "*"],
    }.get(allowed, [])
    server, web = web_server(start_server, "--mode", "echo", *args)
    origin = {
        "none": None,
        "same": f"http://127.0.0.1:{web}",
        "listed": "https://other.example:8443",
        "any": "https://anywhere.example",
    }[allowed]
    with ws_connect(web, origin=origin) as ws:
        assert recv(ws) == "Welcome! Currently 1 clients online"
    if allowed == "listed":  # listed ones only, port and all
        with pytest.raises(InvalidStatus):
            ws_connect(web, origin="https://chat.example:8443")
        assert server.wait_for_log("ws_refused")["origin"] == "https://chat.example:8443"
    else:
        assert server.events("ws_refused") == []


# -- forwarded addresses ---------------------------------------------------------------------


def test_x_forwarded_for_from_a_trusted_proxy(start_server: ServerStarter) -> None:
    server, web = web_server(start_server, "--mode", "echo", "--max-clients-per-ip", "1")
    proxied = {"X-Forwarded-For": "203.0.113.7"}
    with ws_connect(web, additional_headers=proxied) as first:
        assert recv(first) == "Welcome! Currently 1 clients online"
        entry = server.wait_for_log("connect", transport="websocket")
        assert entry["client"].startswith("203.0.113.7:")
        # The same address again is over max_clients_per_ip: told, then closed with 1013.
        with ws_connect(web, additional_headers=proxied) as second:
            assert until_closed(second) == (["Server full, try again later"], 1013)
        refused = server.wait_for_log("refused", reason="max_clients_per_ip")
        assert refused["client"].startswith("203.0.113.7:")
        # Other addresses behind the same proxy are other clients, and so is the proxy.
        other = {"X-Forwarded-For": "198.51.100.1, 203.0.113.9"}  # the right-most is the client
        with ws_connect(web, additional_headers=other) as third:
            assert recv(third) == "Welcome! Currently 2 clients online"
            clients = [e["client"] for e in server.wait_for_events("connect", 2)]
            assert clients[1].startswith("203.0.113.9:")
            with Client(server.port) as nc:
                assert nc.read_line() == "Welcome! Currently 3 clients online\n"


def test_x_forwarded_for_from_anyone_else_is_ignored(start_server: ServerStarter) -> None:
    server, web = web_server(
        start_server,
        "--mode",
        "echo",
        "--max-clients-per-ip",
        "1",
        "--forwarded-allow-ips",
        "10.0.0.1, 192.168.0.0/16",
    )
    with ws_connect(web, additional_headers={"X-Forwarded-For": "203.0.113.7"}) as first:
        assert recv(first) == "Welcome! Currently 1 clients online"
        entry = server.wait_for_log("connect", transport="websocket")
        assert entry["client"].startswith("127.0.0.1:")
        with ws_connect(web, additional_headers={"X-Forwarded-For": "198.51.100.1"}) as second:
            assert until_closed(second) == (["Server full, try again later"], 1013)
        assert server.wait_for_log("refused")["client"].startswith("127.0.0.1:")


# -- pings -------------------------------------------------------------------------------------


def test_a_client_that_answers_pings_stays(start_server: ServerStarter) -> None:
    server, web = web_server(start_server, "--mode", "echo", "--ws-ping-interval", "0.5")
    counter = PingCounter()
    with ws_connect(web, logger=counter.logger) as ws:
        assert recv(ws) == "Welcome! Currently 1 clients online"
        counter.wait_for(4)  # past several intervals, each answered by the client
        ws.send("still here")
        assert str(recv(ws)).endswith("] Echo: still here")
    assert server.events("ping_timeout") == []


def test_pongs_count_while_the_handler_is_not_reading(
    start_server: ServerStarter, tmp_path: Path
) -> None:
    # A handler that only talks: the client's pongs wait unread on the socket, and that is
    # an answer all the same.
    (tmp_path / "ticker.py").write_text(
        "import gevent\n"
        "def handle(conn):\n"
        "    tick = 0\n"
        "    while not conn.closing:\n"
        "        conn.send(f'tick {tick}\\n')\n"
        "        tick += 1\n"
        "        gevent.sleep(0.05)\n"
    )
    server, web = web_server(
        start_server, "--handler", "ticker:handle", "--ws-ping-interval", "0.5"
    )
    counter = PingCounter()
    with ws_connect(web, logger=counter.logger) as ws:
        assert recv(ws) == "tick 0"
        while counter.pings < 4:  # reading all along: the client takes its pings in turn
            assert str(recv(ws)).startswith("tick ")
        # A close frame would wait unread too (for the client's close_timeout): just go.
        ws.close_socket()
    assert server.events("ping_timeout") == []


def test_a_client_that_never_answers_a_ping_is_closed(start_server: ServerStarter) -> None:
    server, web = web_server(start_server, "--mode", "echo", "--ws-ping-interval", "0.3")
    raw = RawWebSocket(web)
    assert raw.read_message() == "Welcome! Currently 1 clients online"
    frames = []
    while not frames or frames[-1][0] != 0x8:
        frames.append(raw.read_frame())
    assert frames[0][0] == 0x9  # pinged, never answered ...
    assert frames[-1] == (0x8, struct.pack("!H", 1000))  # ... then closed
    assert raw.at_eof()
    server.wait_for_log("ping_timeout")
    assert server.wait_for_log("disconnect")["reason"] == "ping timeout"
    raw.close()


def test_pings_and_pongs_are_not_input_for_the_idle_timeout(start_server: ServerStarter) -> None:
    server, web = web_server(
        start_server, "--mode", "echo", "--ws-ping-interval", "0.3", "--idle-timeout", "1.5"
    )
    counter = PingCounter()
    with ws_connect(web, logger=counter.logger) as ws:
        assert recv(ws) == "Welcome! Currently 1 clients online"
        messages, code = until_closed(ws)
    assert messages == ["Timeout - closing connection"]
    assert code == 1000
    assert counter.pings >= 3  # it answered pings all along, and was idle all the same
    assert server.wait_for_log("disconnect")["reason"] == "idle timeout"


# -- limits ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["echo", "chat"])
def test_a_message_over_max_line_bytes_is_an_error_and_the_connection_goes_on(
    start_server: ServerStarter, mode: str
) -> None:
    _, web = web_server(start_server, "--mode", mode, "--max-line-bytes", "64")
    ws = ws_join(web, "alice") if mode == "chat" else ws_connect(web)
    if mode == "echo":
        recv(ws)
    ws.send("x" * 100)
    assert recv(ws) == "Error: line too long (max 64 bytes)"
    ws.send("y" * 60 + "\n" + "z" * 60)  # long in all, but each line fits
    if mode == "echo":
        assert str(recv(ws)).endswith("] Echo: " + "y" * 60)
        assert str(recv(ws)).endswith("] Echo: " + "z" * 60)
    else:
        assert recv(ws) == "[alice]: " + "y" * 60
        assert recv(ws) == "[alice]: " + "z" * 60
    ws.close()


@pytest.mark.parametrize("shape", ["one-frame", "fragments", "binary"])
def test_a_message_over_the_hard_cap_closes_with_1009(
    start_server: ServerStarter, shape: str
) -> None:
    server, web = web_server(start_server, "--mode", "echo", "--max-line-bytes", "64")
    with ws_connect(web) as ws:
        recv(ws)
        ws.send("x" * 256)  # 4 x max_line_bytes: still a message (one over-long line)
        assert recv(ws) == "Error: line too long (max 64 bytes)"
        if shape == "one-frame":
            ws.send("x" * 257)
        elif shape == "fragments":
            ws.send(["x" * 200, "x" * 200])
        else:
            ws.send(b"\x00" * 1000)
        assert until_closed(ws) == ([], 1009)
    assert server.wait_for_log("websocket_error")["code"] == 1009


def test_flood_control_slows_a_websocket_client_and_drops_nothing(
    start_server: ServerStarter,
) -> None:
    server, web = web_server(
        start_server, "--mode", "echo", "--flood-rate", "20", "--flood-burst", "2"
    )
    with ws_connect(web) as ws:
        recv(ws)
        ws.send("\n".join(f"line {i}" for i in range(10)))
        for i in range(10):
            assert str(recv(ws)).endswith(f"] Echo: line {i}")
    server.wait_for_log("flood_throttled")


def test_max_clients_on_the_web_port(start_server: ServerStarter) -> None:
    server, web = web_server(start_server, "--mode", "chat", "--max-clients", "1")
    nc = chat_join(server.port, "nc")
    # The web port refuses before any HTTP is read, yet as HTTP: a 503 a browser shows,
    # for the page and for a WebSocket handshake alike.  (The request reaches a socket
    # already closed, and the reset that answers it can outrun the 503 to the client:
    # then the client sees a reset.  So each is tried a few times.)
    upgrade = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
    }
    for path, headers in (("/", {}), ("/ws", upgrade)):
        for _ in range(5):
            try:
                status, reply, body = http_request(web, path, headers=headers)
            except ConnectionResetError:
                continue
            assert (status, body) == (503, b"Server full, try again later\n")
            assert reply["Retry-After"]
            break
        else:
            raise AssertionError(f"{path}: never answered 503")
    assert server.wait_for_log("refused")["reason"] == "max_clients"
    nc.close()
    server.wait_for_log("disconnect")
    with ws_join(web, "alice") as alice:  # room again
        with Client(server.port) as late:
            assert late.read_line() == "Server full, try again later\n"
        alice.send("/users")
        assert recv(alice) == "Online users: alice"


def test_max_clients_on_a_shared_port(start_server: ServerStarter) -> None:
    server = start_server("--mode", "chat", "--port", "0", "--web-port", "0", "--max-clients", "1")
    with ws_join(server.port, "alice"):
        # Refused at accept, before anyone knows what the client speaks: the TCP text,
        # which is no HTTP response (a browser shows an error page, its WebSocket 1006).
        with Client(server.port) as late:
            assert late.read_to_close() == "Server full, try again later\n"
        # No valid HTTP response: a browser's handshake fails (its WebSocket sees 1006).
        with pytest.raises((http.client.HTTPException, OSError)):
            http_request(server.port, "/ws", headers={"Upgrade": "websocket"})


def test_max_clients_per_ip_counts_tcp_and_websocket_clients(
    start_server: ServerStarter,
) -> None:
    server, web = web_server(start_server, "--mode", "chat", "--max-clients-per-ip", "1")
    with chat_join(server.port, "nc") as nc:
        with ws_connect(web) as ws:
            assert until_closed(ws) == (["Server full, try again later"], 1013)
        nc.send_line("/users")
        assert nc.read_line() == "Online users: nc\n"
    server.wait_for_log("disconnect")
    with ws_join(web, "alice"), Client(server.port) as late:
        assert late.read_to_close() == "Server full, try again later\n"


def test_a_websocket_client_that_never_reads_is_dropped_as_a_slow_consumer(
    start_server: ServerStarter,
) -> None:
    server, web = web_server(
        start_server,
        "--mode",
        "chat",
        "--flood-rate",
        "0",
        "--max-output-bytes",
        "65536",
        "--write-timeout",
        "1",
    )
    sleeper = raw_join(web, "sleeper", rcvbuf=4096)
    nc = chat_join(server.port, "nc")
    line = "x" * 1000
    left = 0
    while not server.events("slow_consumer"):
        for _ in range(50):
            nc.send_line(line)
        echoed = 0
        while echoed < 50:
            text = nc.read_line()
            if text == "sleeper left the chat\n":
                left += 1
                continue
            assert text == f"[nc]: {line}\n"
            echoed += 1
    entry = server.wait_for_log("slow_consumer")
    assert entry["name"] == "sleeper"
    if not left:
        assert nc.read_line() == "sleeper left the chat\n"
    nc.send_line("/users")
    assert nc.read_line() == "Online users: nc\n"
    disconnect = server.wait_for_log("disconnect", name="sleeper")
    assert disconnect["reason"] == "slow consumer" and disconnect["transport"] == "websocket"
    sleeper.close()
    nc.close()


@pytest.mark.parametrize("shared", [False, True], ids=["web-port", "same-port"])
def test_handshake_timeout_bounds_the_request(start_server: ServerStarter, shared: bool) -> None:
    server, web = web_server(
        start_server, "--mode", "chat", "--handshake-timeout", "0.5", shared=shared
    )
    with socket.create_connection(("127.0.0.1", web), timeout=WAIT) as half:
        half.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
        started = time.monotonic()
        with contextlib.suppress(ConnectionResetError):
            assert half.recv(4096) == b""
        assert time.monotonic() - started < WAIT
    # The server is fine, and an ordinary client is served.
    with ws_join(web, "alice") as alice:
        alice.send("/users")
        assert recv(alice) == "Online users: alice"
    assert server.events("connect")[0]["transport"] == "websocket"


# -- closes --------------------------------------------------------------------------------------


def test_quit_closes_with_1000_after_the_last_text(start_server: ServerStarter) -> None:
    server, web = web_server(start_server, "--mode", "chat")
    with ws_join(web, "alice") as alice:
        alice.send("last words\n/quit")
        assert until_closed(alice) == (["[alice]: last words"], 1000)
    disconnect = server.wait_for_log("disconnect")
    assert disconnect["reason"] == "quit" and disconnect["transport"] == "websocket"


def test_shutdown_says_so_and_closes_with_1001(start_server: ServerStarter) -> None:
    server, web = web_server(start_server, "--mode", "chat")
    alice = ws_join(web, "alice")
    server.signal(signal.SIGTERM)
    assert until_closed(alice) == (["Server shutting down"], 1001)
    assert server.wait() == 0
    assert server.wait_for_log("disconnect")["reason"] == "server shutdown"


# -- metrics ---------------------------------------------------------------------------------------


def scrape(port: int) -> dict[str, float]:
    status, text = urlopen(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_metrics_count_websocket_clients_by_transport(start_server: ServerStarter) -> None:
    server, web = web_server(start_server, "--mode", "chat", "--metrics-port", "0")
    metrics = server.wait_for_log("metrics_listening")["port"]
    nc = chat_join(server.port, "nc")
    alice = ws_join(web, "alice")
    bob = ws_join(web, "bob")
    values = scrape(metrics)
    assert values["gserver_connected_clients"] == 3
    assert values['gserver_connections_total{transport="tcp"}'] == 1
    assert values['gserver_connections_total{transport="websocket"}'] == 2
    bob.close()
    wait_until(lambda: scrape(metrics)["gserver_connected_clients"] == 2, WAIT, "bob counted out")
    values = scrape(metrics)
    assert values['gserver_connections_total{transport="websocket"}'] == 2
    alice.close()
    nc.close()


# -- across the Redis backplane --------------------------------------------------------------------


REDIS_SERVER = shutil.which("redis-server")


@pytest.mark.skipif(
    REDIS_SERVER is None, reason="redis-server is not installed (.ci/run installs it)"
)
def test_a_browser_user_and_an_nc_user_on_two_nodes(
    start_server: ServerStarter, tmp_path: Path
) -> None:
    from tests.test_cluster import Redis

    redis = Redis(tmp_path)
    try:
        web_port = free_port()
        one = start_server("--mode", "chat", "--backplane", redis.url, "--web-port", str(web_port))
        one.wait_for_log("backplane_up")
        two = start_server("--mode", "chat", "--backplane", redis.url)
        two.wait_for_log("backplane_up")
        alice = ws_join(web_port, "alice")  # the browser, on node one
        nc = chat_join(two.port, "nc")  # the terminal, on node two
        assert recv(alice) == "nc joined the chat"
        alice.send("hello across the cluster")
        assert nc.read_line() == "[alice]: hello across the cluster\n"
        assert recv(alice) == "[alice]: hello across the cluster"
        nc.send_line("/msg alice psst")
        assert nc.read_line() == "[you -> alice]: psst\n"
        assert recv(alice) == "[nc -> you]: psst"
        alice.send("/users")
        assert recv(alice) == "Online users: alice, nc"
        alice.close()
        assert nc.read_line() == "alice left the chat\n"
        nc.close()
    finally:
        if redis.proc is not None and redis.proc.poll() is None:
            redis.kill()
