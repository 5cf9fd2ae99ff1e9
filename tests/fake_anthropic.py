"""Local stand-ins for the Anthropic Messages/Batches API and an OpenAI-compatible endpoint.

Real HTTP servers on 127.0.0.1 (stdlib http.server, one thread per request), spoken to by the real
`anthropic` SDK (`base_url=server.url`) and by httpx, so tests exercise the real client code:

    with FakeAnthropic(answer=lambda text, enum: "balance") as server:
        client = anthropic.Anthropic(api_key="test", base_url=server.url)
        server.script("rate_limit:1.5", "server_error")   # the next two Messages requests
        ...
        server.answered          # 200 answers sent, per redacted request text
        server.requests          # every request: path, headers, raw body, arrival time

Behaviours (one per request: the scripted queue first, then `behaviour(text)`, then "answer"):
  answer            a tool_use with the label `answer(text, enum)` (default: the first enum value
                    named in the text, else the last one)
  rate_limit:S      429 with `retry-after: S`
  server_error      500
  overloaded        529
  delay:S           sleep S seconds, then answer (longer than the client timeout: a timeout)
  hang              no answer until the server stops (then a 500): a request in flight when the
                    client is killed, never counted as answered
  malformed         a tool_use whose input is missing the label field
  broken_body       200 with a body that is not JSON
  off_taxonomy      a tool_use with a label that is not in the enum
  refusal           stop_reason "refusal" and a text block, no tool_use
  unauthorized      401
  bad_request       400 (e.g. a prompt too long)
Batches: POST /v1/messages/batches, GET .../{id} (ended after `batch_polls` retrieves),
GET .../{id}/results (JSONL). A batch request whose behaviour is "server_error" ends "errored";
`failing_creates = n` answers the next n batch creations with a 500.
FakeOpenAI answers POST /v1/chat/completions with `content(text)` as the message content.
A request holding an image (an Anthropic base64 image block, or an OpenAI `image_url` data: URL)
stands as "image:<sha-256 of the decoded bytes>" wherever a request text is used.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

REQUEST = re.compile(r"<request>(.*)</request>", re.S)


def image_bytes(block: dict) -> bytes:
    """The decoded bytes of an Anthropic image block or an OpenAI image_url part."""
    if block["type"] == "image":
        return base64.b64decode(block["source"]["data"], validate=True)
    header, _, data = block["image_url"]["url"].partition(",")
    assert header.startswith("data:image/") and header.endswith(";base64"), header
    return base64.b64decode(data, validate=True)


def request_text(body: dict) -> str:
    """The user text inside the <request> tags of a Messages or chat-completions body, or
    "image:<sha-256>" for a request holding an image."""
    content = body["messages"][-1]["content"]
    if isinstance(content, list):
        images = [image_bytes(block) for block in content if block.get("type") in ("image", "image_url")]
        if images:
            return "image:" + hashlib.sha256(images[0]).hexdigest()
        content = "".join(block.get("text", "") for block in content)
    match = REQUEST.search(content)
    return match.group(1) if match else content


def first_named(text: str, enum: list[str]) -> str:
    return next((value for value in enum if value in text), enum[-1])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        record = {"method": self.command, "path": self.path, "headers": dict(self.headers), "raw": raw,
                  "time": time.monotonic()}
        with self.server.owner.lock:
            self.server.owner.requests.append(record)
        status, headers, body = self.server.owner.respond(self.command, self.path.split("?")[0], raw)
        try:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass

    do_GET = do_POST = _handle


class _Server:
    """The HTTP plumbing shared by both stand-ins."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self._queue: deque[str] = deque()
        self.release = threading.Event()  # ends every "hang"
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._http.daemon_threads = True
        self._http.block_on_close = False
        self._http.owner = self
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}"
        self._thread = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self._http.shutdown()
        self._http.server_close()

    def script(self, *behaviours: str) -> None:
        """The behaviours of the next requests, in order; afterwards `behaviour(text)` decides."""
        with self.lock:
            self._queue.extend(behaviours)

    def _next_behaviour(self, text: str) -> str:
        with self.lock:
            if self._queue:
                return self._queue.popleft()
        return self.behaviour(text) or "answer"

    def raw_bodies(self) -> bytes:
        return b"\n".join(r["raw"] for r in self.requests)

    def count(self, path: str, method: str = "POST") -> int:
        return sum(1 for r in self.requests if r["path"].split("?")[0] == path and r["method"] == method)

    @staticmethod
    def _json(status: int, payload, headers: dict | None = None) -> tuple[int, dict, bytes]:
        return status, {"content-type": "application/json", **(headers or {})}, json.dumps(payload).encode()

    def _error(self, status: int, kind: str, headers: dict | None = None):
        return self._json(status, {"type": "error", "error": {"type": kind, "message": f"fake {kind}"}}, headers)

    def _common(self, behaviour: str):
        """Failure behaviours both stand-ins share; None when the behaviour is an answer."""
        name, _, arg = behaviour.partition(":")
        if name == "rate_limit":
            return self._error(429, "rate_limit_error", {"retry-after": arg or "1"})
        if name == "server_error":
            return self._error(500, "api_error")
        if name == "overloaded":
            return self._error(529, "overloaded_error")
        if name == "unauthorized":
            return self._error(401, "authentication_error")
        if name == "bad_request":
            return self._error(400, "invalid_request_error")
        if name == "broken_body":
            return 200, {"content-type": "application/json"}, b'{"id": "msg_1", "content": [{"type": "tool_'
        if name == "hang":
            self.release.wait(120)
            return self._error(500, "api_error")
        if name == "delay":
            time.sleep(float(arg))
        return None


