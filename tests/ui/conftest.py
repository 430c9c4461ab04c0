"""A real headless Chromium (Debian's ``chromium`` + ``chromedriver``, driven by Selenium) against the
real stack shared with tests/service (tests/support/stack.py, registered in tests/conftest.py):
embedded Valkey, a Celery worker subprocess and API subprocesses.

Where no browser is installed (``scripts/install_browser.sh`` installs one; ``.ci/run`` calls it)
every test here is skipped with that reason.
"""
from __future__ import annotations

import pytest
from ui_helpers import CHROMEDRIVER, CHROMIUM, FLAGS


@pytest.fixture(scope="session")
def downloads(tmp_path_factory):
    """Where the browser saves downloaded files."""
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="session")
def browser(downloads):
    """One headless Chromium for the session; each test gets a fresh tab state (see ``make_page``)."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no headless browser: chromium and chromedriver are not installed "
                    "(scripts/install_browser.sh installs them with apt)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


