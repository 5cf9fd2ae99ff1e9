"""The HTTP server: good requests, every kind of bad request (and still serving after), API key,
health and model endpoints, and refusing to start on a broken folder or a public host without key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from routers import onnx_folder, tfidf_folder  # noqa: F401  (fixtures)

from routelet.serving.router_format import RouterInfo
from routelet.serving.runtime import Router, RouterError
from routelet.serving.server import Limits, ServeError, create_app, is_loopback, serve

SCRIPT = str(Path(sys.executable).parent / "routelet")
KEY = "test-key-0123456789abcdef"


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
    assert set(result) == {"route", "target", "p", "confidence", "abstain", "abstain_reason", "top_k", "tier",
                           "model_version"}
    assert result["route"] == "travel" and len(result["top_k"]) == 2
    assert 0 <= float(response.headers["X-Queue-Ms"]) < 60_000


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
    "not JSON": ({"content": b"text=hello", "headers": {"content-type": "application/json"}}, 422,
                 "body: malformed JSON"),
    "truncated JSON": ({"content": b'{"text": "hel', "headers": {"content-type": "application/json"}},
                       422, "body: malformed JSON"),
    "empty body": ({"content": b"", "headers": {"content-type": "application/json"}}, 422, "body: malformed JSON"),
    "no Content-Type": ({"content": b'{"text": "hi"}'}, 415, "Content-Type is 'none'; send the body as JSON"),
    "text/plain (a browser's simple request)": (
        {"content": b'{"text": "hi"}', "headers": {"content-type": "text/plain;charset=UTF-8"}}, 415,
        "Content-Type is 'text/plain;charset=UTF-8'"),
    "form": ({"data": {"text": "hi"}}, 415, "Content-Type is 'application/x-www-form-urlencoded'"),
    "JSON look-alike type": ({"content": b'{"text": "hi"}', "headers": {"content-type": "application/jsonp"}}, 415,
                             "'application/jsonp'"),
    "texts too long together": ({"json": {"texts": ["a" * 2000] * 40}}, 422,
                                "texts: the texts total 80,000 characters; the limit is 64,000"),
    "JSON list": ({"json": ["hello"]}, 422, "body: Input should be an object"),
    "text not a string": ({"json": {"text": 42}}, 422, "text: Input should be a valid string"),
    "texts not a list": ({"json": {"texts": "hello"}}, 422, "texts: Input should be a valid array"),
    "texts item not a string": ({"json": {"texts": ["a", None]}}, 422, "texts[1]: Input should be a valid string"),
    "top_k not an int": ({"json": {"text": "a", "top_k": "3"}}, 422, "top_k: Input should be a valid integer"),
    "top_k zero": ({"json": {"text": "a", "top_k": 0}}, 422, "top_k: Input should be greater than"),
    "missing field": ({"json": {}}, 422, 'body: send exactly one of "text"'),
    "both fields": ({"json": {"text": "a", "texts": ["b"]}}, 422, 'body: send exactly one of "text"'),
    "unknown field": ({"json": {"txt": "a"}}, 422, "txt: unexpected field"),
    "bad Content-Length": ({"content": b"{}", "headers": {"content-length": "abc", "content-type": "application/json"}},
                           400, "Content-Length"),
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
    with pytest.raises(ValueError, match="body_timeout_s must be a positive number of seconds"):
        Limits(body_timeout_s=0)
    tight = TestClient(create_app(router, limits=Limits(max_total_chars=15)))
    assert tight.post("/v1/route", json={"texts": ["balance", "flight"]}).status_code == 200
    refused = tight.post("/v1/route", json={"texts": ["balance", "flight", "airport"]})
    assert refused.status_code == 422 and "texts total 20 characters; the limit is 15" in refused.json()["detail"]


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


@pytest.mark.parametrize("key, message", [("short-key", "is 9 characters; it needs at least 16"),
                                          ("", "is 0 characters"),
                                          ("sixteen chars ok", "only ASCII letters, digits and punctuation"),
                                          ("clé-0123456789abcdef", "only ASCII")])
def test_weak_api_key_is_refused(router, key, message):
    with pytest.raises(ServeError, match=message):
        create_app(router, api_key=key)


def test_cli_serve_refuses_a_short_api_key(tfidf_folder):
    done = subprocess.run([SCRIPT, "serve", "--router", str(tfidf_folder), "--port", "1", "--api-key", "hunter2"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "needs at least 16" in done.stderr and "Traceback" not in done.stderr


def test_garbage_abstains_with_a_reason(client):
    texts = ["\u0000\u0000", "\u200b", "\U0001F642\U0001F389", "ß" * 500, "\uFFFE\uFFFF", "?!...", "balance"]
    results = client.post("/v1/route", json={"texts": texts}).json()["results"]
    assert [r["abstain_reason"] for r in results] == ["no readable content"] * 3 + ["no known tokens"] + \
        ["no readable content"] * 2 + [None]
    assert all(r["route"] == "oos" and r["abstain"] for r in results[:-1])
    assert client.post("/v1/route", json={"text": "\u200b"}).json()["abstain_reason"] == "no readable content"


def test_healthz_model_docs_and_playground(client, router, tfidf_folder):
    assert client.get("/healthz").json() == {"status": "ok", "model_version": "tfidf-test0001"}
    assert client.get("/v1/model").json() == RouterInfo.read(tfidf_folder).model_dump(mode="json")
    assert client.head("/healthz").status_code == 200 and client.head("/healthz").content == b""
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "cdn" not in docs.text and "https://" not in docs.text  # Swagger UI's files come from here
    for asset in ("/static/docs/swagger-ui-bundle.js", "/static/docs/swagger-ui.css"):
        assert asset in docs.text and client.get(asset).status_code == 200
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
