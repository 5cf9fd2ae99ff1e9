"""`routelet serve` as a user runs it, in a real process: a promotion is picked up while clients
keep sending (no failed request, /healthz names the new version), --no-reload keeps the router it
loaded, and --log-samples writes every routed text, redacted, with its decision, which
`routelet.data.samples.pull` reads back after the server stopped.

    .venv/bin/pytest -q tests/test_serve_wiring.py
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from test_reload import candidates, free_port, promoted, settings, wait_for  # noqa: F401  (fixtures)

from routelet.data.samples import pull
from routelet.serving.preprocess import redact
from routelet.serving.registry import Registry

SECRET = "jane.doe@example.com"


def start(router: Path, *options: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "routelet.cli", "serve", "--router", str(router),
                                "--port", str(port), *options],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return process.poll() is not None

    wait_for(up, timeout=60, what="routelet serve to start")
    assert process.poll() is None, process.stdout.read()
    return process, url


def stop(process: subprocess.Popen) -> str:
    """SIGTERM, as a supervisor stops it: uvicorn shuts down, serve() closes what it opened and the
    process exits 143 (128 + SIGTERM), not killed by the signal before its cleanup."""
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=30)[0]
    assert process.returncode == 128 + signal.SIGTERM, output
    return output


def version(url: str) -> str:
    return httpx.get(f"{url}/healthz", timeout=5).json()["model_version"]


@pytest.mark.slow
def test_serve_picks_up_a_promotion_under_load_and_logs_every_text(promoted, candidates, settings, tmp_path):
    samples = tmp_path / "samples"
    process, url = start(promoted, "--log-samples", str(samples))
    sent, failures, versions, done = [], [], set(), threading.Event()

    def client(number: int) -> None:
        with httpx.Client(timeout=30) as http:
            i = 0
            while not done.is_set() or i < 20:
                text = f"my savings {number}-{i} mail {SECRET}" if i % 2 else f"book a flight {number}-{i}"
                try:
                    response = http.post(f"{url}/v1/route", json={"text": text})
                    assert response.status_code == 200, response.text
                    versions.add(response.json()["model_version"])
                    sent.append((text, response.json()))
                except Exception as exc:  # counted, not raised: the assertion below names them
                    failures.append(repr(exc))
                i += 1

    try:
        assert version(url) == "route-a"
        threads = [threading.Thread(target=client, args=(n,)) for n in range(3)]
        for thread in threads:
            thread.start()
        registry = Registry(settings.registry)
        registry.store(candidates["b"], "route-b", [])
        registry.point("route-b")  # what `routelet promote` does last: the watcher sees the link move
        wait_for(lambda: version(url) == "route-b", timeout=30, what="the promotion to be served")
        wait_for(lambda: "route-b" in versions, timeout=30, what="a request answered by route-b")
        done.set()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        done.set()
        output = stop(process)
    assert failures == [], failures[:3]
    assert versions == {"route-a", "route-b"}
    assert "route-a -> route-b" in output, output

    summary = pull(str(samples), tmp_path / "pulled")
    rows = [json.loads(line) for line in (tmp_path / "pulled" / "pulled.jsonl").read_text().splitlines()]
    assert summary.new_rows == len(sent) == len(rows) and summary.new_quarantined == 0
    assert not any(SECRET in row["text"] for row in rows)
    logged = {row["text"]: row["meta"] for row in rows}
    for text, result in sent:
        meta = logged[redact(text)]
        assert (meta["route"], meta["model_version"], meta["abstain"]) == \
            (result["route"], result["model_version"], result["abstain"])


def test_no_reload_keeps_the_router_it_loaded(promoted, candidates, settings):
    process, url = start(promoted, "--no-reload")
    try:
        registry = Registry(settings.registry)
        registry.store(candidates["b"], "route-b", [])
        registry.point("route-b")
        time.sleep(2.5)  # more than the watcher's poll + settle: a reloading server would have swapped
        assert version(url) == "route-a"
        assert httpx.post(f"{url}/v1/route", json={"text": "my savings"}, timeout=5).json()["model_version"] \
            == "route-a"
    finally:
        stop(process)


def test_log_samples_into_a_file_is_refused_with_the_path(promoted, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    result = subprocess.run([sys.executable, "-m", "routelet.cli", "serve", "--router", str(promoted),
                             "--port", str(free_port()), "--log-samples", str(blocker / "samples")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert str(blocker) in result.stderr and "Traceback" not in result.stderr
