"""What the dashboard tests share besides fixtures: the browser's flags, ``Page`` (waits that say what
they waited for). The service stack's fixtures and helpers are shared with tests/service
(tests/support/stack.py)."""
from __future__ import annotations

import shutil
import time

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         "--window-size=1280,1400")
WAIT_S = 30
STALE_RETRIES = 3   # re-renders in a row that a read of one element may meet


class Page:
    """The browser pointed at one API, with waits that say what they waited for."""

    def __init__(self, driver, base_url: str):
        self.driver, self.base_url = driver, base_url

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    def find(self, css: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def wait(self, condition, what: str, timeout_s: float = WAIT_S):
        """Poll ``condition()`` (exceptions count as not yet) until it is truthy; returns its value."""
        deadline, last = time.monotonic() + timeout_s, None
        while time.monotonic() < deadline:
            try:
                value = condition()
                if value:
                    return value
            except Exception as exc:  # noqa: BLE001 - element not there yet, stale, ...
                last = exc
            time.sleep(0.05)
        raise AssertionError(f"waited {timeout_s} s for {what}; last error: {last!r}; page errors: {self.errors()}")

    def text(self, css: str) -> str:
        """The element's text now. A page may re-render between finding the element and reading
        it (a job's page renders again when its state arrives): a stale element is found again."""
        from selenium.common.exceptions import StaleElementReferenceException

        for _ in range(STALE_RETRIES):
            try:
                return self.find(css).text
            except StaleElementReferenceException:
                continue
        return self.find(css).text

    def errors(self) -> list[str]:
        """Severe messages from the browser console: script errors, CSP violations (not the status
        of an answer the page handles, such as a 422 it shows next to a field)."""
        return [e["message"] for e in self.driver.get_log("browser")
                if e["level"] == "SEVERE" and e.get("source") != "network"]

    def session_key(self):
        return self.driver.execute_script("return sessionStorage.getItem('convnd.apiKey')")


def make_page(browser, api, key: str | None = None) -> Page:
    """The browser on ``api``'s origin with no key, or logged in with ``key`` (as the prompt would)."""
    page = Page(browser, api.url)
    page.open("/ui/static/ui.css")  # any page of this origin, to clear the previous test's key
    browser.execute_script("sessionStorage.clear()")
    if key is not None:
        browser.execute_script("sessionStorage.setItem('convnd.apiKey', arguments[0])", key)
    browser.get_log("browser")  # drop earlier messages
    return page
