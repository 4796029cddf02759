"""The server core in this very process, under gevent: paths a subprocess cannot reach
(a handler that survives its kill, what each part was told), and the reads of
``Connection`` over real loopback sockets, without a process start per test."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import gevent.event
import gevent.socket
import greenlet
import pytest
from structlog.testing import capture_logs

from gserver.connection import (
    CloseReason,
    Connection,
    ConnectionState,
    IncompleteRead,
    LimitExceeded,
)
from gserver.server import Server
from gserver.settings import Settings

WAIT = 10.0


class Recorder:
    """A companion that records what the server asked of it."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def start(self, server: Server) -> None:
        self.calls.append("start")

    def stop(self) -> None:
        self.calls.append("stop")


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(handler: Callable[[Connection], None], **settings: Any) -> Server:
        server = Server(handler, Settings(host="127.0.0.1", port=0, **settings))
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        if not server.stopping:
            server.stop()


def connect(server: Server) -> Any:
    sock = gevent.socket.create_connection(server.address, timeout=WAIT)
    return sock


def read_until(sock: Any, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"closed before {marker!r}; got {data!r}")
        data += chunk
    return data


def test_a_handler_that_survives_its_kill_does_not_stop_the_stop(serve) -> None:
    recorder = Recorder()
    survived: list[bool] = []

    def stubborn(conn: Connection) -> None:
        conn.send("hello\n")
        while True:
            try:
                gevent.sleep(0.05)
            except gevent.GreenletExit:
                survived.append(True)  # and goes on, as a careless handler might

    server = Server(stubborn, Settings(host="127.0.0.1", port=0, shutdown_grace=0.5))
    server.companions.append(recorder)
    server.start()
    client = connect(server)
    assert read_until(client, b"\n") == b"hello\n"
    with capture_logs() as logs:
        started = time.monotonic()
        server.stop("test")
        took = time.monotonic() - started
    assert survived, "the handler was never killed"
    assert took < 0.5 + 1, f"stop took {took:.2f} s"
    stopped = [e for e in logs if e["event"] == "stopped"]
    assert stopped and stopped[0]["still_running"] == 1
    assert recorder.calls == ["start", "stop"]
    assert not [e for e in logs if e.get("log_level") == "error"]
    client.close()


def test_every_part_is_stopped_even_when_one_fails(serve) -> None:
    class Broken(Recorder):
        def stop(self) -> None:
            raise RuntimeError("cannot stop")

    broken, fine = Broken(), Recorder()
    server = Server(lambda conn: None, Settings(host="127.0.0.1", port=0))
    server.companions += [broken, fine]
    server.start()
    with capture_logs() as logs:
        server.stop("test")
    assert fine.calls == ["start", "stop"]
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["stop_failed"]
    assert logs[-1]["event"] == "stopped"


def test_reads_mix_freely_and_lose_nothing(serve) -> None:
    got: list[Any] = []
    done = gevent.event.Event()

    def mixed(conn: Connection) -> None:
        lines = conn.lines()
        got.append(next(lines))  # a line through the iterator...
        got.append(conn.read_line())  # ...one read exactly...
        size = int(conn.read_until(b":"))
        got.append(conn.read_exactly(size))  # ...a length-prefixed body...
        got.append(conn.receive())  # ...and whatever is left, as it came
        done.set()

    server = serve(mixed)
    client = connect(server)
    # All in one segment: every read must take its share from the same buffer.
    client.sendall(b"first\r\nsecond\n5:a\nb\ncrest")
    assert done.wait(WAIT)
    assert got == ["first", b"second", b"a\nb\nc", b"rest"]
    client.close()


def test_a_read_that_is_already_buffered_does_not_switch(serve) -> None:
    switches: list[list[str]] = []
    done = gevent.event.Event()

    def handler(conn: Connection) -> None:
        conn.read_exactly(1)  # the rest of the segment is now buffered
        events: list[str] = []
        previous = greenlet.settrace(lambda event, _args: events.append(event))
        try:
            rest = [conn.read_exactly(1), conn.read_line(), conn.read_until(b"!")]
        finally:
            greenlet.settrace(previous)
        switches.append(events)
        conn.send(b"".join(rest))
        done.set()

    server = serve(handler)
    client = connect(server)
    client.sendall(b"12ab\ncd!")
    assert done.wait(WAIT)
    assert switches == [[]]
    assert read_until(client, b"cd") == b"2abcd"
    client.close()


