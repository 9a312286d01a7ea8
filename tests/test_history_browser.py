"""The landing page's recent scrapes in a real browser: Debian's headless Chromium, driven by
Selenium through Debian's chromedriver (issue 21). The test loads the page as a person would,
reads the table, follows a log link and reads the log; the page works without JavaScript and
sits behind the same basic auth as /metrics."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import Any

import bcrypt
import pytest
from conftest import CREDS, require_tool
from inproc import running_exporter
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from polarity_exporter.simulator import Simulator
from polarity_exporter.simulator import faults as F
from polarity_exporter.webconfig import WebSecurity

VIEWER, VIEWER_PASSWORD = "viewer", "landing-page-password"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium, chromedriver = require_tool("chromium"), require_tool("chromedriver")
    options = Options()
    options.binary_location = chromium
    # As root in a container, without a GPU or a network: the flags the machine's own probe
    # found Chromium needs here. JavaScript off: the page must work without it.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic",
                 "--blink-settings=scriptEnabled=false"):
        options.add_argument(flag)
    profile = tempfile.TemporaryDirectory(prefix="chromium-")
    options.add_argument(f"--user-data-dir={profile.name}")
    # The driver given explicitly: Selenium Manager would try to download one.
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        profile.cleanup()


def rows(browser: Any) -> list[list[str]]:
    """The recent-scrapes table as a person reads it: one list of cell texts per row."""
    table = browser.find_element(By.TAG_NAME, "table")
    return [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
            for row in table.find_elements(By.TAG_NAME, "tr")[1:]]


def test_a_person_sees_recent_scrapes_and_follows_a_log_link(browser: Any,
                                                               sim: Simulator) -> None:
    with running_exporter(sim.url, CREDS) as running:
        assert running.scrape().up == 1.0
        sim.faults = F.status(403, F.on(F.ERRORS))
        running.scrape()
        sim.faults = F.status(500, F.on(F.INTEGRATIONS))
        assert running.scrape().up == 0.0
        browser.get(f"{running.url}/")
        assert browser.find_element(By.TAG_NAME, "h2").text == "Recent scrapes"
        table = rows(browser)
        assert len(table) == 3
        newest, middle, oldest = table
        assert newest[1] == "/metrics" and newest[2].startswith("down: integrations:")
        assert "HTTP 500" in newest[2]
        assert middle[2] == "up" and oldest[2] == "up"  # a 403 on errors alone: still up
        assert all(row[3].endswith("s") and row[4] == "log" for row in table)
        browser.find_elements(By.LINK_TEXT, "log")[1].click()  # the scrape with the 403
        text = browser.find_element(By.TAG_NAME, "body").text
    assert text.startswith("Scrape 1 of /metrics")
    assert "GET /api/integrations/errors -> HTTP 403" in text
    assert "part errors: failed" in text


def test_the_page_asks_for_the_same_basic_auth_as_metrics(browser: Any, sim: Simulator) -> None:
    hashed = bcrypt.hashpw(VIEWER_PASSWORD.encode(), bcrypt.gensalt(4))
    security = WebSecurity(basic_auth_users={VIEWER: hashed})
    with running_exporter(sim.url, CREDS, security=security) as running:
        running.session.auth = (VIEWER, VIEWER_PASSWORD)
        assert running.scrape().up == 1.0
        host = running.url.removeprefix("http://")
        # Without credentials the browser gets 401 and shows no page (it would ask for them).
        browser.get(f"http://{host}/")
        assert "Recent scrapes" not in browser.find_element(By.TAG_NAME, "body").text
        assert not browser.find_elements(By.TAG_NAME, "table")
        browser.get(f"http://{host}/logs?id=0")
        assert "Scrape 0" not in browser.find_element(By.TAG_NAME, "body").text
        browser.get(f"http://{VIEWER}:{VIEWER_PASSWORD}@{host}/")
        table = rows(browser)
        browser.find_element(By.LINK_TEXT, "log").click()
        log = browser.find_element(By.TAG_NAME, "body").text
    assert len(table) == 1 and table[0][2] == "up"
    assert log.startswith("Scrape 0 of /metrics") and "outcome: up" in log
