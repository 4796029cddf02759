"""The web port's HTTP and WebSocket, byte by byte: no sockets.

The peer is h11's and wsproto's client side, an implementation independent of the
session's server-side use of them: it produces the bytes a browser would send and parses
what the session answers.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection as FrameConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from gserver import web
from gserver.protocol.framing import LineFramer
from gserver.protocol.websocket import (
    CONTENT_SECURITY_POLICY,
    DEFAULT_MAX_MESSAGE_BYTES,
    HttpResponded,
    MessageReceived,
    OriginPolicy,
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
    message_as_stream,
    message_lines,
)

HOST = "localhost:8081"


def make_endpoint(
    health: tuple[bool, str] = (True, "ok"),
    origins: tuple[str, ...] = (),
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> WebEndpoint:
    return WebEndpoint(
        assets=web.assets(),
        health=lambda: health,
        allowed_origins=origins,
        max_message_bytes=max_message_bytes,
    )


def state_of(session: WebSession) -> SessionState:
    """The state now (a call, so that a type checker does not hold on to an older one)."""
    return session.state


@pytest.fixture
def session() -> WebSession:
    return make_endpoint().session()


# HTTP ---------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[bytes, bytes]
    body: bytes
    reason: bytes


def request(
    session: WebSession,
    target: str = "/",
    method: str = "GET",
    headers: tuple[tuple[str, str], ...] = (),
) -> Reply:
    """One request from an h11 client, and the reply it parses from the session's bytes."""
    client = h11.Connection(h11.CLIENT)
    sent = client.send(
        h11.Request(method=method, target=target, headers=[("Host", HOST), *headers])
    )
    sent += client.send(h11.EndOfMessage())
    session.receive_data(sent)
    client.receive_data(session.data_to_send())
    response: h11.Response | None = None
    body = b""
    while True:
        event = client.next_event()
        if isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            break
        else:
            pytest.fail(f"incomplete response: {event!r}")
    assert response is not None
    return Reply(response.status_code, dict(response.headers), body, response.reason)


def test_the_page_is_served_at_root_with_a_strict_policy_and_no_server_name(
    session: WebSession,
) -> None:
    reply = request(session, "/")
    assert reply.status == 200
    assert reply.reason == b"OK"
    assert reply.body == web.asset("/").body
    assert reply.headers[b"content-type"] == b"text/html; charset=utf-8"
    policy = reply.headers[b"content-security-policy"].decode()
    assert policy == CONTENT_SECURITY_POLICY
    assert "default-src 'self'" in policy
    assert "connect-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert reply.headers[b"x-content-type-options"] == b"nosniff"
    assert reply.headers[b"cache-control"] == b"no-cache"
    assert b"server" not in reply.headers
    assert list(session.events()) == [HttpResponded("GET", "/", 200)]


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("/chat.js", b"text/javascript; charset=utf-8"), ("/chat.css", b"text/css; charset=utf-8")],
)
def test_the_script_and_the_style_are_served_with_their_types(
    session: WebSession, path: str, content_type: bytes
) -> None:
    reply = request(session, path)
    assert reply.status == 200
    assert reply.headers[b"content-type"] == content_type
    assert reply.body == web.asset(path).body


def test_one_connection_serves_several_requests(session: WebSession) -> None:
    for path in ("/", "/chat.css", "/chat.js", "/healthz"):
        assert request(session, path).status == 200
        assert session.state is SessionState.HTTP


def test_pipelined_requests_are_answered_in_order(session: WebSession) -> None:
    raw = b"".join(
        f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode() for path in ("/chat.css", "/nope")
    )
    session.receive_data(raw)
    out = session.data_to_send()
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"HTTP/1.1 404 Not Found\r\n" in out
    assert [e.status for e in session.events() if isinstance(e, HttpResponded)] == [200, 404]


def test_head_gets_the_headers_without_the_body(session: WebSession) -> None:
    reply = request(session, "/", method="HEAD")
    assert reply.status == 200
    assert reply.body == b""
    assert reply.headers[b"content-length"] == str(len(web.asset("/").body)).encode()


