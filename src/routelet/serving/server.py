"""HTTP server for a router folder: FastAPI app + uvicorn, without torch.

    routelet serve --router router --port 8000        # or: serve("router", port=8000)

Endpoints: POST /v1/route ({"text"} or {"texts"}, optional "top_k"), GET /v1/model (router.json),
GET /healthz, GET / (playground page), /docs (OpenAPI). `create_app(router)` builds the app for
tests and embedding. Requests are checked before any inference: an outer ASGI guard enforces the
API key and the body size (413), the request model enforces the batch size, text length and
field types (422 with the field, e.g. `texts[3]: text is empty`). Inference runs in worker threads,
one per core; requests that arrive while they are busy are coalesced into one batch (`MicroBatcher`).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import os
from collections import deque
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import anyio.to_thread
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError,
                      model_validator)

from routelet.serving.runtime import Router

API_KEY_HEADER = "X-API-Key"


class ServeError(RuntimeError):
    """A server configuration that must not start (e.g. public host without an API key)."""


@dataclass(frozen=True)
class Limits:
    """Request limits; anything above them is refused before inference."""

    max_body_bytes: int = 256 * 1024
    max_batch: int = 256
    max_text_chars: int = 2000
    max_top_k: int = 100

    def __post_init__(self):
        for name, value in vars(self).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Limits.{name} must be a positive integer, got {value!r}")


# --------------------------------------------------------------------------------------------
# request and response models


class TopRoute(BaseModel):
    route: str
    target: str | None
    p: float


class RouteResult(BaseModel):
    route: str | None = Field(description="chosen route; the reject route (or null) when abstaining")
    target: str | None
    confidence: float = Field(description="probability of the most likely route")
    abstain: bool
    top_k: list[TopRoute]
    tier: str = Field(description="the tier (model family) that answered")
    model_version: str


class RouteResults(BaseModel):
    results: list[RouteResult]


def request_model(limits: Limits) -> type[BaseModel]:
    """The POST /v1/route body, with this app's limits built into its validators."""

    def check_text(text: str) -> str:
        if not text.strip():
            raise ValueError("text is empty")
        if len(text) > limits.max_text_chars:
            raise ValueError(f"text is {len(text):,} characters; the limit is {limits.max_text_chars:,}")
        return text

    def check_batch(texts: Any) -> Any:
        if isinstance(texts, list) and len(texts) > limits.max_batch:
            raise ValueError(f"batch has {len(texts):,} texts; the limit is {limits.max_batch:,}: "
                             "split it into several requests")
        return texts

    Text = Annotated[str, AfterValidator(check_text)]

    class RouteRequest(BaseModel):
        """Send exactly one of `text` (one result back) or `texts` (`{"results": [...]}` back)."""

        model_config = ConfigDict(strict=True, extra="forbid")
        text: Text | None = Field(None, description=f"one text, at most {limits.max_text_chars} characters")
        texts: Annotated[list[Text], BeforeValidator(check_batch)] | None = Field(
            None, description=f"a batch of at most {limits.max_batch} texts"
        )
        top_k: int = Field(3, ge=1, le=limits.max_top_k, description="how many top routes to list")

        @model_validator(mode="after")
        def one_of_text_or_texts(self):
            if (self.text is None) == (self.texts is None):
                raise ValueError('send exactly one of "text" (a string) or "texts" (a list of strings)')
            return self

    return RouteRequest


def _field(loc: tuple) -> str:
    """('texts', 3) -> 'texts[3]'; () -> 'body'."""
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "body"


def _validation_reasons(error: ValidationError) -> list[dict]:
    reasons = []
    for e in error.errors(include_url=False):
        if e["type"] == "json_invalid":
            reasons.append({"field": "body", "reason": f"malformed JSON ({e['msg']})"})
            continue
        message = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            message = "unexpected field; the body takes text, texts and top_k"
        reasons.append({"field": _field(e["loc"]), "reason": message})
    return reasons


def _error(status: int, reasons: list[dict] | str) -> JSONResponse:
    if isinstance(reasons, str):
        return JSONResponse({"detail": reasons}, status_code=status)
    detail = "; ".join(f"{r['field']}: {r['reason']}" for r in reasons)
    return JSONResponse({"detail": detail, "errors": reasons}, status_code=status)


# --------------------------------------------------------------------------------------------
# outer guard: API key and body size, before FastAPI parses anything


