"""The blocking-style face of one client: reads, ``send()``, ``close()``; its outbox.

A handler reads as if the socket were blocking; underneath, a read that would block parks
the client's greenlet on the event loop.  Every read (``lines()``, ``chunks()``,
``receive()``, ``read_line()``, ``read_exactly()``, ``read_until()``) takes from one
receive buffer, so any mix of them loses and reorders nothing.

``send()`` never blocks: it appends to the client's outbox and puts the client on the
:class:`FlushQueue`, which writes every waiting outbox once per loop turn, one system call
for many messages (Redis's ``clients_pending_write``).  Only when a socket will not take all
its output does a writer greenlet exist for that client, and only until the outbox is
empty.  The outbox is bounded, which is where slow consumers are caught.

Plain TCP takes a fast path: the standard library's socket object itself, non-blocking,
one read watcher, and the greenlet switched to directly when it is readable; a write
watcher exists only while output waits.  TLS uses gevent's cooperative SSL socket.
Idle clients thus cost little: a socket, a watcher, this object and a greenlet parked
a few frames deep.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Iterable, Iterator
from enum import Enum, StrEnum
from typing import TYPE_CHECKING, Any

import gevent
from greenlet import getcurrent

from gserver import compat
from gserver.protocol.framing import LINE_TOO_LONG, Frame, ReceiveBuffer
from gserver.protocol.limits import TokenBucket
from gserver.protocol.telnet import TelnetFilter
from gserver.protocol.text import decode, loggable

if TYPE_CHECKING:
    from gserver.counters import Stats
    from gserver.registry import Registry
    from gserver.settings import Settings

RECV_SIZE = 65536
# After the last byte is sent, wait this long for the client to close its side, reading and
# discarding what it still sends, so that unread input does not turn our FIN into a reset
# that could destroy the final reply on its way.
LINGER_SECONDS = 2.0
SEND_CHUNK = 256 * 1024
# A client that sends without reading what it is owed is read no further while this much
# of its own output waits (half of max_output_bytes where that is smaller).
READ_PAUSE_BYTES = 256 * 1024
# A warning that a client can trigger at will is logged once per client this often.
WARN_EVERY_SECONDS = 5.0

# One receive buffer for the whole process: only one greenlet runs at a time, and what is
# received is copied out before the next switch.
_receive_buffer = bytearray(RECV_SIZE)
_receive_view = memoryview(_receive_buffer)


class ConnectionState(Enum):
    """Where a connection is in its life (one state, as h11 keeps it, not several flags)."""

    OPEN = "open"  # reading and writing
    CLOSING = "closing"  # no more reading; queued output still goes out
    CLOSED = "closed"  # the socket is closed


class CloseReason(StrEnum):
    """Why a connection ended, as logged in ``disconnect``; a handler may give its own."""

    CLIENT_CLOSED = "closed by client"
    CLIENT_RESET = "reset by client"
    SERVER_CLOSED = "closed by server"
    QUIT = "quit"
    IDLE_TIMEOUT = "idle timeout"
    PING_TIMEOUT = "ping timeout"
    SLOW_CONSUMER = "slow consumer"
    SHUTDOWN = "server shutdown"
    HANDLER_ERROR = "handler error"
    ERROR = "error"


_OPEN, _CLOSING, _CLOSED = ConnectionState.OPEN, ConnectionState.CLOSING, ConnectionState.CLOSED


class IncompleteRead(EOFError):
    """The client went (or the connection closed) before a read was satisfied.

    ``partial`` holds the bytes that did arrive."""

    def __init__(self, partial: bytes) -> None:
        super().__init__(f"end of stream after {len(partial)} bytes of an incomplete read")
        self.partial = partial


class LimitExceeded(ValueError):
    """A line (or a record up to a separator) was longer than the read's limit.

    For ``read_line`` the over-long line is skipped, up to its end, and the next read
    starts with the next line; for ``read_until`` the bytes held are dropped."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"longer than {limit} bytes")
        self.limit = limit


class _Wakeup(Exception):
    """Thrown into a greenlet parked on a read, so that it notices the connection closing."""


_WAKEUP = _Wakeup()
_CLOSED_ERROR = OSError(errno.EBADF, "connection closed")