def test_a_cached_page_is_revalidated_with_its_etag(session: WebSession) -> None:
    etag = request(session, "/").headers[b"etag"].decode()
    reply = request(session, "/", headers=(("If-None-Match", etag),))
    assert reply.status == 304
    assert reply.body == b""
    assert request(session, "/", headers=(("If-None-Match", '"stale"'),)).status == 200


def test_healthz_answers_what_the_caller_says() -> None:
    healthy = request(make_endpoint(health=(True, "ok")).session(), "/healthz")
    assert (healthy.status, healthy.body) == (200, b"ok\n")
    sick = request(make_endpoint(health=(False, "backplane down")).session(), "/healthz")
    assert (sick.status, sick.body) == (503, b"backplane down\n")
    assert sick.headers[b"cache-control"] == b"no-store"


def test_health_is_asked_at_each_request() -> None:
    answers = iter([(True, "ok"), (False, "shutting down")])
    endpoint = WebEndpoint(assets=web.assets(), health=lambda: next(answers))
    session = endpoint.session()
    assert request(session, "/healthz").status == 200
    assert request(session, "/healthz").status == 503


def test_a_query_string_does_not_change_the_route(session: WebSession) -> None:
    assert request(session, "/?utm_source=x").body == web.asset("/").body


@pytest.mark.parametrize("path", ["/index.html", "/../etc/passwd", "/chat.js/", "/static/", "/WS"])
def test_any_other_path_is_404_and_the_connection_closes(session: WebSession, path: str) -> None:
    reply = request(session, path)
    assert reply.status == 404
    assert reply.headers[b"connection"] == b"close"
    assert b"server" not in reply.headers
    assert session.state is SessionState.CLOSED
    assert list(session.events()) == [HttpResponded("GET", path, 404)]


@pytest.mark.parametrize(
    ("path", "method", "allow"),
    [
        ("/", "POST", b"GET, HEAD"),
        ("/healthz", "DELETE", b"GET, HEAD"),
        ("/chat.js", "PUT", b"GET, HEAD"),
    ],
)
def test_another_method_on_a_path_we_serve_is_405_with_allow(
    session: WebSession, path: str, method: str, allow: bytes
) -> None:
    reply = request(session, path, method=method)
    assert reply.status == 405
    assert reply.headers[b"allow"] == allow
    assert session.state is SessionState.CLOSED


@pytest.mark.parametrize(
    "raw",
    [
        b"hello\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # TLS on the plain port
    ],
)
def test_a_malformed_request_gets_400_and_the_connection_closes(
    session: WebSession, raw: bytes
) -> None:
    session.receive_data(raw)
    out = session.data_to_send()
    assert out.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"connection: close\r\n" in out
    assert session.state is SessionState.CLOSED
    assert list(session.events()) == [HttpResponded("", "", 400)]
    session.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")  # nothing more is read
    assert session.data_to_send() == b""


def test_an_http_1_0_client_gets_its_answer_and_the_close(session: WebSession) -> None:
    session.receive_data(b"GET /healthz HTTP/1.0\r\n\r\n")
    out = session.data_to_send()
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert out.endswith(b"\r\n\r\nok\n")
    assert session.state is SessionState.CLOSED


def test_a_client_that_says_close_is_closed_after_its_answer(session: WebSession) -> None:
    assert request(session, "/", headers=(("Connection", "close"),)).status == 200
    assert session.state is SessionState.CLOSED


def test_headers_over_the_limit_get_431() -> None:
    session = WebEndpoint(
        assets=web.assets(), health=lambda: (True, "ok"), max_request_bytes=1024
    ).session()
    session.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * 2000)
    assert session.data_to_send().startswith(b"HTTP/1.1 431 ")
    assert session.state is SessionState.CLOSED


def test_end_of_stream_before_any_request_closes_quietly(session: WebSession) -> None:
    session.receive_data(b"")
    assert session.state is SessionState.CLOSED
    assert session.data_to_send() == b""
    assert list(session.events()) == []


def test_a_request_line_in_pieces_is_answered_when_whole(session: WebSession) -> None:
    raw = f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    for byte in raw[:-1]:
        session.receive_data(bytes([byte]))
        assert session.data_to_send() == b""
    session.receive_data(raw[-1:])
    assert session.data_to_send().startswith(b"HTTP/1.1 200 OK\r\n")


