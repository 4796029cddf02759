"""Browsers on the web port: HTTP/1.1 and WebSocket (RFC 6455), sans-IO.

After h11, whose connection object this wraps together with wsproto's: nothing here owns
a socket, a greenlet or a clock.  A :class:`WebSession` is one client connection on the
web port, from its first HTTP request, through an optional upgrade to a WebSocket, to the
close.  The adapter that drives it (one per socket) does this::

    session = endpoint.session()                  # endpoint: WebEndpoint, built once
    while session.state is not SessionState.CLOSED:
        data = recv()                             # b"" at end of stream
        session.receive_data(data)
        queue(session.data_to_send())             # first: the 101 before any message
        for event in session.events():
            ...                                   # see the event classes below

- In ``HTTP`` state the session answers ``GET /`` (the chat page and its two static
  files), ``GET /healthz`` and everything else by itself; the adapter only writes the
  bytes.  :class:`WebSocketRefused` asks it to log ``ws_refused``.
- :class:`WebSocketAccepted` moves the session to ``WEBSOCKET``: from then on the client is
  a gserver client.  :func:`client_address` gives its address from the event's headers.
  Each :class:`MessageReceived` is its input (:func:`message_lines` for line modes, the
  bytes as one chunk for byte modes); what the mode sends goes out through
  :func:`encode_output`, which is pure, so a broadcast is framed once for all recipients.
- Bytes from :meth:`WebSession.data_to_send` (pongs, close replies, HTTP responses) and
  from :meth:`~WebSession.ping` and :meth:`~WebSession.close` are whole frames: queue them
  in the same outbox as the mode's output, never around it, or frames would interleave.
- :class:`WebSocketClosed` comes exactly once per WebSocket: no more messages will come.
  In ``CLOSING`` the session waits for the client's close frame (bound it with a timeout);
  in ``CLOSED`` write what is queued and close the socket.

Nothing here is hand-written HTTP or WebSocket protocol except :func:`frame_message`:
the header of an unmasked server frame, built so that one broadcast is framed once (see
there).  permessage-deflate is deliberately never negotiated, since compressed frames
would differ per recipient.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final
from urllib.parse import urlsplit

import h11
from wsproto import ConnectionType
from wsproto.connection import Connection as WsConnection
from wsproto.connection import ConnectionState as WsState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    TextMessage,
)
from wsproto.events import Request as WsRequest
from wsproto.handshake import H11Handshake
from wsproto.utilities import LocalProtocolError as WsLocalProtocolError
from wsproto.utilities import RemoteProtocolError as WsRemoteProtocolError

#: The hard cap on one incoming message, with the default ``max_line_bytes`` of 16384:
#: four lines' worth, so that a message of a few long lines still passes, while a client
#: cannot make the server hold more than this for it (wsproto itself has no cap).
DEFAULT_MAX_MESSAGE_BYTES: Final = 4 * 16384

#: Request line and headers together (h11's own default).
DEFAULT_MAX_REQUEST_BYTES: Final = 16 * 1024

WEBSOCKET_PATH: Final = "/ws"
HEALTH_PATH: Final = "/healthz"

#: Only the page's own origin: its script and style files, and its WebSocket (CSP Level 3
#: makes 'self' match ws: and wss: on the same host and port, which Chromium, Firefox and
#: Safari 15.4+ follow).  No inline script or style, no frames, no plugins, no forms.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'; object-src 'none'"
)

# On every response: no Server header (h11 adds none), nothing to sniff or frame.
_COMMON_HEADERS: Final[tuple[tuple[bytes, bytes], ...]] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)
_TEXT_PLAIN: Final = (b"content-type", b"text/plain; charset=utf-8")
# The page may change with an upgrade: always revalidate (cheap, thanks to the ETag).
_REVALIDATE: Final = (b"cache-control", b"no-cache")
_NO_STORE: Final = (b"cache-control", b"no-store")

_DEFAULT_PORTS: Final = {"http": 80, "https": 443, "ws": 80, "wss": 443}


class SessionState(enum.Enum):
    """Where a :class:`WebSession` stands."""

    HTTP = "http"  # reading requests and answering them (keep-alive: possibly several)
    WEBSOCKET = "websocket"  # upgraded and open: messages both ways
    CLOSING = "closing"  # our close frame is out; waiting for the client's
    CLOSED = "closed"  # nothing more to read: write data_to_send(), close the socket


# Events ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpResponded:
    """An HTTP request was answered (not /ws): method and target are "" when malformed."""

    method: str
    target: str
    status: int


@dataclass(frozen=True, slots=True)
class WebSocketRefused:
    """A request for /ws was answered with ``status`` instead of an upgrade: log ``ws_refused``."""

    status: int
    reason: str
    origin: str | None


@dataclass(frozen=True, slots=True)
class WebSocketAccepted:
    """The upgrade is done: the session is a WebSocket, a client of the mode from now on."""

    target: str
    origin: str | None
    # The request's headers, names lowercased, for client_address() and logs.
    headers: tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """One whole message: its bytes (UTF-8 when it was text) and whether it was text."""

    data: bytes
    is_text: bool


@dataclass(frozen=True, slots=True)
class WebSocketClosed:
    """No more messages will come (emitted once per WebSocket, whoever closed)."""

    code: int
    reason: str
    # True when the client closed (a close frame, or 1006 for a stream that just ended);
    # False when the server did: close(), a protocol error (1002, 1007), too big (1009).
    by_peer: bool


Event = HttpResponded | WebSocketRefused | WebSocketAccepted | MessageReceived | WebSocketClosed


# Origins -----------------------------------------------------------------------------


def _parse_origin(value: str, *, lenient: bool = False) -> tuple[str, str, int | None] | None:
    """``scheme://host[:port]`` as (scheme, host, port with defaults filled), or None."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    path_ok = parts.path == "" or (lenient and parts.path == "/")
    if not parts.scheme or not parts.hostname or parts.username is not None:
        return None
    if not path_ok or parts.query or parts.fragment:
        return None
    scheme = parts.scheme.lower()
    return scheme, parts.hostname, port if port is not None else _DEFAULT_PORTS.get(scheme)


