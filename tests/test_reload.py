"""The router holder: a real uvicorn server under load switches router twice (promote, rollback)
with 0 failed requests; a broken or half-written folder leaves the old router serving; the self-check
catches changed files; SIGHUP reloads a serving process."""

from __future__ import annotations

import itertools
import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from routers import KEYWORDS, make_onnx_router
from test_promote import train_router, write_jsonl

from routelet.serving.promote import Settings, promote, rollback
from routelet.serving.registry import Registry
from routelet.serving.reload import SELFCHECK_FILE, RouterHolder, SelfCheckError, load_checked, self_check
from routelet.serving.server import create_app

# Client threads; each sends at least MIN requests, then stops when told or at CAP (the run is bounded).
CLIENTS, MIN, CAP = 4, 200, 400


@pytest.fixture(scope="module")
def candidates(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("reload")
    return {"a": train_router(base / "a", "route-a"), "b": train_router(base / "b", "route-b"),
            "onnx": make_onnx_router(base / "onnx", model_version="route-b")}  # another kind of tier


@pytest.fixture
def settings(tmp_path) -> Settings:
    rng = random.Random(3)
    rows = [{"text": f"my {rng.choice(words)} please", "label": label} for label, words in KEYWORDS.items()
            for _ in range(10)]
    return Settings(registry=tmp_path / "promoted", holdout=write_jsonl(tmp_path / "holdout.jsonl", rows))


@pytest.fixture
def promoted(candidates, settings, capsys) -> Path:
    """A registry whose `current` is route-a."""
    assert promote(candidates["a"], settings) == 0
    capsys.readouterr()
    return settings.registry / "current"


def wait_for(condition, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


@contextmanager
def uvicorn_server(app):
    """A real uvicorn server on 127.0.0.1 (an ephemeral port) in a thread."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, what="uvicorn to start")
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


def test_holder_routes_like_its_router_and_reload_keeps_the_old_one_on_failure(promoted, settings):
    holder = RouterHolder.load(promoted)
    assert holder.model_version == "route-a" and holder.route_one("my savings account")["route"] == "banking"
    assert holder.labels == holder.router.labels and holder.probs(["wire it"]).shape == (1, 4)
    registry = Registry(settings.registry)
    broken = registry.folder("broken-1")
    broken.mkdir()
    (broken / "router.json").write_text((promoted / "router.json").read_text())
    (broken / "tfidf.json").write_text((promoted / "tfidf.json").read_text())
    (broken / "tfidf.npz").write_bytes((promoted / "tfidf.npz").read_bytes()[:100])  # a cut-off copy
    registry.point("broken-1")
    outcome = holder.reload()
    assert not outcome["ok"] and "tfidf.npz" in outcome["error"] and holder.model_version == "route-a"
    assert holder.status()["last_reload"]["ok"] is False
    assert holder.route_one("book a flight")["route"] == "travel"  # still serving


def test_self_check_catches_changed_files(promoted, candidates, settings, tmp_path):
    router = load_checked(promoted)
    checks = (promoted / SELFCHECK_FILE).read_text().splitlines()
    assert len(checks) >= 3 and self_check(router) == len(checks) + 9  # its texts and the fixed ones
    copy = Registry(settings.registry).folder("route-a")
    first = json.loads(checks[0])
    (copy / SELFCHECK_FILE).write_text(json.dumps({**first, "route": "travel" if first["route"] != "travel"
                                                   else "banking"}) + "\n")
    with pytest.raises(SelfCheckError, match=r"selfcheck\.jsonl: text 1 routes to .*files changed since"):
        load_checked(promoted)
    (copy / SELFCHECK_FILE).write_text('{"text": "half\n')
    with pytest.raises(SelfCheckError, match=r"selfcheck\.jsonl:1: not a"):
        load_checked(promoted)


def test_watcher_waits_for_a_half_written_folder(candidates, tmp_path):
    """A folder re-exported in place: a broken router.json is not swapped in; the finished one is."""
    folder = tmp_path / "router"
    train_router(folder, "inplace-1")
    holder = RouterHolder.load(folder, interval=0.05, settle=0.05).start()
    try:
        good = (folder / "router.json").read_text()
        (folder / "router.json").write_text(good[: len(good) // 2])
        wait_for(lambda: holder.status()["last_reload"]["error"], what="the failed reload")
        assert holder.model_version == "inplace-1" and "not valid JSON" in holder.status()["last_reload"]["error"]
        (folder / "router.json").write_text(good.replace("inplace-1", "inplace-2"))
        wait_for(lambda: holder.model_version == "inplace-2", what="the reload of the finished folder")
    finally:
        holder.stop()


def client(url: str, stop: threading.Event, seed: int, log: list) -> None:
    rng = random.Random(seed)
    words = list(itertools.chain(*KEYWORDS.values()))
    with httpx.Client(base_url=url, timeout=30) as http:
        for sent in range(CAP):
            if stop.is_set() and sent >= MIN:
                return
            try:
                response = http.post("/v1/route", json={"text": " ".join(rng.sample(words, 2))})
                body = response.json()
                ok = response.status_code == 200 and body["route"] in {"banking", "travel", "oos"}
                log.append((ok, body.get("model_version"), response.status_code))
            except Exception as exc:  # a dropped connection or a bad body is a failed request
                log.append((False, None, repr(exc)))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["b", "onnx"])
def test_server_under_load_switches_router_twice_with_no_failed_request(promoted, candidates, settings, kind):
    holder = RouterHolder.load(promoted, interval=0.05, settle=0.05).start()
    logs: list[list] = [[] for _ in range(CLIENTS)]
    stop = threading.Event()
    total = lambda: sum(map(len, logs))
    served = lambda version: sum(1 for log in logs for _, v, _ in log if v == version)
    started = time.monotonic()
    try:
        with uvicorn_server(create_app(holder)) as url:
            threads = [threading.Thread(target=client, args=(url, stop, i, logs[i])) for i in range(CLIENTS)]
            for thread in threads:
                thread.start()
            wait_for(lambda: total() >= 100, what="100 answers from route-a")
            assert promote(candidates[kind], settings) == 0  # equal quality on this holdout: passes the gate
            wait_for(lambda: served("route-b") >= 60, what="60 answers from route-b")
            after_b = total()
            assert rollback(settings.registry) == 0
            wait_for(lambda: holder.model_version == "route-a" and total() >= after_b + 100,
                     what="route-a back, and 100 more answers")
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
    finally:
        stop.set()
        holder.stop()
    seconds = time.monotonic() - started
    failed = [entry for log in logs for entry in log if not entry[0]]
    assert not failed, failed[:5]
    assert all(len(log) < CAP for log in logs), "the clients hit their cap before both switches were seen"
    for log in logs:  # each client saw a, then b, then a again: one swap each way, no flapping
        phases = [version for version, _ in itertools.groupby(v for _, v, _ in log)]
        assert phases == ["route-a", "route-b", "route-a"], phases
    print(f"\n{total()} requests from {CLIENTS} clients in {seconds:.1f} s, 0 failed; "
          f"last reload took {holder.status()['last_reload']['seconds']} s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SERVE = """
import sys, uvicorn
from routelet.serving.reload import RouterHolder
from routelet.serving.server import create_app
holder = RouterHolder.load(sys.argv[1]).start(watch=False, sighup=True)  # SIGHUP only: no polling
uvicorn.run(create_app(holder), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


@pytest.mark.slow
def test_sighup_reloads_a_serving_process(promoted, candidates, settings):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", SERVE, str(promoted), str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/v1/route"

    def version() -> str | None:
        try:
            return httpx.post(url, json={"text": "my savings"}, timeout=5).json()["model_version"]
        except httpx.TransportError:
            return None

    try:
        wait_for(lambda: version() == "route-a" or process.poll() is not None, what="the server to start")
        assert process.poll() is None, process.stdout.read()
        registry = Registry(settings.registry)
        registry.store(candidates["b"], "route-b", [])
        registry.point("route-b")  # no log line: only the signal may make it reload
        time.sleep(0.3)
        assert version() == "route-a"  # watch=False: nothing reloads without the signal
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: version() == "route-b", what="the reload after SIGHUP")
        assert process.poll() is None  # SIGHUP did not end it
    finally:
        process.terminate()
        output = process.communicate(timeout=15)[0]
    assert "reloaded" in output and "route-a -> route-b" in output, output