# The upgrade ---------------------------------------------------------------------------


def upgrade(
    session: WebSession,
    origin: str | None = None,
    host: str = HOST,
    extra: bytes = b"",
) -> tuple[WSConnection, list[Event]]:
    """A wsproto client's handshake (plus ``extra`` bytes sent with it)."""
    client = WSConnection(ConnectionType.CLIENT)
    headers = [(b"origin", origin.encode())] if origin is not None else []
    session.receive_data(
        client.send(Request(host=host, target="/ws", extra_headers=headers)) + extra
    )
    client.receive_data(session.data_to_send())
    return client, list(client.events())


def open_websocket(session: WebSession) -> WSConnection:
    client, events = upgrade(session)
    assert isinstance(events[0], AcceptConnection)
    accepted = list(session.events())
    assert isinstance(accepted[0], WebSocketAccepted)
    return client


def frames_from(client: WSConnection, session: WebSession) -> list[Event]:
    client.receive_data(session.data_to_send())
    return list(client.events())


def test_a_websocket_handshake_without_origin_is_accepted(session: WebSession) -> None:
    _, events = upgrade(session)
    assert [type(e) for e in events] == [AcceptConnection]
    assert session.state is SessionState.WEBSOCKET
    [accepted] = session.events()
    assert isinstance(accepted, WebSocketAccepted)
    assert accepted.target == "/ws"
    assert accepted.origin is None
    assert (b"host", HOST.encode()) in accepted.headers


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        ("http://localhost:8081", "localhost:8081"),
        ("https://chat.example", "chat.example"),  # behind a proxy that ends TLS
        ("https://chat.example:443", "chat.example"),
        ("http://chat.example", "chat.example:80"),
        ("http://Chat.Example:8081", "chat.EXAMPLE:8081"),
        ("http://[::1]:8081", "[::1]:8081"),
        ("http://127.0.0.1:8081", "127.0.0.1:8081"),
    ],
)
def test_a_page_of_the_same_host_and_port_may_connect(
    session: WebSession, origin: str, host: str
) -> None:
    _, events = upgrade(session, origin=origin, host=host)
    assert isinstance(events[0], AcceptConnection)
    [accepted] = session.events()
    assert isinstance(accepted, WebSocketAccepted)
    assert accepted.origin == origin


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        ("https://evil.example", "chat.example"),
        ("http://chat.example.evil.example", "chat.example"),
        ("http://localhost:9999", "localhost:8081"),  # another port, another origin
        ("https://chat.example", "chat.example:80"),  # https's default port is 443
        ("http://chat.example", "chat.example:443"),
        ("null", "chat.example"),  # sandboxed frames and file: pages
        ("chat.example", "chat.example"),
        ("http://chat.example/path", "chat.example"),
        ("http://user@chat.example", "chat.example"),
        ("ftp://chat.example", "chat.example"),
    ],
)
def test_a_page_of_another_origin_gets_403(session: WebSession, origin: str, host: str) -> None:
    _, events = upgrade(session, origin=origin, host=host)
    assert isinstance(events[0], RejectConnection)
    assert events[0].status_code == 403
    assert session.state is SessionState.CLOSED
    assert list(session.events()) == [WebSocketRefused(403, "origin not allowed", origin)]


def test_two_origin_headers_are_refused(session: WebSession) -> None:
    raw = (
        b"GET /ws HTTP/1.1\r\nHost: a.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Origin: http://a.example\r\nOrigin: https://evil.example\r\n\r\n"
    )
    session.receive_data(raw)
    assert session.data_to_send().startswith(b"HTTP/1.1 403 Forbidden\r\n")


def test_listed_origins_may_connect_and_star_lets_anyone() -> None:
    listed = make_endpoint(origins=("https://app.example", "http://localhost:3000/"))
    for origin in ("https://app.example", "https://APP.example:443", "http://localhost:3000"):
        _, events = upgrade(listed.session(), origin=origin, host="chat.example")
        assert isinstance(events[0], AcceptConnection), origin
    _, events = upgrade(listed.session(), origin="http://app.example", host="chat.example")
    assert isinstance(events[0], RejectConnection)
    anyone = make_endpoint(origins=("*",))
    _, events = upgrade(anyone.session(), origin="https://evil.example", host="chat.example")
    assert isinstance(events[0], AcceptConnection)