def _parse_host(value: str, default_port: int | None) -> tuple[str, int | None] | None:
    """A Host header as (host, port with the default filled), or None if malformed."""
    try:
        parts = urlsplit("//" + value.strip())
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or parts.path or parts.username is not None:
        return None
    return parts.hostname, port if port is not None else default_port


class OriginPolicy:
    """Which pages may open a WebSocket here (against cross-site WebSocket hijacking).

    Accepted: a handshake without ``Origin`` (not a browser, or not cross-site); one whose
    origin names the host and port the client asked for in ``Host``; one whose origin is in
    ``allowed``; any, when ``allowed`` has ``"*"``.  Host and port are compared without
    regard to case, with default ports filled in by the origin's scheme (an ``https`` page
    reaches ``wss`` on 443, an ``http`` page ``ws`` on 80), so that ``https://chat.example``
    matches ``Host: chat.example`` also behind a proxy that ends TLS.  A DNS-rebinding page
    passes this check, as it passes every same-host check: its host really is the one asked.
    """

    __slots__ = ("allow_any", "allowed")

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self.allow_any = False
        found: set[tuple[str, str, int | None]] = set()
        for entry in allowed:
            if entry.strip() == "*":
                self.allow_any = True
                continue
            origin = _parse_origin(entry, lenient=True)
            if origin is None:
                raise ValueError(f"not an origin (scheme://host[:port]): {entry!r}")
            found.add(origin)
        self.allowed: frozenset[tuple[str, str, int | None]] = frozenset(found)

    def allows(self, origins: list[str], host: str | None) -> bool:
        """Whether a handshake with these ``Origin`` header values and this Host may pass."""
        if self.allow_any or not origins:
            return True
        if len(origins) > 1:
            return False  # ambiguous: which page is it?
        origin = _parse_origin(origins[0])
        if origin is None:
            return False  # "null" (sandboxed frames, file:) and garbage
        if origin in self.allowed:
            return True
        scheme, origin_host, origin_port = origin
        if host is None or scheme not in ("http", "https"):
            return False
        return _parse_host(host, _DEFAULT_PORTS[scheme]) == (origin_host, origin_port)


