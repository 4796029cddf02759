"""Browsers as clients: the web port's HTTP, and WebSocket clients as gserver connections.

The protocol is ``protocol/websocket.py``'s (h11 and wsproto, sans-IO); this is the thin
adapter around it.  Until a WebSocket is accepted, a web client is served here, in blocking
style on its own greenlet: the page, /healthz, 404s.  Once accepted, it becomes a
:class:`WebSocketConnection`: the same ``Connection`` as a TCP client's, served by the same
mode handler with the same limits and logs; only what crosses its socket differs.

- In: each message is one read (``receive()``: its bytes as one chunk); line reads see each
  message as a line even without a line ending.
- Out: each write becomes frames (``encode_output``), written through the same outbox; a
  broadcast is framed once for all its WebSocket recipients (``send_to_all``).
- Pings every ``ws_ping_interval``; only messages count as input for ``idle_timeout``.
"""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import gevent
import gevent.socket

from gserver import compat
from gserver.connection import (
    RECV_SIZE,
    CloseReason,
    Connection,
    ConnectionContext,
    ConnectionState,
    format_peer,
)
from gserver.listener import Acceptor, StartError, open_listener
from gserver.protocol.websocket import (
    CONTENT_SECURITY_POLICY,
    Event,
    HttpResponded,
    MessageReceived,
    SessionState,
    TrustedProxies,
    WebEndpoint,
    WebSession,
    WebSocketAccepted,
    WebSocketClosed,
    WebSocketRefused,
    client_address,
    encode_output,
    frame_message,
)
from gserver.settings import Settings, web_origin_list
from gserver.web import assets

if TYPE_CHECKING:
    from gserver.server import Server
    from gserver.serving import Clients

# An HTTP request line, as the first bytes of a client on a shared port (as sslh tells
# protocols apart).  Anything else is input to the mode.
_HTTP_REQUEST = re.compile(rb"^(GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH|TRACE|CONNECT) \S")
SERVER_FULL_CLOSE = 1013  # "try again later"
# The web port's answer when max_clients is reached: refused at accept, before a byte of
# the request is read, yet as HTTP, so that a browser shows the sentence (and its WebSocket
# fails its handshake with a 503) instead of an invalid response.  On a shared port the
# refusal is the TCP text, since nobody knows yet what the client speaks; over TLS there is
# nothing to say before the handshake, and the connection just closes.
SERVER_FULL_TEXT = b"Server full, try again later\n"
SERVER_FULL_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-security-policy: " + CONTENT_SECURITY_POLICY.encode() + b"\r\n"
    b"x-content-type-options: nosniff\r\n"
    b"cache-control: no-store\r\n"
    b"retry-after: 5\r\n"
    b"content-length: " + str(len(SERVER_FULL_TEXT)).encode() + b"\r\n"
    b"connection: close\r\n\r\n" + SERVER_FULL_TEXT
)
_WEBSOCKET, _CLOSED_SESSION = SessionState.WEBSOCKET, SessionState.CLOSED
_OPEN_STATE, _CLOSING_STATE = ConnectionState.OPEN, ConnectionState.CLOSING
_CLOSED_STATE = ConnectionState.CLOSED


class _Closed(Exception):
    """The web client went, or its request timed out, before a WebSocket was accepted."""