@pytest.mark.parametrize("entry", ["app.example", "https://", "https://a.example/x", "https://a:b"])
def test_a_malformed_allowed_origin_is_an_error_at_start(entry: str) -> None:
    with pytest.raises(ValueError, match="not an origin"):
        OriginPolicy([entry])


def raw_upgrade(**changes: str | None) -> bytes:
    headers = {
        "Host": HOST,
        "Upgrade": "websocket",
        "Connection": "keep-alive, Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    for name, value in changes.items():
        name = name.replace("_", "-")
        if value is None:
            del headers[name]
        else:
            headers[name] = value
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"GET /ws HTTP/1.1\r\n{lines}\r\n".encode()


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (raw_upgrade(Sec_WebSocket_Key=None), 400),
        (raw_upgrade(Sec_WebSocket_Version="8"), 426),
        (raw_upgrade(Upgrade=None, Connection="keep-alive"), 400),  # a plain GET of /ws
        (raw_upgrade(Upgrade="h2c"), 400),
        (b"POST /ws HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", 405),
    ],
)
def test_a_bad_upgrade_request_is_refused(session: WebSession, raw: bytes, status: int) -> None:
    session.receive_data(raw)
    out = session.data_to_send()
    assert out.startswith(f"HTTP/1.1 {status} ".encode())
    assert session.state is SessionState.CLOSED
    [refused] = session.events()
    assert isinstance(refused, WebSocketRefused)
    assert refused.status == status
    if status == 426:
        assert b"Sec-WebSocket-Version: 13\r\n" in out


def test_bytes_sent_with_the_upgrade_request_are_not_lost(session: WebSession) -> None:
    # A client may send its first frames right behind the request: they end up in h11's
    # trailing data, and must reach the WebSocket at once, not at the next read.
    framer = FrameConnection(ConnectionType.CLIENT)
    extra = framer.send(TextMessage(data="first")) + framer.send(Ping(payload=b"p"))
    _, events = upgrade(session, extra=extra + framer.send(TextMessage(data="second")))
    assert isinstance(events[0], AcceptConnection)
    assert [type(e) for e in events[1:]] == [Pong]  # the pong came with the 101
    assert [e for e in session.events() if isinstance(e, MessageReceived)] == [
        MessageReceived(b"first", True),
        MessageReceived(b"second", True),
    ]


def test_a_close_sent_with_the_upgrade_request_is_answered(session: WebSession) -> None:
    framer = FrameConnection(ConnectionType.CLIENT)
    _, events = upgrade(session, extra=framer.send(CloseConnection(code=1000)))
    assert [type(e) for e in events] == [AcceptConnection, CloseConnection]
    assert session.state is SessionState.CLOSED
    assert list(session.events())[-1] == WebSocketClosed(1000, "", by_peer=True)


def test_a_request_before_the_upgrade_on_the_same_connection(session: WebSession) -> None:
    assert request(session, "/").status == 200
    list(session.events())
    client = open_websocket(session)
    session.receive_data(client.send(TextMessage(data="hi")))
    assert list(session.events()) == [MessageReceived(b"hi", True)]


# Messages in ----------------------------------------------------------------------------


def test_a_text_message_is_its_utf8_bytes_marked_as_text(session: WebSession) -> None:
    client = open_websocket(session)
    session.receive_data(client.send(TextMessage(data="héllo\nwörld")))
    assert list(session.events()) == [MessageReceived("héllo\nwörld".encode(), True)]


def test_a_binary_message_is_its_bytes_as_they_are(session: WebSession) -> None:
    client = open_websocket(session)
    session.receive_data(client.send(BytesMessage(data=b"\x00\xff\n")))
    assert list(session.events()) == [MessageReceived(b"\x00\xff\n", False)]


