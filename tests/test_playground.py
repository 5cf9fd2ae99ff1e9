"""End to end: `routelet serve` in a subprocess, the playground page driven by headless Chromium.

Needs Debian's Chromium at /usr/bin/chromium (`apt-get install -y chromium`). Without it the test
skips locally, but fails under CI (env CI set), where .ci/run installs it.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from routers import image_folder, tfidf_folder  # noqa: F401  (fixtures)

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
    yield from _serve(tfidf_folder, tmp_path)


@pytest.fixture
def image_server(image_folder, tmp_path):
    yield from _serve(image_folder, tmp_path)


def _serve(folder: Path, tmp_path: Path):
    """`routelet serve` on `folder` in a subprocess: yields its URL once /healthz answers."""
    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    script = str(Path(sys.executable).parent / "routelet")
    process = subprocess.Popen([script, "serve", "--router", str(folder), "--port", str(port)],
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
    assert page.locator("#error").is_hidden() and page.locator("#drop").is_hidden()
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


def _api(server: str, text: str) -> dict:
    request = urllib.request.Request(server + "/v1/route", data=json.dumps({"text": text, "top_k": 3}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_playground_shows_the_abstained_routes_own_probability(server, chromium):
    expected = _api(server, "funds airport")
    assert expected["route"] == "oos" and expected["p"] < expected["confidence"]  # a case where they differ
    page = chromium.new_page()
    page.goto(server + "/")
    page.fill("#text", "funds airport")
    page.click("#submit")
    page.wait_for_selector("#bars .bar")
    assert page.text_content("#route") == "oos" and page.text_content("#abstain") == "yes"
    assert page.text_content("#confidence") == f"{100 * expected['p']:.1f}%"
    reason = page.text_content("#reason")
    assert "low confidence" in reason and f"{100 * expected['confidence']:.1f}%" in reason


def test_an_input_error_clears_the_old_result(server, chromium):
    page = chromium.new_page()
    page.goto(server + "/")
    page.fill("#text", "please wire money to my payee")
    page.click("#submit")
    page.wait_for_selector("#output", state="visible")
    page.fill("#text", "   ")
    page.click("#submit")
    page.wait_for_selector("#error", state="visible")
    assert page.locator("#output").is_hidden()
    page.fill("#text", "please wire money to my payee")  # and after a server error (422) too
    page.click("#submit")
    page.wait_for_selector("#output", state="visible")
    page.evaluate("document.getElementById('text').removeAttribute('maxlength')")
    page.fill("#text", "a" * 2001)
    page.click("#submit")
    page.wait_for_selector("#output", state="hidden")
    assert "422" in page.text_content("#error")


def test_docs_render_with_no_network(server, chromium, tmp_path):
    """Swagger UI's script and stylesheet come from the server itself: block everything else."""
    page = chromium.new_page()
    outside = []

    def only_the_server(route):
        if route.request.url.startswith(server):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_server)
    page.goto(server + "/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=30_000)
    paths = page.locator(".opblock-summary-path").all_text_contents()
    assert "/v1/route" in "".join(paths) and "/healthz" in "".join(paths)
    assert outside == []
    page.screenshot(path=str(tmp_path / "docs.png"), full_page=True)


def test_playground_routes_an_image_chosen_or_dropped(image_server, chromium, tmp_path):
    from test_pixels import screens

    (calendar, providers, _), _ = screens(1, 1)
    calendar.save(tmp_path / "calendar.png")
    page = chromium.new_page()
    page.goto(image_server + "/")
    page.wait_for_selector("#drop", state="visible")  # the page read /v1/model: an image router
    assert page.locator("#text").is_hidden()
    page.set_input_files("#file", str(tmp_path / "calendar.png"))  # the file picker
    page.wait_for_selector("#bars .bar")
    assert page.text_content("#route") == "calendar" and page.text_content("#target") == "lora.calendar"
    assert page.text_content("#model-version") == "pixels-test0001"
    assert page.evaluate("document.getElementById('thumb').naturalWidth") == calendar.width  # the thumbnail
    assert "calendar.png" in page.text_content("#file-name")
    page.screenshot(path=str(tmp_path / "playground-image.png"), full_page=True)

    def drop(name: str, data: bytes, kind: str) -> None:
        """What a browser fires when a file is dragged from the desktop onto the zone."""
        transfer = page.evaluate_handle(
            """([name, b64, kind]) => {
                const transfer = new DataTransfer();
                const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                transfer.items.add(new File([bytes], name, { type: kind }));
                return transfer;
            }""", [name, base64.b64encode(data).decode(), kind])
        page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})

    shot = io.BytesIO()
    providers.save(shot, format="PNG")
    drop("providers.png", shot.getvalue(), "image/png")
    page.wait_for_function("document.getElementById('route').textContent === 'providers'")
    assert page.locator("#thumb").is_visible() and "providers.png" in page.text_content("#file-name")
    drop("notes.txt", b"not an image at all", "text/plain")  # the server's 422 reason, and no stale answer
    page.wait_for_selector("#error", state="visible")
    assert "422" in page.text_content("#error") and "not an image Pillow can read" in page.text_content("#error")
    assert page.locator("#output").is_hidden()