class _Guard:
    """Pure ASGI middleware: checks the API key on /v1/*, then reads the body with a size cap
    (Content-Length is checked first, but the bytes actually received are what count)."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app, self.max_body = app, max_body_bytes
        self.api_key = api_key.encode() if api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.api_key is not None and scope["path"].startswith("/v1/"):
            given = headers.get(API_KEY_HEADER.lower().encode())
            if given is None:
                return await _error(401, f"missing {API_KEY_HEADER} header: this server needs an API key")(
                    scope, receive, send)
            if not hmac.compare_digest(given, self.api_key):
                return await _error(401, f"invalid API key in the {API_KEY_HEADER} header")(scope, receive, send)
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return await _error(400, "Content-Length header is not a number")(scope, receive, send)
            if int(length) > self.max_body:
                return await self._too_large(int(length), scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                return await self._too_large(size, scope, receive, send, at_least=True)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, size: int, scope, receive, send, at_least: bool = False):
        more = "more than " if at_least else ""
        reason = (f"request body is {more}{size:,} bytes; the limit is {self.max_body:,} bytes: "
                  "send fewer or shorter texts")
        await _error(413, reason)(scope, receive, send)


# --------------------------------------------------------------------------------------------
# the app


def playground_html() -> str:
    return resources.files("routelet.serving").joinpath("static/playground.html").read_text(encoding="utf-8")


def create_app(router: Router, api_key: str | None = None, limits: Limits = Limits()) -> FastAPI:
    """The FastAPI app serving `router`. With `api_key`, /v1/* needs the X-API-Key header."""
    RouteRequest = request_model(limits)
    page = playground_html()
    health = {"status": "ok", "model_version": router.model_version}
    batcher = MicroBatcher(router.route, workers=os.cpu_count() or 1, max_texts=limits.max_batch)

    app = FastAPI(
        title="routelet",
        version=router.model_version,
        description=f"Router `{router.model_version}` (tiers: {', '.join(router.tier_names)}): routes "
        + ", ".join(r["name"] for r in router.routes) + ".",
    )
    key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False)

    def check_key(given: str | None = Depends(key_header)) -> None:
        # The guard already refused bad keys; this repeats it and shows the lock in /docs.
        if given is None or not hmac.compare_digest(given.encode(), api_key.encode()):
            raise HTTPException(401, f"invalid or missing {API_KEY_HEADER} header")

    v1 = [Depends(check_key)] if api_key else []

    @app.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/healthz")
    def healthz() -> dict:
        return health

    @app.get("/v1/model", dependencies=v1, summary="router.json of the served router")
    def model() -> dict:
        return router.info.model_dump(mode="json")

    @app.post(
        "/v1/route",
        dependencies=v1,
        summary="Route one text or a batch",
        response_model=RouteResult | RouteResults,
        responses={413: {"description": "body too large"}, 422: {"description": "invalid request"},
                   401: {"description": "missing or wrong API key"}},
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": RouteRequest.model_json_schema()}}}},
    )
    async def route(request: Request):
        try:
            body = RouteRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            return _error(422, _validation_reasons(exc))
        texts = [body.text] if body.texts is None else body.texts
        results = await batcher.route(texts, body.top_k)
        # The runtime already returns the documented shape: no second validation pass.
        return JSONResponse(results[0] if body.texts is None else {"results": results})

    app.add_middleware(_Guard, api_key=api_key, max_body_bytes=limits.max_body_bytes)
    return app


class MicroBatcher:
    """Runs `route(texts, top_k)` in at most `workers` threads; requests that arrive while every
    worker is busy wait in a queue, and a worker that frees up takes all of them (up to
    `max_texts` texts) as one batch. One call per batch saves the per-call overhead (thread hop,
    session call): measured with the MiniLM int8 router, 3.3-3.5 ms per text alone against
    2.8-3.0 ms in batches of 4 to 8. The model's own compute grows with the tokens, so batching
    cannot go further than that. An idle server still runs each request at once, alone."""

    def __init__(self, route, workers: int, max_texts: int):
        self._route, self.workers, self.max_texts = route, workers, max_texts
        self._pending: deque[tuple[list[str], int, asyncio.Future]] = deque()
        self._busy = 0

    async def route(self, texts: list[str], top_k: int) -> list[dict]:
        if not texts:
            return []
        future = asyncio.get_running_loop().create_future()
        self._pending.append((texts, top_k, future))
        self._dispatch()
        return await future

    def _dispatch(self) -> None:
        while self._pending and self._busy < self.workers:
            batch = [self._pending.popleft()]
            size = len(batch[0][0])
            while self._pending and size + len(self._pending[0][0]) <= self.max_texts:
                batch.append(self._pending.popleft())
                size += len(batch[-1][0])
            self._busy += 1
            asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch: list[tuple[list[str], int, asyncio.Future]]) -> None:
        texts = [text for request_texts, _, _ in batch for text in request_texts]
        try:
            # The widest top_k of the batch, cut back per request below.
            results = await anyio.to_thread.run_sync(self._route, texts, max(k for _, k, _ in batch))
        except Exception as exc:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            start = 0
            for request_texts, top_k, future in batch:
                mine = results[start : start + len(request_texts)]
                start += len(request_texts)
                if not future.done():  # the client may have gone away
                    future.set_result([{**r, "top_k": r["top_k"][:top_k]} for r in mine])
        finally:
            self._busy -= 1
            self._dispatch()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    router: str | Path = "router",
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    threads: int = 1,
    limits: Limits = Limits(),
    log_level: str = "info",
    access_log: bool = False,
) -> None:
    """Load the router folder and run uvicorn (one worker) until interrupted.

    access_log logs one line per request. It is off by default: under load at concurrency 8, py-spy
    showed formatting and writing that line taking about a sixth of the event loop's time.

    Raises RouterError for a missing or broken folder and ServeError for a non-loopback host
    without an API key, before binding anything.
    """
    if not api_key and not is_loopback(host):
        raise ServeError(
            f"refusing to listen on {host} without an API key: anyone who can reach it could use it; "
            "pass --api-key or set ROUTELET_API_KEY, or bind 127.0.0.1"
        )
    import uvicorn

    app = create_app(Router.load(router, threads=threads), api_key=api_key, limits=limits)
    uvicorn.run(app, host=host, port=port, workers=1, log_level=log_level, access_log=access_log)