def test_a_fragmented_message_comes_out_whole(session: WebSession) -> None:
    client = open_websocket(session)
    framer = FrameConnection(ConnectionType.CLIENT)
    data = "x€y"  # fragments of text need not end on a character: the bytes do not
    raw = framer.send(TextMessage(data="ab", message_finished=False))
    # A ping between the fragments of a message is allowed and answered.
    raw += framer.send(Ping(payload=b"mid"))
    raw += framer.send(TextMessage(data=data, message_finished=True))
    session.receive_data(raw)
    assert list(session.events()) == [MessageReceived(("ab" + data).encode(), True)]
    assert [type(e) for e in frames_from(client, session)] == [Pong]


def test_a_message_of_exactly_the_cap_passes() -> None:
    session = make_endpoint(max_message_bytes=100).session()
    client = open_websocket(session)
    session.receive_data(client.send(TextMessage(data="é" * 50)))  # 100 bytes, 50 characters
    assert list(session.events()) == [MessageReceived("é".encode() * 50, True)]


def test_a_message_over_the_cap_closes_with_1009() -> None:
    session = make_endpoint(max_message_bytes=100).session()
    client = open_websocket(session)
    session.receive_data(client.send(BytesMessage(data=b"x" * 101)))
    [closed] = session.events()
    assert closed == WebSocketClosed(1009, "message over 100 bytes", by_peer=False)
    assert session.state is SessionState.CLOSING
    [close] = frames_from(client, session)
    assert isinstance(close, CloseConnection)
    assert close.code == 1009
    # What the client still sends is dropped; its close answer ends the session.
    late = FrameConnection(ConnectionType.CLIENT).send(TextMessage(data="late"))
    session.receive_data(late)
    session.receive_data(client.send(close.response()))
    assert list(session.events()) == []
    assert state_of(session) is SessionState.CLOSED


def test_fragments_add_up_to_the_cap() -> None:
    session = make_endpoint(max_message_bytes=100).session()
    open_websocket(session)
    framer = FrameConnection(ConnectionType.CLIENT)
    for _ in range(2):
        session.receive_data(framer.send(BytesMessage(data=b"x" * 50, message_finished=False)))
    assert list(session.events()) == []
    session.receive_data(framer.send(BytesMessage(data=b"x", message_finished=True)))
    assert [e.code for e in session.events() if isinstance(e, WebSocketClosed)] == [1009]


def test_a_huge_frame_is_refused_while_it_streams_in() -> None:
    session = make_endpoint(max_message_bytes=1000).session()
    open_websocket(session)
    # A masked binary frame that claims 10 MB: refused after the first 1001 bytes.
    header = bytes([0x82, 0x80 | 127]) + (10_000_000).to_bytes(8, "big") + b"\x00\x00\x00\x00"
    session.receive_data(header + b"x" * 600)
    assert list(session.events()) == []
    session.receive_data(b"x" * 600)
    assert [e.code for e in session.events() if isinstance(e, WebSocketClosed)] == [1009]


def test_invalid_utf8_in_a_text_message_closes_with_1007(session: WebSession) -> None:
    client = open_websocket(session)
    header = bytes([0x81, 0x80 | 2]) + b"\x00\x00\x00\x00"
    session.receive_data(header + b"\xff\xfe")
    [closed] = session.events()
    assert isinstance(closed, WebSocketClosed)
    assert (closed.code, closed.by_peer) == (1007, False)
    assert session.state is SessionState.CLOSED
    [close] = frames_from(client, session)
    assert isinstance(close, CloseConnection)
    assert close.code == 1007


def test_an_unmasked_client_frame_closes_with_1002(session: WebSession) -> None:
    open_websocket(session)
    session.receive_data(bytes([0x81, 2]) + b"hi")
    [closed] = session.events()
    assert isinstance(closed, WebSocketClosed)
    assert closed.code == 1002
    assert session.state is SessionState.CLOSED


@pytest.mark.parametrize(
    ("message", "lines"),
    [
        (b"hello", [b"hello"]),
        (b"hello\n", [b"hello"]),
        (b"one\r\ntwo\nthree", [b"one", b"two", b"three"]),
        (b"", [b""]),
        (b"\n", [b""]),
        (b"a\n\n", [b"a", b""]),
        (b"a\rb", [b"a\rb"]),
    ],
)
def test_a_message_is_cut_into_the_lines_a_tcp_client_would_send(
    message: bytes, lines: list[bytes]
) -> None:
    assert message_lines(message) == lines
    framer = LineFramer()
    assert framer.feed(message_as_stream(message)) == lines


