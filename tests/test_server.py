"""The HTTP server: good requests, every kind of bad request (and still serving after), API key,
health and model endpoints, and refusing to start on a broken folder or a public host without key."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from routers import onnx_folder, tfidf_folder  # noqa: F401  (fixtures)

from routelet.serving.router_format import RouterInfo
from routelet.serving.runtime import Router, RouterError
from routelet.serving.server import Limits, MicroBatcher, ServeError, create_app, is_loopback, serve

SCRIPT = str(Path(sys.executable).parent / "routelet")
KEY = "test-key-123"


@pytest.fixture(scope="module")
def router(tfidf_folder) -> Router:
    return Router.load(tfidf_folder)


@pytest.fixture(scope="module")
def client(router) -> TestClient:
    return TestClient(create_app(router))


def assert_still_serving(client, headers=None):
    response = client.post("/v1/route", json={"text": "what is my account balance"}, headers=headers)
    assert response.status_code == 200 and response.json()["route"] == "banking"


def test_single_text(client, router):
    response = client.post("/v1/route", json={"text": "my flight from the airport", "top_k": 2})
    assert response.status_code == 200
    result = response.json()
    assert result == router.route_one("my flight from the airport", top_k=2)
    assert set(result) == {"route", "target", "confidence", "abstain", "top_k", "tier", "model_version"}
    assert result["route"] == "travel" and len(result["top_k"]) == 2


def test_batch(client):
    texts = ["balance", "flight", "tell me a joke", "zzz"]
    response = client.post("/v1/route", json={"texts": texts})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["route"] for r in results] == ["banking", "travel", "oos", "oos"]
    assert [r["abstain"] for r in results] == [False, False, True, True]
    assert client.post("/v1/route", json={"texts": []}).json() == {"results": []}


def test_onnx_router_serves(onnx_folder):
    client = TestClient(create_app(Router.load(onnx_folder)))
    assert client.post("/v1/route", json={"texts": ["balance", "airport"]}).json()["results"][1]["route"] == "travel"


BAD_REQUESTS = {
    "empty text": ({"json": {"text": ""}}, 422, "text: text is empty"),
    "blank text": ({"json": {"text": "   \n"}}, 422, "text: text is empty"),
    "empty text in batch": ({"json": {"texts": ["ok", "ok", "ok", ""]}}, 422, "texts[3]: text is empty"),
    "text too long": ({"json": {"text": "a" * 2001}}, 422, "text: text is 2,001 characters; the limit is 2,000"),
    "1 MB text": ({"json": {"text": "a" * 1_000_000}}, 413, "the limit is 262,144 bytes"),
    "10,000-item batch": ({"json": {"texts": ["hi"] * 10_000}}, 422, "texts: batch has 10,000 texts"),
    "not JSON": ({"content": b"text=hello"}, 422, "body: malformed JSON"),
    "truncated JSON": ({"content": b'{"text": "hel', "headers": {"content-type": "application/json"}},
                       422, "body: malformed JSON"),
    "empty body": ({"content": b""}, 422, "body: malformed JSON"),
    "JSON list": ({"json": ["hello"]}, 422, "body: Input should be an object"),
    "text not a string": ({"json": {"text": 42}}, 422, "text: Input should be a valid string"),
    "texts not a list": ({"json": {"texts": "hello"}}, 422, "texts: Input should be a valid array"),
    "texts item not a string": ({"json": {"texts": ["a", None]}}, 422, "texts[1]: Input should be a valid string"),
    "top_k not an int": ({"json": {"text": "a", "top_k": "3"}}, 422, "top_k: Input should be a valid integer"),
    "top_k zero": ({"json": {"text": "a", "top_k": 0}}, 422, "top_k: Input should be greater than"),
    "missing field": ({"json": {}}, 422, 'body: send exactly one of "text"'),
    "both fields": ({"json": {"text": "a", "texts": ["b"]}}, 422, 'body: send exactly one of "text"'),
    "unknown field": ({"json": {"txt": "a"}}, 422, "txt: unexpected field"),
    "bad Content-Length": ({"content": b"{}", "headers": {"content-length": "abc"}}, 400, "Content-Length"),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_request_gets_a_reason_and_the_server_keeps_serving(client, name):
    kwargs, status, reason = BAD_REQUESTS[name]
    response = client.post("/v1/route", **kwargs)
    assert response.status_code == status, response.text
    assert reason in response.json()["detail"]
    assert_still_serving(client)


def test_body_size_counts_the_bytes_not_the_header(client):
    def chunks():  # no Content-Length: chunked transfer
        for _ in range(80):
            yield b" " * 4096

    response = client.post("/v1/route", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "the limit is 262,144 bytes" in response.json()["detail"]
    assert_still_serving(client)


def test_limits_are_configurable(router):
    client = TestClient(create_app(router, limits=Limits(max_body_bytes=1000, max_batch=2, max_text_chars=10)))
    assert client.post("/v1/route", json={"texts": ["a", "b", "c"]}).status_code == 422
    assert client.post("/v1/route", json={"text": "a" * 11}).status_code == 422
    assert client.post("/v1/route", json={"texts": ["a" * 10] * 100}).status_code == 413
    assert client.post("/v1/route", json={"texts": ["balance", "flight"]}).status_code == 200
    with pytest.raises(ValueError, match="max_batch"):
        Limits(max_batch=0)


def test_api_key(router):
    client = TestClient(create_app(router, api_key=KEY))
    missing = client.post("/v1/route", json={"text": "balance"})
    assert missing.status_code == 401 and "missing X-API-Key" in missing.json()["detail"]
    wrong = client.post("/v1/route", json={"text": "balance"}, headers={"X-API-Key": "nope"})
    assert wrong.status_code == 401 and "invalid API key" in wrong.json()["detail"]
    # The key is checked before the body: no parsing for strangers.
    assert client.post("/v1/route", content=b"{bad").status_code == 401
    assert client.get("/v1/model").status_code == 401
    assert_still_serving(client, headers={"X-API-Key": KEY})
    assert client.get("/v1/model", headers={"X-API-Key": KEY}).status_code == 200
    assert client.get("/healthz").status_code == 200 and client.get("/").status_code == 200
    assert "X-API-Key" in json.dumps(client.get("/openapi.json").json()["components"])


def test_healthz_model_docs_and_playground(client, router, tfidf_folder):
    assert client.get("/healthz").json() == {"status": "ok", "model_version": "tfidf-test0001"}
    assert client.get("/v1/model").json() == RouterInfo.read(tfidf_folder).model_dump(mode="json")
    assert client.get("/docs").status_code == 200
    assert "/v1/route" in client.get("/openapi.json").json()["paths"]
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for element_id in ('id="text"', 'id="submit"', 'id="route"', 'id="bars"'):
        assert element_id in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing fetched from outside


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                            ("127.0.0.2", True), ("0.0.0.0", False), ("10.1.2.3", False),
                                            ("example.com", False)])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_serve_refuses_public_host_without_key(tfidf_folder):
    with pytest.raises(ServeError, match="API key"):
        serve(tfidf_folder, host="0.0.0.0", port=1)


def test_serve_refuses_missing_router():
    with pytest.raises(RouterError, match="no such router folder"):
        serve("/nonexistent", port=1)


@pytest.mark.parametrize(
    "args, message",
    [(["--router", "/nonexistent"], "/nonexistent: no such router folder"),
     (["--host", "0.0.0.0"], "without an API key")],
)
def test_cli_serve_refuses_to_start(tfidf_folder, args, message):
    env = {k: v for k, v in os.environ.items() if k != "ROUTELET_API_KEY"}
    argv = [SCRIPT, "serve", "--router", str(tfidf_folder), "--port", "1"] + args
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def run_batcher(route, requests: list[tuple[list[str], int]], release: threading.Event, max_texts: int = 4):
    """Send `requests` to a one-worker MicroBatcher while its first call is held until all are queued."""
    async def main():
        batcher = MicroBatcher(route, workers=1, max_texts=max_texts)
        tasks = [asyncio.create_task(batcher.route(texts, k)) for texts, k in requests]
        await asyncio.sleep(0.05)
        release.set()
        return await asyncio.gather(*tasks, return_exceptions=True)
    return asyncio.run(main())


def test_micro_batcher_coalesces_requests_that_wait(router):
    calls, release = [], threading.Event()

    def route(texts, top_k):
        calls.append((len(texts), top_k))
        release.wait(5)
        return router.route(texts, top_k)

    requests = [(["my balance"], 1), (["a flight"], 2), (["send money", "joke"], 3), (["airport"], 1),
                (["funds"], 2), ([], 3)]
    results = run_batcher(route, requests, release)
    # The first runs alone; the next three (4 texts, the cap) go as one batch, then the last text.
    assert calls == [(1, 1), (4, 3), (1, 2)]
    assert results == [router.route(texts, k) for texts, k in requests]


def test_micro_batcher_failure_reaches_every_waiting_request_and_it_keeps_serving(router):
    release, failed = threading.Event(), []

    def route(texts, top_k):
        release.wait(5)
        if "boom" in texts and not failed:
            failed.append(texts)
            raise RuntimeError("inference failed")
        return router.route(texts, top_k)

    results = run_batcher(route, [(["balance"], 1), (["boom"], 1), (["flight"], 1), (["airport"], 1)], release)
    assert results[0] == router.route(["balance"], 1)
    assert all(isinstance(r, RuntimeError) for r in results[1:])
    assert failed == [["boom", "flight", "airport"]]
    assert run_batcher(route, [(["boom"], 1)], threading.Event())[0][0]["route"] == "oos"