# Forwarded addresses -----------------------------------------------------------------

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _ip(text: str) -> _IP | None:
    """An address as written in a peer name or an X-Forwarded-For entry, or None."""
    text = text.strip()
    if text.startswith("["):  # "[2001:db8::1]:443", as some proxies write it
        text = text[1 : text.find("]")] if "]" in text else text
    elif text.count(":") == 1:  # "203.0.113.7:5678"
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d
    return address


class TrustedProxies:
    """``forwarded_allow_ips``: the peers whose ``X-Forwarded-For`` is believed.

    Addresses and networks (``10.0.0.0/8``), as a list or one comma-separated string, or
    ``"*"`` for any peer (only where nothing but the proxy can reach the port).  A
    malformed entry raises ValueError, for the settings' one-line error.
    """

    __slots__ = ("addresses", "any", "networks")

    def __init__(self, spec: str | Iterable[str] = "127.0.0.1") -> None:
        entries = spec.split(",") if isinstance(spec, str) else list(spec)
        self.any = False
        addresses: set[_IP] = set()
        networks: list[_Network] = []
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            if entry == "*":
                self.any = True
            elif "/" in entry:
                try:
                    networks.append(ipaddress.ip_network(entry, strict=False))
                except ValueError:
                    raise ValueError(f"not an IP address or network: {entry!r}") from None
            else:
                try:
                    address = ipaddress.ip_address(entry)
                except ValueError:
                    raise ValueError(f"not an IP address or network: {entry!r}") from None
                if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                    address = address.ipv4_mapped
                addresses.add(address)
        self.addresses = frozenset(addresses)
        self.networks = tuple(networks)

    def __contains__(self, host: object) -> bool:
        if self.any:
            return True
        if not isinstance(host, str):
            return False
        address = _ip(host)
        if address is None:
            return False
        return address in self.addresses or any(address in net for net in self.networks)


def client_address(
    peer_ip: str,
    headers: Iterable[tuple[bytes, bytes]],
    forwarded_allow_ips: TrustedProxies | str | Iterable[str],
) -> str:
    """The client's address: ``peer_ip``, or from ``X-Forwarded-For`` when the peer is trusted.

    ``forwarded_allow_ips`` is best a :class:`TrustedProxies` built once at start.

    As uvicorn's ProxyHeadersMiddleware: only a trusted peer's header counts; each proxy
    appends the address it saw, so the list is read from the right and the first address
    that is not itself a trusted proxy is the client (the left-most when all are trusted,
    and always with ``"*"``).  Several X-Forwarded-For headers count as one list, in order.
    An entry that is not an IP address is not believed: the peer's address stands.
    """
    trusted = (
        forwarded_allow_ips
        if isinstance(forwarded_allow_ips, TrustedProxies)
        else TrustedProxies(forwarded_allow_ips)
    )
    if peer_ip not in trusted:
        return peer_ip
    values = [
        value.decode("latin-1") for name, value in headers if name.lower() == b"x-forwarded-for"
    ]
    hosts = [host.strip() for host in ",".join(values).split(",") if host.strip()]
    if not hosts:
        return peer_ip
    chosen = hosts[0]
    if not trusted.any:
        for host in reversed(hosts):
            if host not in trusted:
                chosen = host
                break
    address = _ip(chosen)
    return str(address) if address is not None else peer_ip


# Messages in and out -----------------------------------------------------------------


def message_lines(data: bytes) -> list[bytes]:
    """A message's lines, as a TCP client's would be after typing it and Enter.

    Split at ``\\n`` and ``\\r\\n``; a message need not end with either, and one that does
    has no empty line after it.  An empty message is one empty line (Enter alone).
    """
    if data.endswith(b"\n"):
        data = data[:-1]
    lines = data.split(b"\n")
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def message_as_stream(data: bytes) -> bytes:
    """The bytes a TCP client would have sent for this message: it, ended by ``\\n``.

    Fed to the same :class:`~gserver.protocol.framing.LineFramer` as TCP input, it yields
    :func:`message_lines`, and over-long lines are reported exactly as on TCP.
    """
    return data if data.endswith(b"\n") else data + b"\n"


_OP_TEXT: Final = 0x1
_OP_BINARY: Final = 0x2
_FIN: Final = 0x80
_HEADER_16: Final = struct.Struct("!BBH")
_HEADER_64: Final = struct.Struct("!BBQ")


