"""Headless Chromium driven by Selenium, for the dashboard's browser tests and scripts/dashboard_screenshot.py (which
makes the README's screenshot with the same code). Chromium and its driver come from Debian (`chromium`,
`chromium-driver`; .ci/run installs them)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def missing() -> str | None:
    """Why the browser tests cannot run here (None when they can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if CHROMIUM is None or DRIVER is None:
        return "headless Chromium is absent (apt-get install chromium chromium-driver)"
    return None


def open_page(url: str, width: int = 1400, height: int = 1900):
    """A headless Chromium at `url`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(DRIVER, log_output=os.devnull))
    driver.get(url)
    return driver


def chart_points(driver, chart: str) -> int:
    """How many rounds the page's chart `chart` draws (its data-points attribute; -1 before it exists)."""
    value = driver.execute_script(f"const el = document.getElementById('chart-{chart}'); "
                                  "return el ? el.dataset.points : null;")
    return int(value) if value is not None else -1


def wait_for(driver, condition, timeout: float = 30.0, what: str = "the page") -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: condition(d), message=f"waiting for {what}")


def screenshot(driver, path: Path) -> Path:
    """The whole page as a PNG."""
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1400, max(900, int(height) + 40))
    driver.save_screenshot(str(path))
    return path