class ConnectionContext:
    """What the connections of one server share, and all that they see of it: settings,
    the flush queue, the counters, the registry and the server's logger."""

    __slots__ = (
        "flush_queue",
        "log",
        "log_debug",
        "max_output",
        "read_pause_bytes",
        "registry",
        "settings",
        "stats",
        "stopping",
    )

    def __init__(self, settings: Settings, registry: Registry, stats: Stats, log: Any) -> None:
        self.settings = settings
        self.registry = registry
        self.stats = stats
        self.log = log
        self.flush_queue = FlushQueue()
        self.log_debug = settings.log_level == "debug"
        self.max_output = settings.max_output_bytes
        self.read_pause_bytes = min(READ_PAUSE_BYTES, settings.max_output_bytes // 2)
        self.stopping = False  # set by the server when its graceful stop begins


class FlushQueue:
    """Clients with output waiting, written together at the end of this loop turn."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: list[Connection] = []

    def add(self, conn: Connection) -> None:
        if not self._pending:
            compat.run_this_turn(self.flush)
        self._pending.append(conn)

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        for conn in pending:
            try:
                # Connection.flush_without_waiting, inlined for its common case (a plain
                # socket, no writer, one message): two calls less for every reply.
                outbox, raw = conn._outbox, conn._raw
                if raw is None or len(outbox) != 1 or conn._writer is not None:
                    conn.flush_without_waiting()
                    continue
                if conn.state is _CLOSED:
                    conn.flush_without_waiting()
                    continue
                data = outbox[0]
                try:
                    sent = raw.send(data)
                except OSError:  # it would block, or the socket is broken: as below
                    conn.flush_without_waiting()
                    continue
                conn._flush_scheduled = False
                conn._queued -= sent
                conn.bytes_out += sent
                if sent == len(data):
                    outbox.clear()
                else:  # the rest waits for the socket, as flush_without_waiting does
                    outbox[0] = data[sent:]
                    conn._writer = gevent.spawn(conn._drain)
            except Exception:  # one client's fault must not leave the others unwritten
                conn.log.exception("flush_failed")
                conn.abort(CloseReason.ERROR)


def send_to_all(members: Iterable[Any], data: bytes) -> None:
    """``member.send(data)`` for each member: the fan-out, where per-message cost decides
    chat throughput, with :meth:`Connection.send` inlined for connections.  Members whose
    transport encodes its output (WebSocket frames) get it encoded once for all of them."""
    size = len(data)
    encoder: Any = None
    encoded = b""
    for member in members:
        if member.__class__ is not Connection:
            encode = getattr(member, "encode_output", None)
            if encode is None:
                member.send(data)
                continue
            if encode is not encoder:
                encoder, encoded = encode, encode(data)
            member.send_encoded(encoded)
            continue
        if member.state is not _OPEN:
            continue
        member._outbox.append(data)
        member._queued += size
        member.messages_out += 1
        if member._queued > member._max_output:
            member._over_output_limit()
        elif not member._flush_scheduled and member._writer is None:
            member._flush_scheduled = True
            member._context.flush_queue.add(member)


def format_peer(address: Any) -> str:
    """``host:port`` for IPv4 (IPv4-mapped IPv6 included), ``[host]:port`` for IPv6."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = str(address[0]), address[1]
        if host.startswith("::ffff:") and "." in host:
            host = host[7:]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(address) or "unix"


# How each exact read takes from the buffer: (buffer, its argument, its limit) -> what it
# took, LINE_TOO_LONG, or None while it is not all there.
_Take = Callable[[ReceiveBuffer, Any, int], Frame | None]


def _take_line(buffer: ReceiveBuffer, _unused: Any, limit: int) -> Frame | None:
    return buffer.take_line(limit)


def _take_exactly(buffer: ReceiveBuffer, count: int, _limit: int) -> Frame | None:
    return buffer.take_exactly(count)


def _take_until(buffer: ReceiveBuffer, separator: bytes, limit: int) -> Frame | None:
    return buffer.take_until(separator, limit)


class Connection:
    """One connected client, as a handler sees it."""

    transport = "tcp"  # as logged; a WebSocket client is a subclass with its own
    # True where each read from the transport is one message a user typed, to be read as
    # a line even without its line ending (WebSocket text messages).
    _messages_are_lines = False

    __slots__ = (
        "__weakref__",
        "_buffer",
        "_context",
        "_drained_input",
        "_first_input",
        "_flood_logged",
        "_flush_scheduled",
        "_hub",
        "_log",
        "_max_output",
        "_outbox",
        "_queued",
        "_raw",
        "_read_watcher",
        "_socket",
        "_too_long",
        "_write_watcher",
        "_writer",
        "address",
        "bytes_in",
        "bytes_out",
        "close_reason",
        "connected_at",
        "greenlet",
        "last_read",
        "last_write_progress",
        "messages_out",
        "state",
    )

    def __init__(
        self, context: ConnectionContext, sock: Any, address: Any, first_input: bytes = b""
    ) -> None:
        self._context = context
        # Bytes already read from the socket (to tell a TCP client from a browser): they
        # are the first thing any read returns.
        self._first_input = first_input
        self.address = address
        self._log: Any = None  # bound on first use: an idle client needs no logger of its own
        self._socket = sock
        self._hub = hub = gevent.get_hub()
        if compat.is_ssl_socket(sock):  # gevent's SSL socket: its own watchers and calls
            self._raw = None
            self._read_watcher = compat.read_watcher_of(sock)
        else:  # the standard library's socket, non-blocking
            self._raw = sock
            self._read_watcher = compat.io_watcher(sock.fileno(), compat.READ)
        self._write_watcher: Any = None
        self._buffer: ReceiveBuffer | None = None  # made by the first read that needs it
        # A new client has rarely sent anything yet (it waits for a greeting): the first
        # read waits for readiness instead of failing with EAGAIN (a plain socket only;
        # TLS may hold decrypted bytes that the socket no longer shows).
        self._drained_input = self._raw is not None and not first_input
        self._outbox: list[bytes] = []
        self._queued = 0
        self._flush_scheduled = False
        self._writer: Any = None
        self._flood_logged = False
        self._too_long: list[float] | None = None  # [last logged, how many since]: lazily
        self._max_output = context.max_output
        self.state = _OPEN
        self.close_reason: str | None = None
        self.greenlet = getcurrent()
        now = hub.loop.now()
        self.connected_at = now
        self.last_read = now
        self.last_write_progress = now
        self.bytes_in = 0
        self.bytes_out = 0
        self.messages_out = 0

    # -- what a handler uses ------------------------------------------------------------

    @property
    def registry(self) -> Registry:
        """Everyone connected to this server: ``conn.registry.broadcast("hello")``."""
        return self._context.registry

    @property
    def settings(self) -> Settings:
        """The settings the server runs with (read-only)."""
        return self._context.settings

    @property
    def server_stopping(self) -> bool:
        """True once the server's graceful stop has begun (everyone is being told)."""
        return self._context.stopping

    @property
    def debug(self) -> bool:
        """True when the log level is debug: build debug-only details only then."""
        return self._context.log_debug

    @property
    def closing(self) -> bool:
        """True once the connection no longer reads (closing or closed)."""
        return self.state is not _OPEN

    @property
    def log(self) -> Any:
        """This client's structlog logger, bound to its address (and what ``bind`` adds).

        Bound afresh for each use until ``bind`` adds context: an idle client keeps none.
        """
        if self._log is None:
            return self._context.log.bind(client=self.peer)
        return self._log

    @property
    def ip(self) -> str:
        """The client's address without its port (IPv6 without brackets)."""
        return format_peer(self.address).rpartition(":")[0].strip("[]")

    @property
    def peer(self) -> str:
        """The client as ``host:port`` (``[host]:port`` for IPv6)."""
        return format_peer(self.address)

    @property
    def queued_bytes(self) -> int:
        """Bytes sent by the handler that the client's socket has not taken yet."""
        return self._queued

    def bind(self, **context: Any) -> None:
        """Add context (a chat name, say) to every later log line of this client."""
        self._log = self.log.bind(**context)

    def receive(self) -> bytes:
        """The next bytes to arrive (or those already received and not yet read), waiting
        for them; ``b""`` once the client has gone or the connection is closing.  (No
        generator in between: an idle client's parked greenlet stays as small as it can.)"""
        buffer = self._buffer
        if buffer is not None and len(buffer):
            return buffer.take_all()
        return self._receive()

    def chunks(self) -> Iterator[bytes]:
        """Bytes as they arrive, until the client goes or the connection is closed."""
        while data := self.receive():
            yield data

    def lines(self) -> Iterator[str]:
        """Lines as text (invalid UTF-8 shows as U+FFFD), without their line ending.

        However TCP splits or merges them, each line comes out whole.  A line longer than
        ``max_line_bytes`` is answered with an error and skipped; the connection goes on.
        Flood control (``flood_rate``) applies here.  Telnet commands never reach the
        handler: options are answered, and telnet's Ctrl-C (``IAC IP``, ``IAC BRK``) ends
        the lines and closes the connection as a quit.  At end of stream a last line
        without a newline still counts.
        """
        context = self._context
        settings = context.settings
        limit = settings.max_line_bytes
        bucket = None
        if settings.flood_rate > 0:
            bucket = TokenBucket(settings.flood_rate, settings.flood_burst, self._hub.loop.now())
        log_lines = context.log_debug
        stats = context.stats
        buffer = self._receive_buffer()
        take_line, feed_and_take_line = buffer.take_line, buffer.feed_and_take_line
        receive = self._receive
        # Reads happen right here, not in a nested generator: a parked greenlet's saved
        # stack is as shallow as it can be.
        telnet: TelnetFilter | None = None
        interrupted = False
        messages_are_lines = self._messages_are_lines
        while True:
            # (Nothing held, as after a chunk of exactly one line: no call to find so.)
            frame = take_line(limit) if buffer._data else None
            if frame is None:
                if interrupted:  # the lines before telnet's Ctrl-C were served; now quit
                    self.close(CloseReason.QUIT)
                    return
                chunk = receive()
                if not chunk:
                    break
                if messages_are_lines and not chunk.endswith(b"\n"):
                    chunk += b"\n"
                # Telnet commands start with byte 255, which valid UTF-8 never holds.  (An
                # int is searched for with memchr; ``b"\xff" in`` first fails as an int.)
                # A message a user typed (WebSocket) is never telnet, whatever its bytes.
                if (telnet is not None or 255 in chunk) and not messages_are_lines:
                    telnet = telnet or TelnetFilter()
                    filtered = telnet.feed(chunk)
                    chunk, interrupted = filtered.data, filtered.interrupted
                    if filtered.reply:
                        self.send(filtered.reply)
                    if telnet.idle:
                        telnet = None
                frame = feed_and_take_line(chunk, limit)
                if frame is None:
                    continue
            if self.state is not _OPEN:
                return
            # An over-long line is a line for flood control too: otherwise it would be a
            # way around it (each one answered, and each one logged).
            if bucket is not None:
                self._obey_flood_limit(bucket)
                if self.state is not _OPEN:
                    return
            if frame is LINE_TOO_LONG:
                self._warn_line_too_long(limit)
                self.send(f"Error: line too long (max {limit} bytes)\n")
                continue
            try:  # UTF-8's own fast path, which a named codec and error handler skip
                line = frame.decode()  # type: ignore[union-attr]
            except UnicodeDecodeError:  # invalid UTF-8 shows as U+FFFD: decode()
                line = frame.decode("utf-8", "replace")  # type: ignore[union-attr]
            stats.lines_in += 1
            if log_lines:
                self.log.debug("line", text=loggable(line))
            yield line
        rest = buffer.take_last_line()
        if rest and self.close_reason == CloseReason.CLIENT_CLOSED:
            yield decode(rest)

    def read_line(self, limit: int | None = None, timeout: float | None = None) -> bytes:
        """One line, without its ending (``\\n`` or ``\\r\\n``).

        Raises :class:`LimitExceeded` for a line over ``limit`` bytes (default
        ``max_line_bytes``; the line is skipped), :class:`IncompleteRead` at end of
        stream, ``TimeoutError`` after ``timeout`` seconds."""
        most = self._context.settings.max_line_bytes if limit is None else limit
        buffer = self._buffer
        if buffer is not None:  # the common case in a pipelined protocol: here already
            found = buffer.take_line(most)
            if found.__class__ is bytes:
                return found
            if found is not None:
                raise LimitExceeded(most)
        return self._read(_take_line, None, most, timeout)

    def read_exactly(self, count: int, timeout: float | None = None) -> bytes:
        """Exactly ``count`` bytes.  Raises :class:`IncompleteRead` at end of stream,
        ``TimeoutError`` after ``timeout`` seconds."""
        if count < 0:
            raise ValueError(f"read_exactly() needs a count >= 0, got {count}")
        buffer = self._buffer
        if buffer is not None:
            found = buffer.take_exactly(count)
            if found is not None:
                return found
        return self._read(_take_exactly, count, count, timeout)

    def read_until(
        self, separator: bytes, limit: int | None = None, timeout: float | None = None
    ) -> bytes:
        """Bytes up to ``separator``, which is consumed and not returned.

        Raises :class:`LimitExceeded` when more than ``limit`` bytes (default
        ``max_line_bytes``) come first, :class:`IncompleteRead` at end of stream,
        ``TimeoutError`` after ``timeout`` seconds."""
        if not separator:
            raise ValueError("read_until() needs a non-empty separator")
        most = self._context.settings.max_line_bytes if limit is None else limit
        return self._read(_take_until, separator, most, timeout)

    def send(self, data: str | bytes) -> None:
        """Queue ``data`` for the client; never blocks.  Ignored once the connection closes."""
        if self.state is not _OPEN:
            return
        if data.__class__ is str:
            text = data
            try:  # UTF-8's own fast path, which a named codec and error handler skip
                data = text.encode()
            except UnicodeEncodeError:
                data = text.encode("utf-8", "surrogateescape")
        elif data.__class__ is not bytes:
            if isinstance(data, str):
                data = data.encode("utf-8", "surrogateescape")
            elif isinstance(data, bytearray | memoryview):
                data = bytes(data)
            else:
                raise TypeError(f"send() takes str or bytes, not {type(data).__name__}")
        # _queue_output(data), inlined: this is every reply's path.
        self._outbox.append(data)
        self._queued += len(data)
        self.messages_out += 1
        if self._queued > self._max_output:
            self._over_output_limit()
        elif not self._flush_scheduled and self._writer is None:
            self._flush_scheduled = True
            self._context.flush_queue.add(self)

    def _queue_output(self, data: bytes) -> None:
        """Into the outbox as it is (already encoded for the transport), written at the
        end of this loop turn; over max_output_bytes, the client is a slow consumer."""
        if self.state is _CLOSED:
            return
        self._outbox.append(data)
        self._queued += len(data)
        self.messages_out += 1
        if self._queued > self._max_output:
            self._over_output_limit()
            return
        if not self._flush_scheduled and self._writer is None:
            self._flush_scheduled = True
            self._context.flush_queue.add(self)

    def close(self, reason: str = CloseReason.SERVER_CLOSED) -> None:
        """Stop reading; what was sent before still goes out, then the connection closes."""
        if self.state is not _OPEN:
            return
        self.state = _CLOSING
        self.close_reason = reason
        compat.cancel_wait(self._read_watcher, _WAKEUP)

    def abort(self, reason: str, **details: Any) -> None:
        """Close at once, dropping queued output (a broken or hopelessly slow client)."""
        if self.close_reason is None or self.state is _OPEN:
            self.close_reason = reason
        if reason == CloseReason.SLOW_CONSUMER:
            self.log.warning("slow_consumer", **details)
        if self.state is _OPEN:
            self.state = _CLOSING
        self._outbox.clear()
        self._queued = 0
        self._close_socket()  # wakes any greenlet parked on this socket with an error

    @property
    def reading_paused(self) -> bool:
        """True while the client owes itself so much output that it is not read (then it
        is not idle: write_timeout watches it instead)."""
        return self._queued > self._context.read_pause_bytes

    def writer_stalled(self, now: float, write_timeout: float) -> bool:
        """True when output has waited ``write_timeout`` seconds without any progress."""
        return (
            write_timeout > 0
            and self._writer is not None
            and now - self.last_write_progress >= write_timeout
        )

    # -- reading --------------------------------------------------------------------------

    def _receive_buffer(self) -> ReceiveBuffer:
        if self._buffer is None:
            self._buffer = ReceiveBuffer()
        return self._buffer

    def _read(self, take: _Take, arg: Any, limit: int, timeout: float | None) -> bytes:
        # The taker is a module function and the buffer is made by the first bytes: a
        # handler parked in an exact read holds nothing that one parked in receive() does not.
        buffer = self._buffer
        found = None if buffer is None else take(buffer, arg, limit)
        if found is None:  # not here yet: wait for it (the only case that switches)
            if timeout is None:
                found = self._read_more_until(take, arg, limit)
            else:
                deadline = gevent.Timeout(timeout)
                deadline.start()
                try:
                    found = self._read_more_until(take, arg, limit)
                except gevent.Timeout as exc:
                    if exc is not deadline:
                        raise
                    # Inside, gevent.Timeout: TimeoutError is an OSError, which the read
                    # loop would take for a lost connection.
                    raise TimeoutError(f"read timed out after {timeout} s") from None
                finally:
                    deadline.close()
        if found is LINE_TOO_LONG:
            raise LimitExceeded(limit)
        return found  # type: ignore[return-value]

    def _read_more_until(self, take: _Take, arg: Any, limit: int) -> Frame:
        while True:
            chunk = self._receive()
            if not chunk:
                raise IncompleteRead(self._buffer.take_all() if self._buffer else b"")
            if self._messages_are_lines and not chunk.endswith(b"\n"):
                chunk += b"\n"
            buffer = self._receive_buffer()
            buffer.feed(chunk)
            found = take(buffer, arg, limit)
            if found is not None:
                return found

    def _wait(self, watcher: Any) -> None:
        """Park this greenlet until ``watcher`` fires (or someone throws into it)."""
        watcher.start(getcurrent().switch)
        try:
            self._hub.switch()
        finally:
            watcher.stop()

    def _receive(self) -> bytes:
        if self._first_input:
            data, self._first_input = self._first_input, b""
            self.bytes_in += len(data)
            return data
        raw = self._raw
        while self.state is _OPEN:
            if self._queued > self._context.read_pause_bytes:
                self._wait_for_output_to_drain()
                continue
            if self._drained_input:
                # The last read emptied the socket: wait for readiness rather than try a
                # read that would fail (a system call and an exception per message saved).
                self._drained_input = False
                watcher = self._read_watcher
                watcher.start(getcurrent().switch)  # self._wait(watcher), inlined
                try:
                    self._hub.switch()
                except _Wakeup:
                    continue
                except OSError as exc:
                    self._lost(exc)
                    return b""
                finally:
                    watcher.stop()
            try:
                if raw is not None:
                    size = raw.recv_into(_receive_buffer)
                    data = _receive_view[:size].tobytes()
                    self._drained_input = 0 < size < RECV_SIZE
                else:
                    data = self._socket.recv(RECV_SIZE)
            except BlockingIOError:
                self._drained_input = True  # wait at the top of the loop, outside this
                # handler: an exception kept alive while the client idles costs memory
                continue
            except _Wakeup:
                continue
            except OSError as exc:
                self._lost(exc)
                return b""
            if not data:
                if self.close_reason is None:
                    self.close_reason = CloseReason.CLIENT_CLOSED
                return b""
            self.last_read = self._hub.loop.now()
            self.bytes_in += len(data)
            return data
        return b""

    def _obey_flood_limit(self, bucket: TokenBucket) -> None:
        """Past the client's line rate, stop reading it for a while: its TCP window fills,
        so the flooder alone is slowed and nothing is dropped (IRC servers' "fake lag")."""
        delay = bucket.take(self._hub.loop.now())
        if delay <= 0:
            return
        self._context.stats.flood_throttles += 1
        if not self._flood_logged:
            self._flood_logged = True
            self.log.warning("flood_throttled", flood_rate=bucket.rate, flood_burst=bucket.burst)
        # Reading is paused, yet the client is not idle: it is waiting on us.
        self.last_read = self._hub.loop.now() + delay
        gevent.sleep(delay)

    def _warn_line_too_long(self, limit: int) -> None:
        """Logged at most once per client every WARN_EVERY_SECONDS, with how many were not:
        a client can send over-long lines at will, and must not be able to fill the disk."""
        now = self._hub.loop.now()
        if self._too_long is None:
            self._too_long = [now - WARN_EVERY_SECONDS, 0]
        last, unlogged = self._too_long
        if now - last < WARN_EVERY_SECONDS:
            self._too_long[1] = unlogged + 1
            return
        self._too_long[:] = [now, 0]
        self.log.info("line_too_long", max_line_bytes=limit, not_logged_since_last=unlogged)

    def _wait_for_output_to_drain(self) -> None:
        """Backpressure: while this client owes itself much output, read no more from it."""
        if self._writer is None:
            gevent.sleep(0)  # let this turn's flush run; it starts a writer if one is needed
            return
        self._writer.join()

    def _lost(self, exc: OSError) -> None:
        if self.close_reason is None:
            if isinstance(exc, ConnectionError):
                self.close_reason = CloseReason.CLIENT_RESET
            else:
                self.close_reason = CloseReason.ERROR
                self.log.info("socket_error", error=str(exc))
        if self.state is _OPEN:
            self.state = _CLOSING

    # -- writing --------------------------------------------------------------------------

    def _over_output_limit(self) -> None:
        self._context.stats.slow_consumers += 1
        self.abort(CloseReason.SLOW_CONSUMER, queued_bytes=self._queued)

    def flush_without_waiting(self) -> None:
        """Write what the socket takes now; start a writer for the rest (loop callback)."""
        self._flush_scheduled = False
        if self._writer is not None or not self._outbox or self.state is _CLOSED:
            return
        if self._raw is not None and self._write_available():
            return
        self._writer = gevent.spawn(self._drain)

    def _write_available(self) -> bool:
        """Send the outbox without blocking; True if it all went."""
        outbox = self._outbox
        data = outbox[0] if len(outbox) == 1 else b"".join(outbox)
        outbox.clear()
        if self.state is _CLOSED:
            self._queued = 0
            return True
        try:
            sent = self._raw.send(data)  # type: ignore[union-attr]
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._lost(exc)
            self._queued = 0
            return True
        self._queued -= sent
        self.bytes_out += sent
        if sent == len(data):
            return True
        outbox.append(data[sent:])
        return False

    def _drain(self) -> None:
        """Writer: wait until the socket takes the whole outbox (a greenlet of its own,
        or the handler's own greenlet once the handler has returned)."""
        try:
            self.last_write_progress = self._hub.loop.now()
            while self._outbox and self.state is not _CLOSED:
                if self._raw is not None:
                    if self._write_watcher is None:
                        self._write_watcher = compat.io_watcher(self._raw.fileno(), compat.WRITE)
                    self._wait(self._write_watcher)
                    before = self._queued
                    if self._write_available() or self._queued < before:
                        self.last_write_progress = self._hub.loop.now()
                else:
                    self._send_tls()
        except OSError as exc:
            self._lost(exc)
            self._outbox.clear()
            self._queued = 0
        finally:
            self._writer = None

    def _send_tls(self) -> None:
        data = b"".join(self._outbox)
        self._outbox.clear()
        view = memoryview(data)
        while view:
            sent = self._socket.send(view[:SEND_CHUNK])
            view = view[sent:]
            self._queued -= sent
            self.bytes_out += sent
            self.last_write_progress = self._hub.loop.now()

    # -- closing --------------------------------------------------------------------------

    def _close_socket(self) -> None:
        if self.state is _CLOSED:
            return
        self.state = _CLOSED
        if self._raw is None:
            compat.send_tls_close_notify(self._socket)
            self._socket.close()  # gevent's SSL socket wakes its own waiters
            return
        # Wake whoever waits on this socket with an error, then close the descriptor.
        watchers = [self._read_watcher, self._write_watcher]
        compat.close_after_waking(watchers, _CLOSED_ERROR, self._raw.close)

    def finish(self) -> None:
        """After the handler: deliver what is queued, close gracefully, release the socket."""
        if self.state is _OPEN:
            self.state = _CLOSING
        if self.close_reason is None:
            self.close_reason = CloseReason.SERVER_CLOSED
        try:
            if self._writer is not None:
                self._writer.join()
            elif self._outbox and self.state is not _CLOSED:
                self._writer = getcurrent()
                self._drain()
            if self.state is not _CLOSED:
                self._linger()
        finally:
            self._close_socket()

    def _linger(self) -> None:
        if self._raw is None:
            compat.send_tls_close_notify(self._socket)
        try:
            self._socket.shutdown(socket.SHUT_WR)
        except OSError:
            return
        if self._raw is not None:
            # Most clients have closed their side already (that is often why the handler
            # ended): then there is nothing to wait for, and no timer is needed.
            try:
                if not self._raw.recv_into(_receive_buffer):
                    return
            except BlockingIOError:
                pass
            except OSError:
                return
        with gevent.Timeout(LINGER_SECONDS, False):
            while self._receive_discarding():
                pass

    def _receive_discarding(self) -> bool:
        """Read and drop what the client still sends; False at its end of stream."""
        try:
            if self._raw is None:
                return bool(self._socket.recv(RECV_SIZE))
            while True:
                try:
                    return bool(self._raw.recv_into(_receive_buffer))
                except BlockingIOError:
                    pass
                self._wait(self._read_watcher)
        except (OSError, _Wakeup):  # a late wake-up from close() ends the wait just the same
            return False
