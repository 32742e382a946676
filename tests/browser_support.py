"""A real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by Selenium)
against an in-process daemon, for the web console's tests (tests/test_console_*.py).

Selenium blocks, the daemon runs on the reactor: every browser step runs in a thread
(:meth:`BrowserCase.b`), so the daemon keeps serving while the browser waits.
Screenshots go to ``tests/artifacts/console/`` (ignored by git), or to
``$SYSADMD_TEST_ARTIFACTS`` when set.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from typing import Any, Callable, List

from twisted.internet import threads
from twisted.trial import unittest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = os.environ.get("SYSADMD_TEST_ARTIFACTS") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "artifacts", "console")


def missing_browser() -> str:
    """Why the browser tests cannot run here, or ""."""
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install '.[test]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    return ""


def new_driver(width: int = 1280, height: int = 800, network_log: bool = False) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--ignore-certificate-errors", "--disable-gpu", "--no-first-run",
                "--disable-extensions", "--disable-dev-shm-usage", f"--window-size={width},{height}",
                "--disable-background-networking", "--disable-features=Translate,OptimizationHints"):
        options.add_argument(arg)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")
    profile = tempfile.mkdtemp(prefix="sd-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    # network_log: the CDP Network events as the "performance" log (requests and WebSocket frames)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", **({"performance": "ALL"} if network_log else {})})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_window_size(width, height)
    driver._sysadmd_profile = profile
    return driver


def quit_driver(driver: Any) -> None:
    try:
        driver.quit()
    finally:
        shutil.rmtree(getattr(driver, "_sysadmd_profile", ""), ignore_errors=True)


class BrowserCase(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        why = missing_browser()
        if why:
            raise unittest.SkipTest(why)
        self.console_errors: List[str] = []

    def b(self, fn: Callable[..., Any], *args: Any, **kwargs: Any):
        """Run a blocking browser step in a thread; a Deferred of its result."""
        return threads.deferToThread(fn, *args, **kwargs)

    def open_browser(self, width: int = 1280, height: int = 800, network_log: bool = False):
        d = self.b(new_driver, width, height, network_log)

        def got(driver):
            self.addCleanup(lambda: self.b(quit_driver, driver))
            return driver
        return d.addCallback(got)

    @staticmethod
    def wait_for(driver: Any, predicate: Callable[[Any], Any], timeout: float = 10, what: str = "") -> Any:
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        # A page that re-renders while the predicate reads an element (a list redrawn when
        # its API call answers) makes that element stale: ask again, as for a missing one.
        return WebDriverWait(driver, timeout, poll_frequency=0.05,
                             ignored_exceptions=(StaleElementReferenceException,)).until(predicate, message=what)

    @staticmethod
    def screenshot(driver: Any, name: str) -> str:
        os.makedirs(ARTIFACTS, exist_ok=True)
        path = os.path.join(ARTIFACTS, f"{name}.png")
        driver.save_screenshot(path)
        return path

    @staticmethod
    def browser_errors(driver: Any) -> List[str]:
        """The browser console's SEVERE entries since the last call."""
        return [f"{e.get('source')}: {e.get('message')}" for e in driver.get_log("browser")
                if e.get("level") == "SEVERE"]


def sign_in(driver: Any, url: str, user: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url)
    BrowserCase.wait_for(driver, lambda d: d.find_elements(By.XPATH, "//label[text()='User']"), what="the login form")
    field_for(driver, "User").send_keys(user)
    field_for(driver, "Password").send_keys(password)
    button(driver, "Sign in").click()


def field_for(driver: Any, label: str) -> Any:
    """The input a <label> with exactly this text names (found as a user would)."""
    from selenium.webdriver.common.by import By

    found = _present(driver, By.XPATH, f"//label[normalize-space(text())='{label}']", f"label {label!r}")
    return driver.find_element(By.ID, found.get_attribute("for"))


def button(driver: Any, name: str) -> Any:
    from selenium.webdriver.common.by import By

    return _present(driver, By.XPATH, f"//button[normalize-space(.)='{name}' or @aria-label='{name}']", f"button {name!r}")


def _present(driver: Any, by: str, selector: str, what: str, timeout: float = 10) -> Any:
    """The first element matching, once the page has rendered it (pages render after their API
    answers, so an element may appear a moment after the click that asked for it)."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(
        lambda d: (d.find_elements(by, selector) or [None])[0], message=f"no {what} within {timeout:g} s"
    )


def elapsed(start: float) -> float:
    return time.monotonic() - start