class WebSocketConnection(Connection):
    """A WebSocket client, as a handler sees it: a Connection like any other."""

    __slots__ = ("_messages", "_session")
    transport = "websocket"
    _messages_are_lines = True
    encode_output = staticmethod(encode_output)

    def __init__(
        self,
        context: ConnectionContext,
        sock: Any,
        address: Any,
        session: WebSession,
        events: Iterable[Event] = (),
    ) -> None:
        super().__init__(context, sock, address)
        self._session = session
        # Messages not read yet, the oldest last (pop() takes it): a list, since an empty
        # deque costs 600 bytes for each idle client.
        self._messages: list[bytes] = []
        self._take(events)

    def send(self, data: str | bytes) -> None:
        """Queue ``data`` as WebSocket messages: a line each, a prompt as it is."""
        if self.state is not _OPEN_STATE:
            return
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        elif not isinstance(data, bytes):
            if not isinstance(data, bytearray | memoryview):
                raise TypeError(f"send() takes str or bytes, not {type(data).__name__}")
            data = bytes(data)
        self._queue_output(encode_output(data))

    def send_encoded(self, frames: bytes) -> None:
        """Queue frames already made by :func:`encode_output` (a broadcast, framed once)."""
        if self.state is _OPEN_STATE:
            self._queue_output(frames)

    def ping_or_close(self) -> None:
        """Close a client that did not answer the last ping; ping the others."""
        if self.state is not _OPEN_STATE or self._session.state is not _WEBSOCKET:
            return
        if not self._session.ping_answered and not self._input_waiting():
            self.log.info("ping_timeout")
            self.close(CloseReason.PING_TIMEOUT)
            return
        self._queue_output(self._session.ping())

    def _input_waiting(self) -> bool:
        """Whether the client sent bytes that nobody has read yet: its pong may be among
        them, unseen while the handler does something other than reading (or while reading
        is paused for its output to drain).  A peek: nothing is taken from the socket."""
        sock = self._socket
        try:
            if self._raw is None and sock.pending():  # TLS: decrypted, not yet read
                return True
            peek = compat.underlying_socket(sock).recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except OSError:  # nothing there (BlockingIOError), or the connection is broken
            return False
        return bool(peek)  # b"": the client's end of stream, which is no answer

    def _take(self, events: Iterable[Event]) -> None:
        """What the session made of the bytes received: messages, answers, its close."""
        reply = self._session.data_to_send()
        if reply:  # pongs and close replies go out in order with everything else
            self._queue_output(reply)
        arrived: list[bytes] = []
        for event in events:
            if isinstance(event, MessageReceived):
                arrived.append(event.data)
            elif isinstance(event, WebSocketClosed):
                if self.close_reason is None:
                    if event.by_peer:
                        self.close_reason = CloseReason.CLIENT_CLOSED
                    else:
                        self.close_reason = f"websocket {event.code}: {event.reason}"
                        self.log.info("websocket_error", code=event.code, reason=event.reason)
                if self.state is _OPEN_STATE:
                    self.state = _CLOSING_STATE
        if arrived:  # newer than any waiting: in front, newest first
            arrived.reverse()
            self._messages[:0] = arrived

    def _receive(self) -> bytes:
        messages = self._messages
        session = self._session
        while not messages:
            if self.state is not _OPEN_STATE or session.state is not _WEBSOCKET:
                return b""
            # Pings, pongs and fragments are not input: only a whole message resets the
            # idle clock.
            idle_since = self.last_read
            data = Connection._receive(self)
            self.last_read = idle_since
            if not data:
                if self.state is not _OPEN_STATE:
                    # Closed on our side (quit, idle timeout, shutdown, ping timeout) or
                    # lost: not the client's end of stream.  finish() sends the close frame.
                    return b""
                self.state = _CLOSING_STATE
            session.receive_data(data)
            self._take(session.events())
            if not data and not messages:
                if self.close_reason is None:
                    self.close_reason = CloseReason.CLIENT_CLOSED
                return b""
        self.last_read = self._hub.loop.now()
        return messages.pop()

    def finish(self) -> None:
        if self._session.state is _WEBSOCKET and self.state is not _CLOSED_STATE:
            # The last text went first; now the close frame (1001: the server goes away).
            code = 1001 if self.close_reason == CloseReason.SHUTDOWN else 1000
            self._queue_output(self._session.close(code))
        super().finish()


def looks_like_http(first: bytes) -> bool:
    return _HTTP_REQUEST.match(first) is not None


