"""The chat page: self-contained and safe by construction, then in a real browser.

The browser tests drive Debian's headless Chromium through chromedriver (Selenium) against
two small servers on 127.0.0.1 that serve the packaged page and a toy chat on /ws, each on
one port, since the page opens its WebSocket on its own host and port:

- ``websockets``: the page served from the `websockets` package's sync server (its
  ``process_request`` hook), an implementation independent of gserver's;
- ``session``: a thread-per-connection adapter around gserver's sans-IO WebSession, so the
  browser meets the real headers (the Content-Security-Policy must let the page reach its
  own ws: URL) and the real framing.

They are skipped, with the reason, where /usr/bin/chromium or /usr/bin/chromedriver is
missing (Debian: ``apt-get install chromium chromium-driver``).  Set
GSERVER_UPDATE_SCREENSHOT=1 to copy the 360 px screenshot to docs/chat-page.png.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from gserver import web
from gserver.protocol.websocket import (
    CONTENT_SECURITY_POLICY,
    MessageReceived,
    SessionState,
    WebEndpoint,
    WebSocketAccepted,
    WebSocketClosed,
    encode_output,
    message_lines,
)
from tests.browser import (
    lines,
    needs_chromium,
    start_chromium,
    state,
    stop_chromium,
    type_line,
    wait_for,
)
from tests.conftest import WAIT

REPO = Path(__file__).resolve().parent.parent
INJECTION = "<img src=x onerror=alert(1)>"


# The page, statically --------------------------------------------------------------------


class PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline_script = ""
        self.doctype = ""
        self._in_script = False

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.inline_script += data


def parse_page() -> PageParser:
    parser = PageParser()
    parser.feed(web.asset("/").body.decode("utf-8"))
    parser.close()
    return parser


def test_the_three_files_are_in_the_package_with_their_types() -> None:
    assert set(web.ROUTES) == {"/", "/chat.js", "/chat.css"}
    assert web.asset("/").content_type == "text/html; charset=utf-8"
    assert web.asset("/chat.js").content_type == "text/javascript; charset=utf-8"
    assert web.asset("/chat.css").content_type == "text/css; charset=utf-8"
    for path, (body, content_type) in web.assets().items():
        assert body == web.asset(path).body
        assert content_type == web.asset(path).content_type
        body.decode("utf-8")


def test_the_page_is_a_complete_html_document() -> None:
    page = parse_page()
    assert page.doctype.lower() == "doctype html"
    tags = dict(page.tags)
    assert tags["html"].get("lang") == "en"
    metas = [attrs for tag, attrs in page.tags if tag == "meta"]
    assert {"charset": "utf-8"} in metas
    assert any(
        m.get("name") == "viewport" and "width=device-width" in (m.get("content") or "")
        for m in metas
    )
    ids = {attrs["id"] for _, attrs in page.tags if "id" in attrs}
    assert {"log", "input", "state", "reconnect", "composer", "send"} <= ids


def test_the_page_loads_only_its_own_script_and_style() -> None:
    page = parse_page()
    scripts = [attrs for tag, attrs in page.tags if tag == "script"]
    assert scripts == [{"src": "/chat.js", "defer": None}]
    assert page.inline_script.strip() == ""  # CSP forbids inline script: there is none
    sheets = [
        attrs.get("href")
        for tag, attrs in page.tags
        if tag == "link" and attrs.get("rel") == "stylesheet"
    ]
    assert sheets == ["/chat.css"]
    referenced = {attrs.get("src") or attrs.get("href") for _, attrs in page.tags} - {None}
    assert referenced <= set(web.ROUTES)


def test_the_page_has_no_inline_style_or_handlers() -> None:
    page = parse_page()
    for tag, attrs in page.tags:
        assert tag != "style"
        assert "style" not in attrs, tag
        assert not [name for name in attrs if name.startswith("on")], tag
        for value in attrs.values():
            assert not (value or "").strip().lower().startswith("javascript:")


@pytest.mark.parametrize("path", sorted(web.ROUTES))
def test_no_file_refers_to_another_site(path: str) -> None:
    text = web.asset(path).body.decode("utf-8")
    assert not re.search(r"\b(?:https?|wss?):\\?/\\?/[\w.\[-]", text), "absolute URL"
    assert not re.search(r"""(?:["'(=]\s*)//[\w.-]""", text), "scheme-relative URL"
    assert "@import" not in text
    assert "url(" not in text


def test_the_script_never_inserts_received_text_as_html() -> None:
    script = web.asset("/chat.js").body.decode("utf-8")
    for sink in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "Function(",
    ):
        assert sink not in script
    assert "textContent" in script


