"""A real browser in a real gserver chat: two headless Chromium pages and an nc-like TCP
client talk through ``python -m gserver --mode chat --web-port P``.

Debian's Chromium and chromedriver, driven by Selenium (as in test_web_page.py, whose
browsers talk to stand-in servers); skipped, with the reason, where /usr/bin/chromium or
/usr/bin/chromedriver is missing (``apt-get install chromium chromium-driver``, as .ci/run
does).  The test saves a screenshot of the 360 px page; with GSERVER_UPDATE_SCREENSHOT=1 it
also becomes docs/chat-page.png, the README's picture.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gserver.testing.probes import free_port
from tests.browser import (
    lines,
    needs_chromium,
    start_chromium,
    state,
    stop_chromium,
    type_line,
    wait_for,
)
from tests.conftest import ServerProcess, chat_join

REPO = Path(__file__).resolve().parent.parent
INJECTION = "<img src=x onerror=alert(1)>"

pytestmark = needs_chromium


@pytest.fixture
def browsers() -> Iterator[Callable[[], Any]]:
    """A factory of headless Chromium browsers (each its own process and profile)."""
    started: list[tuple[Any, str]] = []

    def start() -> Any:
        started.append(start_chromium())
        return started[-1][0]

    yield start
    for driver, profile in started:
        stop_chromium(driver, profile)


def shows(driver: Any, text: str) -> None:
    """Wait until the page's last line is ``text``."""
    wait_for(driver, lambda: (lines(driver) or [""])[-1] == text, repr(text))


def join(driver: Any, port: int, name: str) -> None:
    driver.get(f"http://127.0.0.1:{port}/")
    wait_for(driver, lambda: state(driver) == "connected", "connected")
    shows(driver, "Enter your username: ")  # the prompt, as gserver sends it
    type_line(driver, name)
    shows(driver, f"Welcome {name}!")


def console_problems(driver: Any) -> list[str]:
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if (entry["level"] == "SEVERE" or "Content Security Policy" in entry["message"])
        and "favicon.ico" not in entry["message"]  # the browser's own request: a 404
    ]


def test_two_browser_pages_and_a_tcp_client_chat_through_gserver(
    start_server: Callable[..., ServerProcess], browsers: Callable[[], Any], tmp_path: Path
) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    web = free_port()
    server = start_server("--mode", "chat", "--web-port", str(web))
    server.wait_for_log("web_listening")
    alice, bob = browsers(), browsers()
    # alice is on a phone-sized screen (Chromium's window is at least 500 px wide).
    alice.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 360, "height": 740, "deviceScaleFactor": 2, "mobile": True},
    )
    join(alice, web, "alice")
    nc = chat_join(server.port, "nc")
    shows(alice, "nc joined the chat")
    join(bob, web, "bob")
    assert nc.read_line() == "bob joined the chat\n"
    shows(alice, "bob joined the chat")

    type_line(alice, "hi from a browser")
    assert nc.read_line() == "[alice]: hi from a browser\n"
    shows(bob, "[alice]: hi from a browser")
    shows(alice, "[alice]: hi from a browser")
    nc.send_line("hello browsers, this is nc")
    shows(alice, "[nc]: hello browsers, this is nc")
    shows(bob, "[nc]: hello browsers, this is nc")
    assert nc.read_line() == "[nc]: hello browsers, this is nc\n"

    # Markup typed in one page, and sent from the terminal, is text in every page.
    type_line(bob, INJECTION)
    assert nc.read_line() == f"[bob]: {INJECTION}\n"
    nc.send_line(f"and from nc: {INJECTION}")
    assert nc.read_line() == f"[nc]: and from nc: {INJECTION}\n"
    for driver in (alice, bob):
        shows(driver, f"[nc]: and from nc: {INJECTION}")
        assert lines(driver)[-2] == f"[bob]: {INJECTION}"
        assert driver.execute_script("return document.querySelectorAll('img').length") == 0
        # Nothing in the conversation but its lines and the names in them.
        assert (
            driver.execute_script(
                "return document.querySelectorAll('#log *:not(.line):not(.name)').length"
            )
            == 0
        )
        with pytest.raises(NoAlertPresentException):
            driver.switch_to.alert.text  # noqa: B018 -- reading it is the check

    type_line(alice, "/users")
    shows(alice, "Online users: alice, nc, bob")
    nc.send_line("/msg alice lunch at 12:30?")
    assert nc.read_line() == "[you -> alice]: lunch at 12:30?\n"
    shows(alice, "[nc -> you]: lunch at 12:30?")
    type_line(alice, "/me nods")
    assert nc.read_line() == "* alice nods\n"
    shows(bob, "* alice nods")

    nc.send_line("anyone on a phone?")
    assert nc.read_line() == "[nc]: anyone on a phone?\n"
    type_line(alice, "me: 360 px wide, same room as your terminal")
    assert nc.read_line() == "[alice]: me: 360 px wide, same room as your terminal\n"
    type_line(bob, "laptop here; the page is all gserver serves, no CDN")
    assert nc.read_line() == "[bob]: laptop here; the page is all gserver serves, no CDN\n"
    shows(alice, "[bob]: laptop here; the page is all gserver serves, no CDN")

    # 360 px: nothing sticks out.
    assert alice.execute_script("return document.documentElement.scrollWidth") <= 360
    from selenium.webdriver.common.by import By

    alice.find_element(By.ID, "input").send_keys("see you at 12:30")
    screenshot = tmp_path / "chat-page.png"
    assert alice.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000
    if os.environ.get("GSERVER_UPDATE_SCREENSHOT"):
        (REPO / "docs").mkdir(exist_ok=True)
        shutil.copyfile(screenshot, REPO / "docs" / "chat-page.png")

    # bob closes his tab: he left, once.
    chat_tab = bob.current_window_handle
    bob.switch_to.new_window("tab")  # so that closing the chat's tab leaves the browser up
    other_tab = bob.current_window_handle
    bob.switch_to.window(chat_tab)
    bob.close()
    bob.switch_to.window(other_tab)
    assert nc.read_line() == "bob left the chat\n"
    shows(alice, "bob left the chat")
    nc.send_line("/users")
    assert nc.read_line() == "Online users: alice, nc\n"
    disconnect = server.wait_for_log("disconnect", name="bob")
    assert disconnect["transport"] == "websocket"
    assert console_problems(alice) == []
    nc.close()
    shows(alice, "nc left the chat")


def test_a_page_left_for_another_leaves_the_chat_at_once(
    start_server: Callable[..., ServerProcess], browsers: Callable[[], Any]
) -> None:
    web = free_port()
    server = start_server("--mode", "chat", "--web-port", str(web))
    server.wait_for_log("web_listening")
    page = browsers()
    join(page, web, "wanderer")
    with chat_join(server.port, "watcher") as watcher:
        page.get("about:blank")  # off to another page, perhaps into the back/forward cache
        assert watcher.read_line() == "wanderer left the chat\n"
