"""The server under uvicorn on 127.0.0.1, with real sockets: a small request is not held up by heavy
ones in flight, stalled and half-sent requests are answered 408 and closed, HEAD and the trailing
slash. Timings are compared with each other (ratios, order), never with absolute milliseconds."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
import uvicorn
from routers import tfidf_folder  # noqa: F401  (fixture)

from routelet.serving.runtime import Router
from routelet.serving.server import Limits, create_app, uvicorn_config

FAST = Limits(header_timeout_s=0.5, body_timeout_s=0.5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(router: Router, limits: Limits = Limits()):
    """uvicorn serving create_app(router) in a thread, with serve()'s own config; yields the port."""
    port = _free_port()
    server = uvicorn.Server(uvicorn_config(create_app(router, limits=limits), "127.0.0.1", port, limits,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def router(tfidf_folder) -> Router:
    return Router.load(tfidf_folder)


def post(port: int, body: dict, timeout: float = 120) -> tuple[int, dict, dict, float]:
    """(status, JSON, headers, seconds) of one POST /v1/route on a fresh connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    started = time.perf_counter()
    connection.request("POST", "/v1/route", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    data = json.loads(response.read())
    elapsed = time.perf_counter() - started
    connection.close()
    return response.status, data, {k.lower(): v for k, v in response.getheaders()}, elapsed


def raw(port: int, payload: bytes, wait: float = 10.0) -> tuple[bytes, float]:
    """Send `payload` and read until the server closes: (everything read, seconds until closed)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(wait)
        started = time.perf_counter()
        sock.sendall(payload)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except socket.timeout:
            return data, float("inf")  # still open after `wait`
        return data, time.perf_counter() - started


# ---------------------------------------------------------------------------------------------
# head-of-line blocking


def test_a_small_request_is_not_held_up_by_heavy_ones(router):
    """Six of the largest requests the limits allow (250 texts, 64,000 characters), then one text:
    the one text must come back long before any heavy request does (before: it waited for all six)."""
    words = "please send money to my savings account and check the balance of my airline miles".split()
    heavy = {"texts": [" ".join(words[(i + j) % len(words)] for j in range(46))[:255] for i in range(250)]}
    assert sum(map(len, heavy["texts"])) <= Limits().max_total_chars
    with live_server(router) as port, ThreadPoolExecutor(6) as pool:
        post(port, {"text": "warm up"})
        heavy_started = time.perf_counter()
        futures = [pool.submit(post, port, heavy) for _ in range(6)]
        time.sleep(0.1)  # the heavy requests are in flight
        status, small, headers, small_s = post(port, {"text": "my flight from the airport"})
        small_done = time.perf_counter()
        heavies = [f.result() for f in futures]
    assert status == 200 and small["route"] == "travel"
    assert all(h[0] == 200 and len(h[1]["results"]) == 250 for h in heavies)
    heavy_done = [heavy_started + h[3] for h in heavies]
    assert small_done < min(heavy_done), "the small request finished after a heavy one"
    assert small_s < 0.25 * min(h[3] for h in heavies)
    assert 0 <= float(headers["x-queue-ms"]) <= 1000 * small_s


# ---------------------------------------------------------------------------------------------
# slow and stalled clients

HEAD = (b"POST /v1/route HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 40\r\n\r\n")


@pytest.mark.parametrize("payload", [b"", b"POST /v1/ro", HEAD[:-2]], ids=["nothing", "half a line", "no blank line"])
def test_a_stalled_request_head_is_answered_408_and_closed(router, payload):
    with live_server(router, FAST) as port:
        data, closed_after = raw(port, payload)
        assert data.startswith(b"HTTP/1.1 408 ") and b"did not arrive within 0.5 s" in data
        assert closed_after < 5
        assert post(port, {"text": "balance"})[0] == 200


def test_a_trickled_head_is_cut_at_the_deadline(router):
    """One byte every 0.1 s would keep a per-read timeout alive forever: the deadline is for the head."""
    with live_server(router, FAST) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(0.1)
        started, data = time.perf_counter(), b""
        for byte in HEAD * 5:  # 50 s of trickling if nobody stops it
            try:
                sock.sendall(bytes([byte]))
                data += sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:  # reset: the server closed while we were still sending
                break
            if data == b"" or data.endswith(b"did not arrive within 0.5 s"):
                break  # closed (b"" is end of stream), or the whole 408 is here
        assert time.perf_counter() - started < 5
        assert data == b"" or data.startswith(b"HTTP/1.1 408 ")


def test_a_stalled_body_is_answered_408_and_closed(router):
    with live_server(router, FAST) as port:
        data, closed_after = raw(port, HEAD + b'{"text": "bal')
        assert data.startswith(b"HTTP/1.1 408 ") and b"did not arrive within 0.5 s (13 bytes came)" in data
        assert b"connection: close" in data.lower() and closed_after < 5


def test_a_half_sent_second_request_on_a_kept_alive_connection_is_closed(router):
    with live_server(router, FAST) as port:
        body = b'{"text": "my account balance please!"}'
        full = HEAD.replace(b"40", str(len(body)).encode()) + body
        data, closed_after = raw(port, full + b"POST /v1/route HTTP/1.1\r\nHo")
        assert data.startswith(b"HTTP/1.1 200 ") and b'"route":"banking"' in data
        assert b"HTTP/1.1 408 " in data and closed_after < 5


def test_many_stalled_connections_are_all_closed_and_it_keeps_serving(router):
    with live_server(router, FAST) as port:
        sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(100)]
        for i, sock in enumerate(sockets):
            sock.sendall([b"", b"GET /hea", HEAD, HEAD + b"{"][i % 4])
        assert post(port, {"text": "balance"})[0] == 200  # while they stall
        time.sleep(1.5)
        for sock in sockets:
            sock.settimeout(5)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            assert b" 408 " in data
            sock.close()


# ---------------------------------------------------------------------------------------------
# small HTTP points, on the wire


def test_head_healthz_and_no_redirect_for_a_trailing_slash(router):
    with live_server(router) as port:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("HEAD", "/healthz")
        response = connection.getresponse()
        assert response.status == 200 and response.read() == b""
        connection.request("POST", "/v1/route/", b'{"text": "balance"}', {"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 404 and response.getheader("location") is None
        response.read()
        connection.close()
