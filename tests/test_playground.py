"""End to end: `routelet serve` in a subprocess, the playground page driven by headless Chromium.

Needs Debian's Chromium at /usr/bin/chromium (`apt-get install -y chromium`). Without it the test
skips locally, but fails under CI (env CI set), where .ci/run installs it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from routers import tfidf_folder  # noqa: F401  (fixture)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tfidf_folder, tmp_path):
    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    script = str(Path(sys.executable).parent / "routelet")
    process = subprocess.Popen([script, "serve", "--router", str(tfidf_folder), "--port", str(port)],
                               stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"server did not start:\n{(tmp_path / 'server.log').read_text()}")
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.fixture
def chromium():
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing under CI: install it with `apt-get install -y chromium`")
        pytest.skip(f"{CHROMIUM} is missing; install it with `apt-get install -y chromium`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.mark.parametrize("text, route", [("please wire money to my payee", "banking"),
                                         ("boarding my flight at the airport", "travel")])
def test_playground_routes_a_request(server, chromium, tmp_path, text, route):
    page = chromium.new_page()
    page.goto(server + "/")
    assert page.title() == "routelet playground"
    page.fill("#text", text)
    page.click("#submit")
    page.wait_for_selector("#bars .bar")
    assert page.text_content("#route") == route
    assert page.text_content("#abstain") == "no"
    assert page.text_content("#model-version") == "tfidf-test0001"
    bars = page.locator("#bars .bar")
    assert bars.count() == 3
    assert bars.first.get_attribute("data-route") == route
    assert page.locator("#error").is_hidden()
    page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)
    assert (tmp_path / "playground.png").stat().st_size > 0


def test_playground_shows_server_errors(server, chromium):
    page = chromium.new_page()
    page.goto(server + "/")
    # The text box stops at 2,000 characters; lift that to see the server's own 422 reason.
    page.evaluate("document.getElementById('text').removeAttribute('maxlength')")
    page.fill("#text", "a" * 2001)
    page.click("#submit")
    page.wait_for_selector("#error", state="visible")
    assert "422" in page.text_content("#error") and "2,000" in page.text_content("#error")