class FakeAnthropic(_Server):
    def __init__(self, answer: Callable[[str, list[str]], str] = first_named,
                 behaviour: Callable[[str], str | None] = lambda text: None, batch_polls: int = 1) -> None:
        super().__init__()
        self.answer, self.behaviour, self.batch_polls = answer, behaviour, batch_polls
        self.answered: Counter[str] = Counter()  # 200 answers per request text: what was paid for
        self.batches: dict[str, dict] = {}
        self.failing_creates = 0
        self._cached_systems: set[str] = set()

    def respond(self, method: str, path: str, raw: bytes):
        if method == "POST" and path == "/v1/messages":
            body = json.loads(raw)
            return self._message_response(body, self._next_behaviour(request_text(body)))
        if method == "POST" and path == "/v1/messages/batches":
            with self.lock:
                fail, self.failing_creates = self.failing_creates > 0, max(0, self.failing_creates - 1)
            if fail:
                return self._error(500, "api_error")
            return self._json(200, self._create_batch(json.loads(raw)["requests"]))
        match = re.fullmatch(r"/v1/messages/batches/([\w-]+)(/results)?", path)
        if method == "GET" and match and match.group(1) in self.batches:
            batch = self.batches[match.group(1)]
            if match.group(2):
                lines = [json.dumps(line) for line in batch["results"]]
                return 200, {"content-type": "application/binary"}, ("\n".join(lines) + "\n").encode()
            batch["polls"] += 1
            return self._json(200, self._batch_object(batch))
        return self._error(404, "not_found_error")

    def _message_response(self, body: dict, behaviour: str):
        failure = self._common(behaviour)
        if failure is not None:
            return failure
        text = request_text(body)
        with self.lock:
            self.answered[text] += 1
        return self._json(200, self._message(body, behaviour, text))

    def _message(self, body: dict, behaviour: str, text: str) -> dict:
        tool = body["tools"][0]
        (field, spec), = [(k, v) for k, v in tool["input_schema"]["properties"].items() if "enum" in v]
        content = [{"type": "tool_use", "id": "toolu_1", "name": tool["name"],
                    "input": {field: self.answer(text, spec["enum"]), "reason": "fake"}}]
        stop = "tool_use"
        if behaviour == "malformed":
            content[0]["input"] = {"labl": 3}
        elif behaviour == "off_taxonomy":
            content[0]["input"] = {field: "definitely_not_a_label"}
        elif behaviour == "refusal":
            content, stop = [{"type": "text", "text": "I can't help with that."}], "refusal"
        return {"id": "msg_fake", "type": "message", "role": "assistant", "model": body["model"],
                "content": content, "stop_reason": stop, "stop_sequence": None, "usage": self._usage(body)}

    def _usage(self, body: dict) -> dict:
        system = json.dumps(body.get("system", ""))
        cached = any(isinstance(b, dict) and b.get("cache_control") for b in body.get("system", []))
        system_tokens = len(system) // 4
        with self.lock:
            hit = system in self._cached_systems
            if cached:
                self._cached_systems.add(system)
        return {"input_tokens": len(json.dumps(body["messages"])) // 4 + (0 if cached else system_tokens),
                "output_tokens": 20,
                "cache_creation_input_tokens": system_tokens if cached and not hit else 0,
                "cache_read_input_tokens": system_tokens if cached and hit else 0}

    def _create_batch(self, requests: list[dict]) -> dict:
        batch_id = f"msgbatch_{len(self.batches) + 1:04d}"
        results = []
        for item in requests:
            text = request_text(item["params"])
            behaviour = self._next_behaviour(text)
            if behaviour == "server_error":
                result = {"type": "errored", "error": {"type": "error", "error": {"type": "api_error",
                                                                                "message": "fake"}}}
            else:
                with self.lock:
                    self.answered[text] += 1
                result = {"type": "succeeded", "message": self._message(item["params"], behaviour, text)}
            results.append({"custom_id": item["custom_id"], "result": result})
        self.batches[batch_id] = {"id": batch_id, "polls": 0, "results": results}
        return self._batch_object(self.batches[batch_id])

    def _batch_object(self, batch: dict) -> dict:
        ended = batch["polls"] >= self.batch_polls
        n = len(batch["results"])
        succeeded = sum(r["result"]["type"] == "succeeded" for r in batch["results"])
        return {"id": batch["id"], "type": "message_batch", "processing_status": "ended" if ended else "in_progress",
                "request_counts": {"processing": 0 if ended else n, "succeeded": succeeded if ended else 0,
                                   "errored": n - succeeded if ended else 0, "canceled": 0, "expired": 0},
                "created_at": "2026-01-01T00:00:00Z", "expires_at": "2026-01-02T00:00:00Z",
                "ended_at": "2026-01-01T00:01:00Z" if ended else None, "archived_at": None,
                "cancel_initiated_at": None,
                "results_url": f"{self.url}/v1/messages/batches/{batch['id']}/results" if ended else None}


class FakeOpenAI(_Server):
    """POST /v1/chat/completions: the message content is `content(text)` (any string)."""

    def __init__(self, content: Callable[[str], str], behaviour: Callable[[str], str | None] = lambda t: None):
        super().__init__()
        self.content, self.behaviour = content, behaviour
        self.answered: Counter[str] = Counter()

    def respond(self, method: str, path: str, raw: bytes):
        if method != "POST" or path != "/v1/chat/completions":
            return self._error(404, "not_found_error")
        body = json.loads(raw)
        text = request_text(body)
        failure = self._common(self._next_behaviour(text))
        if failure is not None:
            return failure
        with self.lock:
            self.answered[text] += 1
        return self._json(200, {
            "id": "chatcmpl-fake", "object": "chat.completion", "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": self.content(text)}}],
            "usage": {"prompt_tokens": len(raw) // 4, "completion_tokens": 12, "total_tokens": len(raw) // 4 + 12},
        })