def frame_message(payload: bytes, *, text: bool) -> bytes:
    """One whole message as an unmasked server frame (RFC 6455 section 5.2).

    Server frames carry no mask, and no extension is ever negotiated, so these bytes are
    the same for every recipient: frame once, queue to many.  (wsproto frames through a
    per-connection object only, hence these few lines.)
    """
    first = _FIN | (_OP_TEXT if text else _OP_BINARY)
    length = len(payload)
    if length < 126:
        return bytes((first, length)) + payload
    if length < 65536:
        return _HEADER_16.pack(first, 126, length) + payload
    return _HEADER_64.pack(first, 127, length) + payload


def _is_utf8(data: bytes) -> bool:
    if data.isascii():
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def encode_output(data: bytes) -> bytes:
    """What a TCP client would receive in one write, as WebSocket frames.

    Each complete line is one text message without its ``\\n`` or ``\\r\\n``; text after
    the last line ending (a prompt such as ``Enter your username: ``) is one text message
    as it is.  A line, or that text, that is not valid UTF-8 goes whole as one binary
    message.  Pure: call it once for a broadcast and queue the bytes to every recipient.
    Messages follow the writes, so a line written in two pieces arrives as two messages;
    gserver writes whole lines, and a prompt alone.
    """
    if not data:
        return b""
    all_text = _is_utf8(data)  # then every piece is: \n never falls inside a character
    pieces = data.split(b"\n")
    rest = pieces.pop()
    frames: list[bytes] = []
    for line in pieces:
        if line.endswith(b"\r"):
            line = line[:-1]
        frames.append(frame_message(line, text=all_text or _is_utf8(line)))
    if rest:
        frames.append(frame_message(rest, text=all_text or _is_utf8(rest)))
    return frames[0] if len(frames) == 1 else b"".join(frames)


# What the web port serves ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Asset:
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    etag: bytes


def _path_of(target: bytes) -> str:
    """The path of a request target (origin form, or absolute form as proxies send)."""
    text = target.decode("ascii", "replace")
    if text.startswith("/"):
        return text.split("?", 1)[0]
    if "://" in text:
        return urlsplit(text).path or "/"
    return text  # "*" (OPTIONS) and the like: no path of ours