@given(st.binary(max_size=200))
def test_message_lines_agree_with_the_tcp_framer(message: bytes) -> None:
    assert LineFramer(1000).feed(message_as_stream(message)) == message_lines(message)


@given(
    st.lists(st.text(max_size=20), min_size=1, max_size=8),
    st.data(),
)
def test_any_split_of_the_client_stream_gives_the_same_messages(
    texts: list[str], data: st.DataObject
) -> None:
    client = WSConnection(ConnectionType.CLIENT)
    framer = FrameConnection(ConnectionType.CLIENT)
    stream = client.send(Request(host=HOST, target="/ws"))
    for text in texts:
        cut = data.draw(st.integers(0, len(text)))
        stream += framer.send(TextMessage(data=text[:cut], message_finished=False))
        stream += framer.send(TextMessage(data=text[cut:], message_finished=True))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    session = make_endpoint().session()
    for start, end in itertools.pairwise([0, *cuts, len(stream)]):
        if end > start:  # an empty read is the end of the stream
            session.receive_data(stream[start:end])
    received = [e for e in session.events() if isinstance(e, MessageReceived)]
    assert received == [MessageReceived(text.encode(), True) for text in texts]


# Pings, pongs and closes ----------------------------------------------------------------


def test_a_ping_from_the_client_gets_a_pong_with_its_payload(session: WebSession) -> None:
    client = open_websocket(session)
    session.receive_data(client.send(Ping(payload=b"are you there")))
    assert list(session.events()) == []  # no input for the mode (nor for idle_timeout)
    assert frames_from(client, session) == [Pong(payload=b"are you there")]


def test_the_server_knows_whether_its_last_ping_was_answered(session: WebSession) -> None:
    assert session.ping() == b""  # nothing to ping before the upgrade
    client = open_websocket(session)
    assert session.ping_answered
    client.receive_data(session.ping())
    [ping] = client.events()
    assert isinstance(ping, Ping)
    assert not session.ping_answered
    session.receive_data(client.send(Pong(payload=b"unsolicited")))
    assert not session.ping_answered
    session.receive_data(client.send(ping.response()))
    assert session.ping_answered
    assert list(session.events()) == []


def test_a_pong_to_an_older_ping_does_not_answer_the_last(session: WebSession) -> None:
    client = open_websocket(session)
    client.receive_data(session.ping())
    [first] = client.events()
    assert isinstance(first, Ping)
    session.ping()
    session.receive_data(client.send(first.response()))
    assert not session.ping_answered


def test_the_clients_close_is_answered_once_and_reported(session: WebSession) -> None:
    client = open_websocket(session)
    session.receive_data(client.send(CloseConnection(code=1001, reason="tab closed")))
    assert list(session.events()) == [WebSocketClosed(1001, "tab closed", by_peer=True)]
    assert session.state is SessionState.CLOSED
    [answer] = frames_from(client, session)
    assert isinstance(answer, CloseConnection)
    assert answer.code == 1001
    assert session.close() == b""  # already closed: nothing more to say
    session.receive_data(b"anything")
    assert list(session.events()) == []


def test_a_server_close_waits_for_the_clients_answer(session: WebSession) -> None:
    client = open_websocket(session)
    data = session.close(1001, "server shutting down")
    assert session.state is SessionState.CLOSING
    assert list(session.events()) == [WebSocketClosed(1001, "server shutting down", by_peer=False)]
    client.receive_data(data)
    [close] = client.events()
    assert isinstance(close, CloseConnection)
    assert (close.code, close.reason) == (1001, "server shutting down")
    late = FrameConnection(ConnectionType.CLIENT).send(TextMessage(data="sent before the close"))
    session.receive_data(late)
    session.receive_data(client.send(close.response()))
    assert state_of(session) is SessionState.CLOSED
    assert list(session.events()) == []  # reported once; the late message is dropped
    assert session.data_to_send() == b""  # an answer to our close is not answered


def test_a_stream_that_ends_without_a_close_is_1006(session: WebSession) -> None:
    open_websocket(session)
    session.receive_data(b"")
    assert list(session.events()) == [WebSocketClosed(1006, "", by_peer=True)]
    assert session.state is SessionState.CLOSED


