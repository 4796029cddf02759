"""Driving the chat page in headless Chromium (Selenium), for the browser tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.conftest import WAIT


def wait_for(driver: Any, condition: Callable[[], Any], what: str) -> Any:
    from selenium.webdriver.support.wait import WebDriverWait

    return WebDriverWait(driver, WAIT, poll_frequency=0.05).until(lambda _: condition(), what)


def lines(driver: Any) -> list[str]:
    """Each line of the conversation as the page holds it (its text, never markup)."""
    result: list[str] = driver.execute_script(
        "const found = document.querySelectorAll('#log .line:not(.line-note)');"
        "return Array.from(found, e => e.textContent);"
    )
    return result


def state(driver: Any) -> str:
    return str(driver.execute_script("return document.getElementById('state').dataset.state"))


def type_line(driver: Any, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    field = driver.find_element(By.ID, "input")
    field.send_keys(text)
    field.send_keys(Keys.ENTER)