class WebEndpoint:
    """What the web port serves, built once per server and shared by all its sessions.

    ``assets`` maps a URL path to (body, content type): the page and its two static files
    (:func:`gserver.web.assets`).  ``health`` is asked at each ``GET /healthz`` and answers
    (healthy, why), as the metrics port's: 200 or 503 with ``why`` as the body.
    ``allowed_origins`` are the ``web_origins`` (see :class:`OriginPolicy`; a malformed one
    raises ValueError).  ``max_message_bytes`` is the hard cap on one incoming message:
    above it the WebSocket is closed with 1009.
    """

    __slots__ = ("_assets", "health", "max_message_bytes", "max_request_bytes", "origins")

    def __init__(
        self,
        *,
        assets: Mapping[str, tuple[bytes, str]],
        health: Callable[[], tuple[bool, str]],
        allowed_origins: Iterable[str] = (),
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> None:
        if max_message_bytes < 1:
            raise ValueError("max_message_bytes must be at least 1")
        self.health = health
        self.origins = OriginPolicy(allowed_origins)
        self.max_message_bytes = max_message_bytes
        self.max_request_bytes = max_request_bytes
        self._assets: dict[str, _Asset] = {}
        for path, (body, content_type) in assets.items():
            etag = b'"' + hashlib.sha256(body).hexdigest()[:20].encode() + b'"'
            headers = ((b"content-type", content_type.encode()), _REVALIDATE, (b"etag", etag))
            self._assets[path] = _Asset(body, headers, etag)

    def session(self) -> WebSession:
        """A session for a new connection."""
        return WebSession(self)


class WebSession:
    """One connection on the web port: HTTP requests, then perhaps a WebSocket.

    See the module's docstring for what the adapter does with it.  Errors are the
    client's, and answered on the wire: a malformed request gets its 4xx and the session
    closes; a WebSocket protocol error gets the close code RFC 6455 names.  Nothing here
    raises for what a client sends.
    """

    __slots__ = (
        "_close_reported",
        "_endpoint",
        "_events",
        "_h11",
        "_handshake",
        "_message_is_text",
        "_message_parts",
        "_message_size",
        "_out",
        "_ping_count",
        "_ping_payload",
        "_state",
        "_upgrade",
        "_ws",
    )

    def __init__(self, endpoint: WebEndpoint) -> None:
        self._endpoint = endpoint
        self._state = SessionState.HTTP
        # A list, not a deque: an empty deque costs 600 bytes, for each idle client.
        self._events: list[Event] = []
        self._out = bytearray()
        self._h11: h11.Connection | None = h11.Connection(
            h11.SERVER, max_incomplete_event_size=endpoint.max_request_bytes
        )
        # Between a valid upgrade request and its end (when h11 pauses, trailing data known).
        self._handshake: H11Handshake | None = None
        self._upgrade: WebSocketAccepted | None = None
        self._ws: WsConnection | None = None
        self._message_parts: list[bytes] = []
        self._message_size = 0
        self._message_is_text = True
        self._ping_count = 0
        self._ping_payload: bytes | None = None  # the unanswered ping's, if any
        self._close_reported = False

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def ping_answered(self) -> bool:
        """False while the last :meth:`ping` has had no pong."""
        return self._ping_payload is None

    def receive_data(self, data: bytes) -> None:
        """Bytes received from the client; ``b""`` at end of stream."""
        if self._state is SessionState.CLOSED:
            return
        if self._ws is not None:
            self._ws.receive_data(data or None)
            self._process_websocket()
        elif self._h11 is not None:
            self._h11.receive_data(data)
            self._process_http()

    def events(self) -> Iterator[Event]:
        """The events that the data received so far gave, each once, in order."""
        while self._events:
            events, self._events = self._events, []
            taken = 0
            try:
                for event in events:
                    taken += 1
                    yield event
            finally:  # a caller that stops early finds the rest next time
                if taken < len(events):
                    self._events[:0] = events[taken:]

    def data_to_send(self) -> bytes:
        """Bytes to write to the client (responses, pongs, close replies), each once."""
        data = bytes(self._out)
        self._out.clear()
        return data

    def ping(self) -> bytes:
        """A ping frame to write (b"" unless open); :attr:`ping_answered` then says if it was."""
        if self._state is not SessionState.WEBSOCKET or self._ws is None:
            return b""
        self._ping_count += 1
        self._ping_payload = self._ping_count.to_bytes(8, "big")
        return self._ws.send(Ping(payload=self._ping_payload))

    def close(self, code: int = 1000, reason: str = "") -> bytes:
        """The close frame to write after the last text: 1000 normally, 1001 at shutdown.

        The session then waits in ``CLOSING`` for the client's close frame.  Before an
        upgrade there is nothing to say: the session is CLOSED and the socket may just close.
        """
        if self._state is SessionState.HTTP:
            self._state = SessionState.CLOSED
            self._h11 = None
            return b""
        if self._state is not SessionState.WEBSOCKET or self._ws is None:
            return b""
        data = self._ws.send(CloseConnection(code=code, reason=reason or None))
        self._state = SessionState.CLOSING
        self._report_close(code, reason, by_peer=False)
        return data

    # HTTP --------------------------------------------------------------------------

    def _process_http(self) -> None:
        conn = self._h11
        while conn is not None and self._state is SessionState.HTTP:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._respond_error(exc.error_status_hint, method="", target="")
                return
            if event is h11.NEED_DATA:
                return
            if event is h11.PAUSED:
                if self._upgrade is not None:
                    self._accept_websocket(conn)
                    return
                if not self._next_cycle(conn):
                    return
                continue
            if isinstance(event, h11.Request):
                self._handle_request(conn, event)
            elif isinstance(event, h11.ConnectionClosed):
                self._state = SessionState.CLOSED
                self._h11 = None
                return
            # Data (a body nobody asked for) is dropped; EndOfMessage needs nothing.
            self._next_cycle(conn)

    def _next_cycle(self, conn: h11.Connection) -> bool:
        """Ready for the next request (keep-alive)?  Closes the session when not to be."""
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            return True
        if conn.our_state in (h11.MUST_CLOSE, h11.CLOSED, h11.ERROR):
            self._state = SessionState.CLOSED
            self._h11 = None
        return False

    def _handle_request(self, conn: h11.Connection, request: h11.Request) -> None:
        method = request.method.decode("ascii", "replace")
        target = request.target.decode("ascii", "replace")
        path = _path_of(request.target)
        head = method == "HEAD"
        if path == WEBSOCKET_PATH:
            if method != "GET":
                self._refuse(405, "method not allowed", None, ((b"allow", b"GET"),))
            else:
                self._start_upgrade(request, target)
            return
        if path == HEALTH_PATH or path in self._endpoint._assets:
            if method not in ("GET", "HEAD"):
                headers = (_TEXT_PLAIN, (b"allow", b"GET, HEAD"))
                self._respond_error(405, method, target, headers)
                return
            if path == HEALTH_PATH:
                healthy, why = self._endpoint.health()
                status = 200 if healthy else 503
                body = f"{why}\n".encode()
                self._respond(status, (_TEXT_PLAIN, _NO_STORE), body, head=head)
            else:
                status = self._respond_asset(request, self._endpoint._assets[path], head)
            self._events.append(HttpResponded(method, target, status))
            return
        self._respond_error(404, method, target)

    def _respond_asset(self, request: h11.Request, asset: _Asset, head: bool) -> int:
        for name, value in request.headers:
            if name == b"if-none-match" and asset.etag in (v.strip() for v in value.split(b",")):
                self._respond(304, asset.headers[1:], b"", head=True)
                return 304
        self._respond(200, asset.headers, asset.body, head=head)
        return 200

    def _respond(
        self,
        status: int,
        headers: Iterable[tuple[bytes, bytes]],
        body: bytes,
        *,
        head: bool = False,
        close: bool = False,
    ) -> None:
        conn = self._h11
        if conn is None or conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        all_headers = [*_COMMON_HEADERS, *headers]
        if status != 304:
            all_headers.append((b"content-length", str(len(body)).encode()))
        if close:
            all_headers.append((b"connection", b"close"))
        reason = HTTPStatus(status).phrase.encode()  # h11 leaves it empty otherwise
        self._out += conn.send(h11.Response(status_code=status, headers=all_headers, reason=reason))
        if body and not head:
            self._out += conn.send(h11.Data(data=body))
        self._out += conn.send(h11.EndOfMessage())

    def _respond_error(
        self,
        status: int,
        method: str,
        target: str,
        headers: Iterable[tuple[bytes, bytes]] = (_TEXT_PLAIN,),
    ) -> None:
        """A 4xx, after which the connection closes: a client that errs gets no second go."""
        body = f"{HTTPStatus(status).phrase.lower()}\n".encode()
        self._respond(status, headers, body, close=True)
        self._events.append(HttpResponded(method, target, status))
        self._state = SessionState.CLOSED
        self._h11 = None

    # Upgrade -----------------------------------------------------------------------

    def _start_upgrade(self, request: h11.Request, target: str) -> None:
        headers = tuple((name, value) for name, value in request.headers)
        origins = [value.decode("latin-1") for name, value in headers if name == b"origin"]
        origin = origins[0] if origins else None
        handshake = H11Handshake(ConnectionType.SERVER)
        try:
            # wsproto checks the upgrade headers (version 13, key, Connection, Upgrade).
            handshake.initiate_upgrade_connection(list(headers), request.target)
            ws_request = next(handshake.events())
        except WsRemoteProtocolError as exc:
            hint = exc.event_hint
            status = hint.status_code if isinstance(hint, RejectConnection) else 400
            extra = tuple(hint.headers) if isinstance(hint, RejectConnection) else ()
            self._refuse(status, str(exc), origin, extra)
            return
        except (
            WsLocalProtocolError,
            h11.ProtocolError,
            UnicodeError,
            ValueError,
            StopIteration,
        ) as exc:
            self._refuse(400, f"bad upgrade request: {exc}", origin)
            return
        if not isinstance(ws_request, WsRequest):
            self._refuse(400, "bad upgrade request", origin)
            return
        hosts = [value.decode("latin-1") for name, value in headers if name == b"host"]
        if not self._endpoint.origins.allows(origins, hosts[0] if len(hosts) == 1 else None):
            self._refuse(403, "origin not allowed", origin)
            return
        # Accepted; the 101 goes out when h11 has seen the request's end (and pauses).
        self._handshake = handshake
        self._upgrade = WebSocketAccepted(target, origin, headers)

    def _refuse(
        self,
        status: int,
        reason: str,
        origin: str | None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        self._respond(status, (_TEXT_PLAIN, *headers), f"{reason}\n".encode(), close=True)
        self._events.append(WebSocketRefused(status, reason, origin))
        self._state = SessionState.CLOSED
        self._h11 = None

    def _accept_websocket(self, conn: h11.Connection) -> None:
        handshake, accepted = self._handshake, self._upgrade
        assert handshake is not None and accepted is not None
        self._out += handshake.send(AcceptConnection())
        ws = handshake.connection
        assert ws is not None
        self._ws = ws
        self._handshake = self._upgrade = self._h11 = None
        self._state = SessionState.WEBSOCKET
        self._events.append(accepted)
        # Bytes that came with the request (a first message, even a close) are h11's
        # trailing data: without this they would wait unseen for the next read.
        trailing, ended = conn.trailing_data
        if trailing:
            ws.receive_data(trailing)
        if ended:
            ws.receive_data(None)
        self._process_websocket()

    # WebSocket ---------------------------------------------------------------------

    def _process_websocket(self) -> None:
        ws = self._ws
        if ws is None:
            return
        for event in ws.events():
            if isinstance(event, TextMessage | BytesMessage):
                self._on_message_data(ws, event)
            elif isinstance(event, Ping):
                if ws.state is WsState.OPEN:  # wsproto answers nothing by itself
                    self._out += ws.send(event.response())
            elif isinstance(event, Pong):
                if event.payload == self._ping_payload:
                    self._ping_payload = None
            elif isinstance(event, CloseConnection):
                self._on_close(ws, event)
            if self._state is SessionState.CLOSED:
                break

    def _on_message_data(self, ws: WsConnection, event: TextMessage | BytesMessage) -> None:
        if self._state is not SessionState.WEBSOCKET:
            return  # closing: what the client still sends is dropped
        if isinstance(event, TextMessage):
            chunk = event.data.encode()
            self._message_is_text = True
        else:
            chunk = bytes(event.data)
            self._message_is_text = False
        # wsproto hands frames over as they arrive and caps nothing: count them here, so
        # that a huge frame is refused while it streams in, not once it is whole.
        self._message_size += len(chunk)
        if self._message_size > self._endpoint.max_message_bytes:
            self._message_parts.clear()
            self._message_size = 0
            reason = f"message over {self._endpoint.max_message_bytes} bytes"
            self._out += ws.send(CloseConnection(code=1009, reason=reason))
            self._state = SessionState.CLOSING
            self._report_close(1009, reason, by_peer=False)
            return
        if not event.message_finished:
            self._message_parts.append(chunk)
            return
        if self._message_parts:
            self._message_parts.append(chunk)
            chunk = b"".join(self._message_parts)
            self._message_parts.clear()
        self._message_size = 0
        self._events.append(MessageReceived(chunk, self._message_is_text))

    def _on_close(self, ws: WsConnection, event: CloseConnection) -> None:
        if ws.state is WsState.REMOTE_CLOSING:
            # The client's close frame: answer it (the only state that needs an answer).
            self._out += ws.send(event.response())
            self._state = SessionState.CLOSED
            self._report_close(event.code, event.reason or "", by_peer=True)
        elif ws.state is WsState.CLOSED:
            # The answer to our close frame, or the end of the stream without one (1006).
            self._state = SessionState.CLOSED
            self._report_close(event.code, event.reason or "", by_peer=True)
        else:
            # A protocol error wsproto found (the state did not move): it can parse no
            # further, so say why and stop reading.
            if ws.state is WsState.OPEN:
                self._out += ws.send(CloseConnection(code=event.code, reason=event.reason))
            self._state = SessionState.CLOSED
            self._report_close(event.code, event.reason or "", by_peer=False)

    def _report_close(self, code: int, reason: str, *, by_peer: bool) -> None:
        if not self._close_reported:
            self._close_reported = True
            self._message_parts.clear()
            self._events.append(WebSocketClosed(int(code), reason, by_peer))
