"""Driving the chat page in headless Chromium (Selenium), for the browser tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import WAIT

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
needs_chromium = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="headless Chromium not installed (apt-get install chromium chromium-driver)",
)


def start_chromium() -> tuple[Any, str]:
    """A headless Debian Chromium of its own (process and profile): (driver, profile).
    The flags keep it from reaching for Google's hosts, which this machine cannot reach."""
    pytest.importorskip("selenium", reason="selenium not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="gserver-chromium-")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(WAIT)
    return driver, profile


def stop_chromium(driver: Any, profile: str) -> None:
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


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