def test_the_policy_allows_only_the_pages_own_origin() -> None:
    directives = dict(
        [*part.split(" ", 1), ""][:2]
        for part in (p.strip() for p in CONTENT_SECURITY_POLICY.split(";"))
    )
    assert directives["default-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY


# A toy chat for the browser ---------------------------------------------------------------

BACKLOG = [
    "bob joined the chat",
    "[bob]: hi alice!",
    "[carol]: morning all",
    "[bob]: did the deploy go out?",
    "[carol]: yes, 10 minutes ago",
    "[carol]: web clients and nc clients share the room now",
    "[bob]: nice, I'm on nc right now",
    "* carol waves",
    "[bob]: the page keeps scrolling to the bottom...",
    "[carol]: ...unless you scroll up to read",
    "[bob]: perfect",
    "[carol]: and <b>markup</b> shows as text",
    "[bob]: try /help",
    "Commands:",
    "/users - View user list",
    "/help - Show help",
    "/quit - Exit chat",
    "[carol]: lunch?",
    "[bob]: 12:30 works",
    "[carol]: ok",
    "dave joined the chat",
    "[dave]: hello everyone",
    "[bob]: hi dave",
    "[dave]: is this the new web page?",
    "[carol]: it is: same room as the terminal folks",
    "[dave]: and it works on my phone",
    "[bob]: tried it at 360 px wide",
    "* bob thinks it looks fine",
    "[carol]: Up brings back your last line, by the way",
    "[dave]: handy",
    "[carol]: and Reconnect shows up if the server goes away",
    "[bob]: or if you /quit",
    "[dave]: noted",
    "[carol]: alice, you there?",
]


class Member:
    def __init__(self, send: Callable[[str], None], close: Callable[[], None]) -> None:
        self.name: str | None = None
        self.send = send  # what a TCP client would read, line endings and all
        self.close = close


class ToyChat:
    """Just enough of chat mode: a name prompt, a backlog, broadcast lines, /quit."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.members: list[Member] = []

    def join(self, send: Callable[[str], None], close: Callable[[], None]) -> Member:
        member = Member(send, close)
        with self.lock:
            self.members.append(member)
        member.send("Enter your username: ")
        return member

    def leave(self, member: Member) -> None:
        with self.lock, contextlib.suppress(ValueError):
            self.members.remove(member)

    def line(self, member: Member, text: str) -> None:
        if member.name is None:
            member.name = text.strip()
            member.send(f"Welcome {member.name}!\n")
            for line in BACKLOG:
                member.send(line + "\n")
        elif text == "/quit":
            member.close()
        else:
            self.broadcast(f"[{member.name}]: {text}\n")

    def broadcast(self, text: str) -> None:
        with self.lock:
            members = [m for m in self.members if m.name is not None]
        for member in members:
            member.send(text)


@contextlib.contextmanager
def websockets_server(chat: ToyChat) -> Iterator[int]:
    """The page and /ws from the `websockets` package's sync server, on one port."""
    from websockets.datastructures import Headers
    from websockets.http11 import Request, Response
    from websockets.sync.server import ServerConnection, serve

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/ws":
            return None
        if path not in web.ROUTES:
            return connection.respond(404, "not found\n")
        asset = web.asset(path)
        headers = Headers(
            [
                ("Content-Type", asset.content_type),
                ("Content-Length", str(len(asset.body))),
                ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
                ("X-Content-Type-Options", "nosniff"),
            ]
        )
        return Response(200, "OK", headers, asset.body)

    def handler(ws: ServerConnection) -> None:
        def send(text: str) -> None:
            # As gserver maps it: a line per message, a prompt as it is.
            pieces = text.removesuffix("\n").split("\n") if text.endswith("\n") else [text]
            for piece in pieces:
                with contextlib.suppress(Exception):
                    ws.send(piece)

        member = chat.join(send, lambda: ws.close(1000))
        try:
            for message in ws:
                data = message.encode() if isinstance(message, str) else message
                for line in message_lines(data):
                    chat.line(member, line.decode("utf-8", "replace"))
        finally:
            chat.leave(member)

    server = serve(
        handler,
        "127.0.0.1",
        0,
        process_request=process_request,
        compression=None,
        server_header=None,
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.socket.getsockname()[1]
    finally:
        server.shutdown()
        thread.join(WAIT)


@contextlib.contextmanager
def session_server(chat: ToyChat) -> Iterator[int]:
    """The page and /ws from gserver's WebSession, a thread per connection around it."""
    endpoint = WebEndpoint(assets=web.assets(), health=lambda: (True, "ok"))
    listener = socket.create_server(("127.0.0.1", 0))
    stopping = threading.Event()
    threads: list[threading.Thread] = []

    def serve(sock: socket.socket) -> None:
        session = endpoint.session()
        write_lock = threading.Lock()
        member: Member | None = None

        def write(data: bytes) -> None:
            if data:
                with write_lock, contextlib.suppress(OSError):
                    sock.sendall(data)

        sock.settimeout(WAIT)
        try:
            while session.state is not SessionState.CLOSED and not stopping.is_set():
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                session.receive_data(data)
                write(session.data_to_send())  # first: the 101 before the mode's first words
                for event in session.events():
                    if isinstance(event, WebSocketAccepted):
                        member = chat.join(
                            lambda text: write(encode_output(text.encode())),
                            lambda: write(session.close(1000)),
                        )
                    elif isinstance(event, MessageReceived) and member is not None:
                        for line in message_lines(event.data):
                            chat.line(member, line.decode("utf-8", "replace"))
                    elif isinstance(event, WebSocketClosed) and member is not None:
                        chat.leave(member)
        finally:
            if member is not None:
                chat.leave(member)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def accept() -> None:
        while not stopping.is_set():
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=serve, args=(sock,), daemon=True)
            threads.append(thread)
            thread.start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stopping.set()
        listener.close()
        acceptor.join(WAIT)


# The browser --------------------------------------------------------------------------------


@pytest.fixture
def browser() -> Iterator[Any]:
    driver, profile = start_chromium()
    try:
        yield driver
    finally:
        stop_chromium(driver, profile)


def log_scroll(driver: Any) -> dict[str, float]:
    result: dict[str, float] = driver.execute_script(
        "const l = document.getElementById('log');"
        "return {top: l.scrollTop, height: l.scrollHeight, client: l.clientHeight};"
    )
    return result


def at_bottom(driver: Any) -> bool:
    scroll = log_scroll(driver)
    return scroll["height"] - scroll["top"] - scroll["client"] <= 2


SERVERS: dict[str, Callable[[ToyChat], contextlib.AbstractContextManager[int]]] = {
    "websockets": websockets_server,
    "session": session_server,
}


@needs_chromium
@pytest.mark.parametrize("server", sorted(SERVERS))
def test_a_browser_chats_safely_and_reconnects(browser: Any, server: str, tmp_path: Path) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = browser
    chat = ToyChat()
    with SERVERS[server](chat) as port:
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": 360, "height": 740, "deviceScaleFactor": 2, "mobile": True},
        )
        driver.get(f"http://127.0.0.1:{port}/")

        # The server's prompt shows like any other text; the name goes in the input.
        wait_for(driver, lambda: state(driver) == "connected", "connected")
        wait_for(driver, lambda: lines(driver) == ["Enter your username: "], "the prompt")
        type_line(driver, "alice")
        expected = ["Enter your username: ", "Welcome alice!", *BACKLOG]
        wait_for(driver, lambda: len(lines(driver)) >= len(expected), "the backlog")
        assert lines(driver) == expected  # in order, each message one line
        assert at_bottom(driver)  # the view follows the conversation

        # Markup from anyone is text: from this user and from another one.
        type_line(driver, INJECTION)
        chat.broadcast(f"[mallory]: {INJECTION}\n")
        wait_for(driver, lambda: lines(driver)[-1] == f"[mallory]: {INJECTION}", "the injection")
        assert lines(driver)[-2:] == [f"[alice]: {INJECTION}", f"[mallory]: {INJECTION}"]
        assert driver.execute_script("return document.querySelectorAll('img').length") == 0
        with pytest.raises(NoAlertPresentException):
            driver.switch_to.alert.text  # noqa: B018 -- reading it is the check

        # Up brings back the last line sent.
        field = driver.find_element(By.ID, "input")
        assert field.get_attribute("value") == ""
        field.send_keys(Keys.ARROW_UP)
        wait_for(driver, lambda: field.get_attribute("value") == INJECTION, "the recalled line")
        field.clear()

        # Scrolled up to read, the reader stays where they are when lines arrive.
        assert log_scroll(driver)["height"] - log_scroll(driver)["client"] > 100
        driver.execute_script("document.getElementById('log').scrollTop = 0")
        chat.broadcast("[bob]: are you still there?\n")
        wait_for(driver, lambda: lines(driver)[-1] == "[bob]: are you still there?", "a new line")
        assert log_scroll(driver)["top"] == 0
        assert driver.find_element(By.ID, "latest").is_displayed()
        driver.find_element(By.ID, "latest").click()
        wait_for(driver, lambda: at_bottom(driver), "back at the bottom")

        # 360 px: nothing sticks out, the input and its button fit side by side.
        layout = driver.execute_script(
            "const r = id => document.getElementById(id).getBoundingClientRect();"
            "const page = document.documentElement.scrollWidth;"
            "return {page: page, input: r('input'), send: r('send')};"
        )
        assert layout["page"] <= 360
        assert layout["send"]["right"] <= 360
        assert layout["input"]["width"] >= 180
        assert layout["input"]["top"] == layout["send"]["top"]
        chat.broadcast("[bob]: yes! and from nc too\n")
        wait_for(
            driver, lambda: lines(driver)[-1] == "[bob]: yes! and from nc too", "the last line"
        )
        field.send_keys("see you at 12:30")
        screenshot = tmp_path / f"chat-page-{server}.png"
        assert driver.save_screenshot(str(screenshot))
        assert screenshot.stat().st_size > 10_000
        if server == "session" and os.environ.get("GSERVER_UPDATE_SCREENSHOT"):
            (REPO / "docs").mkdir(exist_ok=True)
            shutil.copyfile(screenshot, REPO / "docs" / "chat-page.png")
        field.clear()

        # The server closes: the state says so and Reconnect brings the prompt back.
        type_line(driver, "/quit")
        wait_for(driver, lambda: state(driver) == "disconnected", "disconnected")
        reconnect = driver.find_element(By.ID, "reconnect")
        assert reconnect.is_displayed()
        assert not field.is_enabled()
        assert driver.execute_script("return document.documentElement.scrollWidth") <= 360
        assert reconnect.rect["x"] + reconnect.rect["width"] <= 360
        assert driver.save_screenshot(str(tmp_path / f"chat-page-{server}-closed.png"))
        reconnect.click()
        wait_for(driver, lambda: state(driver) == "connected", "connected again")
        wait_for(driver, lambda: lines(driver)[-1] == "Enter your username: ", "a new prompt")
        assert not reconnect.is_displayed()

    problems = [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE" or "Content Security Policy" in entry["message"]
    ]
    # The only error the page may cause is the browser's own favicon.ico request.
    assert [p for p in problems if "favicon.ico" not in p] == []