def test_closing_before_the_upgrade_just_closes(session: WebSession) -> None:
    assert session.close() == b""
    assert session.state is SessionState.CLOSED


# Messages out ---------------------------------------------------------------------------


def parse_server_frames(data: bytes) -> list[tuple[str, bytes]]:
    """wsproto's client-side parser on server bytes: (kind, payload) per message."""
    client = FrameConnection(ConnectionType.CLIENT)
    client.receive_data(data)
    messages: list[tuple[str, bytes]] = []
    for event in client.events():
        assert isinstance(event, Message), event
        assert event.message_finished
        if isinstance(event, TextMessage):
            messages.append(("text", event.data.encode()))
        else:
            messages.append(("binary", bytes(event.data)))
    return messages


@pytest.mark.parametrize(
    ("written", "messages"),
    [
        (b"Welcome alice!\n", [("text", b"Welcome alice!")]),
        (b"Enter your username: ", [("text", b"Enter your username: ")]),
        (b"one\r\ntwo\n", [("text", b"one"), ("text", b"two")]),
        (
            b"Username x is taken\nchoose another: ",
            [("text", b"Username x is taken"), ("text", b"choose another: ")],
        ),
        (b"\n", [("text", b"")]),
        (b"caf\xc3\xa9\n", [("text", "café".encode())]),
        (b"ok\n\xff\xfe\nok\n", [("text", b"ok"), ("binary", b"\xff\xfe"), ("text", b"ok")]),
        (b"Echo: caf\xc3", [("binary", b"Echo: caf\xc3")]),  # a character cut by a chunk
        (b"a\r", [("text", b"a\r")]),
        (b"", []),
    ],
)
def test_what_a_tcp_client_would_read_becomes_messages(
    written: bytes, messages: list[tuple[str, bytes]]
) -> None:
    assert parse_server_frames(encode_output(written)) == messages


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
@pytest.mark.parametrize("text", [True, False])
def test_a_frame_built_once_parses_with_wsproto(length: int, text: bool) -> None:
    payload = b"y" * length
    kind = "text" if text else "binary"
    assert parse_server_frames(frame_message(payload, text=text)) == [(kind, payload)]


def test_a_broadcast_is_framed_once_for_every_recipient() -> None:
    frames = encode_output(b"[alice]: hi\n")
    sessions = [make_endpoint().session() for _ in range(3)]
    clients = [open_websocket(session) for session in sessions]
    for client in clients:
        client.receive_data(frames)  # the same bytes, queued to each
        assert list(client.events()) == [TextMessage(data="[alice]: hi")]


line_text = st.text(st.characters(exclude_characters="\n", exclude_categories=["Cs"]), max_size=12)


@given(st.lists(line_text, max_size=12), st.booleans(), st.data())
def test_any_grouping_of_whole_lines_into_writes_gives_the_lines_as_messages(
    lines: list[str], prompt_at_end: bool, data: st.DataObject
) -> None:
    # The same lines as a TCP client's framer would cut from the stream, however gserver
    # grouped them into writes; a prompt at the end (no line ending) comes as it is.
    stream_lines = [line.encode() + data.draw(st.sampled_from([b"\n", b"\r\n"])) for line in lines]
    prompt = b"name: " if prompt_at_end else b""
    stream = b"".join(stream_lines) + prompt
    cuts = sorted(data.draw(st.sets(st.integers(1, max(len(lines) - 1, 1)), max_size=5)))
    bounds = [0, *[c for c in cuts if c < len(lines)], len(lines)]
    writes = [b"".join(stream_lines[a:b]) for a, b in itertools.pairwise(bounds)]
    writes[-1] += prompt
    framer = LineFramer(10_000)
    expected = framer.feed(stream)
    if framer.flush():
        expected.append(prompt)
    received = [
        payload for write in writes for _, payload in parse_server_frames(encode_output(write))
    ]
    assert received == expected