class WebFront:
    """The web port: HTTP and WebSocket clients of one server, on a listener of their own
    (a companion of the server) or on the server's own (its front, told apart by the
    first bytes)."""

    def __init__(self, settings: Settings, log: Any, own_listener: bool) -> None:
        self.settings = settings
        self.log = log
        self.own_listener = own_listener
        self.trusted = TrustedProxies(settings.forwarded_allow_ips)
        self.origins = web_origin_list(settings.web_origins)
        self._endpoint: WebEndpoint | None = None
        self._acceptor: Acceptor | None = None
        self._clients: dict[WebSocketConnection, None] = {}
        self.address: tuple[str, int] | None = None

    # -- as a companion: its own listener, pings ------------------------------------------

    def start(self, server: Server) -> None:
        s = self.settings
        self._endpoint = WebEndpoint(
            assets=assets(),
            health=server.health,
            allowed_origins=self.origins,
            max_message_bytes=4 * s.max_line_bytes,
        )
        if self.own_listener:
            assert s.web_port is not None
            try:
                listener = open_listener(s.host, s.web_port, s.backlog)
            except StartError as exc:
                raise StartError(f"web_port: {exc}") from None
            full = None if server.tls_context is not None else SERVER_FULL_RESPONSE
            clients = server.clients
            self._acceptor = Acceptor(
                listener,
                lambda sock, address: clients.admit_unchecked(sock, address, full),
                lambda sock, address: clients.serve_accepted(sock, address, self),
                self.log,
            )
            self._acceptor.start()
            self.address = listener.getsockname()[:2]
            host, port = self.address
            self.log.info("web_listening", host=host, port=port, tls=server.tls_context is not None)
        if s.ws_ping_interval > 0:
            server.spawn_background(self._ping_forever, s.ws_ping_interval)

    def stop(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()

    def _ping_forever(self, interval: float) -> None:
        while True:
            gevent.sleep(interval)
            for conn in list(self._clients):
                conn.ping_or_close()

    # -- as a front: serving one web client --------------------------------------------------

    def claims(self, first: bytes) -> bool:
        return looks_like_http(first)

    def serve(self, clients: Clients, sock: Any, address: Any, first: bytes) -> None:
        """HTTP until a WebSocket is accepted (then a client of the mode), or the end."""
        assert self._endpoint is not None
        session = self._endpoint.session()
        tls = compat.is_ssl_socket(sock)
        if not tls:  # gevent's cooperative socket for the HTTP part, in blocking style
            sock = gevent.socket.socket(sock.family, sock.type, 0, fileno=sock.detach())
        try:
            accepted, events = self._serve_http(session, sock, address, first)
        except _Closed:
            with contextlib.suppress(OSError):
                sock.close()
            return
        peer_ip = format_peer(address).rpartition(":")[0].strip("[]")
        real_ip = client_address(peer_ip, accepted.headers, self.trusted)
        # The request (its bytes, its headers) is not kept for as long as the client stays.
        del accepted, first
        if real_ip != peer_ip:
            address = (real_ip, 0)
        if not clients.admit_address(address):
            text = frame_message(SERVER_FULL_TEXT.rstrip(b"\n"), text=True)
            with contextlib.suppress(OSError), gevent.Timeout(1, False):
                sock.sendall(text + session.close(SERVER_FULL_CLOSE))
                # Read the answer to the close (until the client's end), so that it does
                # not arrive at a closed socket, whose reset could destroy the text.
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(RECV_SIZE):
                    pass
            sock.close()
            return
        if not tls:  # back to the plain socket and the fast path
            family, kind = sock.family, sock.type
            sock = compat.RawSocket(family, kind, 0, sock.detach())
            sock.setblocking(False)
        conn = WebSocketConnection(clients.context, sock, address, session, events)
        del events
        self._clients[conn] = None
        try:
            clients.serve_connection(conn)
        finally:
            del self._clients[conn]
            clients.release_address(address)

    def _serve_http(
        self, session: WebSession, sock: Any, address: Any, first: bytes
    ) -> tuple[WebSocketAccepted, list[Event]]:
        """Answer requests until the upgrade; each request (and the wait for it) is bounded
        by handshake_timeout.  Returns the acceptance and the events that came with it."""
        timeout = self.settings.handshake_timeout or None
        data = first
        while True:
            with gevent.Timeout(timeout, False):
                if not data:
                    data = sock.recv(RECV_SIZE)
                    if not data:
                        raise _Closed
                session.receive_data(data)
                data = b""
                reply = session.data_to_send()
                events = list(session.events())
                for index, event in enumerate(events):
                    if isinstance(event, WebSocketAccepted):
                        if reply:
                            sock.sendall(reply)  # the 101 first, then the mode speaks
                        return event, events[index + 1 :]
                    self._log_http(event, address)
                if reply:
                    sock.sendall(reply)
                if session.state is _CLOSED_SESSION:
                    raise _Closed
                continue
            raise _Closed  # the timeout: a request that took too long, or an idle keep-alive

    def _log_http(self, event: Event, address: Any) -> None:
        if isinstance(event, WebSocketRefused):
            self.log.info(
                "ws_refused",
                client=format_peer(address),
                status=event.status,
                reason=event.reason,
                origin=event.origin,
            )
        elif isinstance(event, HttpResponded):
            self.log.debug(
                "http",
                client=format_peer(address),
                method=event.method,
                target=event.target,
                status=event.status,
            )