def test_read_errors_are_the_documented_ones_and_the_connection_goes_on(serve) -> None:
    outcomes: list[Any] = []
    done = gevent.event.Event()

    def handler(conn: Connection) -> None:
        try:
            conn.read_line(limit=4)
        except LimitExceeded as exc:
            outcomes.append(("limit", exc.limit))
        outcomes.append(conn.read_line())  # the over-long line was skipped whole
        try:
            conn.read_exactly(10, timeout=0.2)
        except TimeoutError:
            outcomes.append("timeout")
        conn.send("go on\n")
        try:
            conn.read_exactly(10)
        except IncompleteRead as exc:
            outcomes.append(("incomplete", exc.partial))
        outcomes.append(conn.close_reason)
        done.set()

    server = serve(handler)
    client = connect(server)
    client.sendall(b"far too long\nok\nabc")
    assert read_until(client, b"go on\n") == b"go on\n"
    client.sendall(b"de")
    client.shutdown(2 - 1)  # SHUT_WR: end of stream after "abcde"
    assert done.wait(WAIT)
    assert outcomes == [
        ("limit", 4),
        b"ok",
        "timeout",
        ("incomplete", b"abcde"),
        CloseReason.CLIENT_CLOSED,
    ]
    client.close()


def test_connection_state_and_close_reason_are_enums(serve) -> None:
    seen: list[Any] = []
    done = gevent.event.Event()

    def handler(conn: Connection) -> None:
        seen.append(conn.state)
        conn.close(CloseReason.QUIT)
        seen.append(conn.state)
        seen.append(conn.receive())  # a closing connection reads nothing more
        done.set()

    server = serve(handler)
    client = connect(server)
    assert done.wait(WAIT)
    assert seen == [ConnectionState.OPEN, ConnectionState.CLOSING, b""]
    client.close()


def test_text_is_sent_as_utf8_with_escaped_bytes_restored_and_lines_read_alike(serve) -> None:
    """send() takes UTF-8's fast path and lines() decodes on it; both keep their rules:
    a surrogate escape goes out as the byte it stands for, invalid input reads as U+FFFD."""
    errors: list[str] = []

    def handler(conn: Connection) -> None:
        conn.send("café \udcff\n")  # surrogateescape: the byte 0xff itself
        try:
            conn.send("\ud800")  # a lone surrogate that is no escape: refused, as before
        except UnicodeEncodeError:
            errors.append("refused")
        for line in conn.lines():
            conn.send(f"{line}|\n")

    server = serve(handler)
    client = connect(server)
    assert read_until(client, b"\n") == "café ".encode() + b"\xff\n"
    client.sendall("naïve\n".encode() + b"bad \x80\xfe\n")  # (0xff would be telnet's IAC)
    assert read_until(client, "\ufffd|\n".encode()) == "naïve|\nbad \ufffd\ufffd|\n".encode()
    assert errors == ["refused"]
    client.close()


def test_a_handler_served_as_a_library_gets_the_handlers_default_idle_timeout() -> None:
    server = Server(lambda conn: None, Settings())
    assert server.idle_timeout == 30.0  # not chat mode's 600 s


def _memory_per_parked_client(handler: Callable[[Connection], object], count: int = 200) -> float:
    """Python memory that each client parked in ``handler`` holds (traced allocations)."""
    import gc
    import tracemalloc

    server = Server(handler, Settings(host="127.0.0.1", port=0, idle_timeout=0))
    server.start()
    clients = []
    try:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        clients = [connect(server) for _ in range(count)]
        deadline = time.monotonic() + WAIT
        while len(server.connections) < count and time.monotonic() < deadline:
            gevent.sleep(0.01)
        gevent.sleep(0.1)  # let each handler reach its read and park there
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        for client in clients:
            client.close()
        server.stop()
    return used / count


def test_a_handler_parked_in_an_exact_read_costs_what_one_in_receive_does() -> None:
    _memory_per_parked_client(lambda conn: conn.receive(), 50)  # warm up once-only costs
    in_receive = _memory_per_parked_client(lambda conn: conn.receive())
    for read in (
        lambda conn: conn.read_line(),
        lambda conn: conn.read_exactly(4),
        lambda conn: conn.read_until(b"\r\n"),
    ):
        assert _memory_per_parked_client(read) <= in_receive + 64