@given(st.binary(max_size=60), st.data())
def test_any_split_into_writes_loses_nothing(stream: bytes, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=5)))
    for start, end in itertools.pairwise([0, *cuts, len(stream)]):
        write = stream[start:end]
        messages = parse_server_frames(encode_output(write))
        # Rejoined with \n, the messages are the write (one \r of each \r\n dropped) ...
        assert b"\n".join(payload for _, payload in messages) == (
            write.replace(b"\r\n", b"\n").removesuffix(b"\n") if write else b""
        )
        assert len(messages) == (write.count(b"\n") + (not write.endswith(b"\n")) if write else 0)
        # ... and a message is text exactly when it is UTF-8.
        for kind, payload in messages:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                assert kind == "binary"
            else:
                assert kind == "text"


# Forwarded addresses ---------------------------------------------------------------------


def xff(*values: str) -> list[tuple[bytes, bytes]]:
    return [(b"x-forwarded-for", value.encode()) for value in values]


@pytest.mark.parametrize(
    ("peer", "headers", "trusted", "expected"),
    [
        # Only a trusted peer is believed.
        ("203.0.113.9", xff("198.51.100.1"), "127.0.0.1", "203.0.113.9"),
        ("127.0.0.1", xff("198.51.100.1"), "127.0.0.1", "198.51.100.1"),
        ("127.0.0.1", [], "127.0.0.1", "127.0.0.1"),
        ("127.0.0.1", xff(""), "127.0.0.1", "127.0.0.1"),
        # The right-most address that is not a trusted proxy: the client claims the first.
        ("127.0.0.1", xff("6.6.6.6, 198.51.100.1"), "127.0.0.1", "198.51.100.1"),
        ("10.0.0.2", xff("6.6.6.6, 198.51.100.1, 10.0.0.7"), "10.0.0.0/8", "198.51.100.1"),
        ("10.0.0.2", xff("6.6.6.6", "198.51.100.1, 10.0.0.7"), "10.0.0.0/8", "198.51.100.1"),
        # All trusted: the left-most; with "*", always the left-most.
        ("10.0.0.2", xff("10.0.0.3, 10.0.0.4"), "10.0.0.0/8", "10.0.0.3"),
        ("192.0.2.1", xff("198.51.100.1, 10.0.0.4"), "*", "198.51.100.1"),
        # Lists of addresses and networks, IPv6, dual-stack peers, ports.
        ("::1", xff("2001:db8::5"), ["127.0.0.1", "::1"], "2001:db8::5"),
        ("::ffff:127.0.0.1", xff("198.51.100.1"), "127.0.0.1", "198.51.100.1"),
        ("127.0.0.1", xff("198.51.100.1:4711"), "127.0.0.1", "198.51.100.1"),
        ("127.0.0.1", xff("[2001:db8::5]:4711"), "127.0.0.1", "2001:db8::5"),
        ("fd00::1", xff("198.51.100.1"), "fd00::/8, 127.0.0.1", "198.51.100.1"),
        # What is not an address is not believed.
        ("127.0.0.1", xff("unknown"), "127.0.0.1", "127.0.0.1"),
        ("127.0.0.1", xff("<script>"), "127.0.0.1", "127.0.0.1"),
    ],
)
def test_the_client_address_is_read_as_uvicorn_does(
    peer: str, headers: list[tuple[bytes, bytes]], trusted: str | list[str], expected: str
) -> None:
    assert client_address(peer, headers, trusted) == expected
    assert client_address(peer, headers, TrustedProxies(trusted)) == expected


def test_header_names_are_matched_without_regard_to_case() -> None:
    assert client_address("127.0.0.1", [(b"X-Forwarded-For", b"198.51.100.1")], "127.0.0.1") == (
        "198.51.100.1"
    )


@pytest.mark.parametrize("spec", ["localhost", "10.0.0.0/33", "1.2.3.4:80", "10.0.0.1, bogus"])
def test_a_malformed_forwarded_allow_ips_entry_is_an_error_at_start(spec: str) -> None:
    with pytest.raises(ValueError, match="not an IP address or network"):
        TrustedProxies(spec)


def test_rejected_handshake_reads_as_a_rejection_to_a_client(session: WebSession) -> None:
    _, events = upgrade(session, origin="https://evil.example")
    assert isinstance(events[0], RejectConnection)
    assert all(isinstance(e, RejectData) for e in events[1:])
