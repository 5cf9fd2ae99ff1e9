"""HTTP server for a router folder: FastAPI app + uvicorn, without torch.

    routelet serve --router router --port 8000        # or: serve("router", port=8000)

Endpoints: POST /v1/route ({"text"} or {"texts"}, optional "top_k"; for an image router, image files
as multipart/form-data `image` or `images`, or base64 JSON {"image"} or {"images"}: see
routelet.serving.image_request), GET /v1/model (router.json), GET|HEAD /healthz, GET / (playground
page), /docs (Swagger UI, its assets served from here: no CDN). `create_app(router)` builds the app
for tests and embedding.

Requests are checked before any inference: the outer guard (`http_guard.Guard`) enforces the API
key (401), a JSON Content-Type (415; multipart/form-data too for an image router), the body size
(413; max_image_body_bytes for an image router) and a body deadline (408); uvicorn's
protocol gets a deadline for the request head (`http_guard.deadline_protocol`); the request model
enforces the batch size, the length of each text and of all texts together, and the field types
(422 with the field, e.g. `texts[3]: text is empty`). Tokens per text are capped by router.json's
input.max_length. Inference runs in worker threads, one per core, on fair batches
(`batcher.MicroBatcher`): a small request waits for at most about one batch whatever else is in
flight, and the `X-Queue-Ms` response header says how long it waited before its first text reached
a model. A single text that finds nothing else queued or running is routed on the event loop itself
(no thread hop), and a JSON POST /v1/route goes from the guard straight to its handler (`Direct`):
the two cut the server's CPU per request at concurrency 1 by about 0.35 ms.

`serve` serves the folder through a `reload.RouterHolder` (unless reload=False): a promotion or
rollback that moves the folder's link (data/promoted/current), or a SIGHUP, swaps the router in
while requests keep being answered; /healthz says which model_version serves now. With
`log_samples` (a folder or s3://bucket/prefix), every routed text is written, redacted, with its
decision to a `sample_log.SampleLog`, which buffers and writes from its own thread.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import signal
import string
import sys
import threading
from importlib import resources
from pathlib import Path

import anyio.to_thread
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError

from routelet.serving.api import Limits, RouteResult, RouteResults, request_model, validation_reasons
from routelet.serving.batcher import MicroBatcher
from routelet.serving.defer import Deferrer, DeferSettings
from routelet.serving.http_guard import API_KEY_HEADER, Direct, Guard, deadline_protocol, error_response, is_json
from routelet.serving.image_request import decode, form_schema, image_request_model, read_form
from routelet.serving.reload import RouterHolder
from routelet.serving.runtime import Router
from routelet.serving.sample_log import SampleLog, sample_record

MIN_API_KEY_CHARS = 16
_KEY_CHARACTERS = frozenset(string.ascii_letters + string.digits + string.punctuation)


class ServeError(RuntimeError):
    """A server configuration that must not start (e.g. public host without an API key)."""


def check_api_key(api_key: str | None) -> None:
    """Refuse a key someone could guess or that a header cannot carry (ServeError)."""
    if api_key is None:
        return
    if len(api_key) < MIN_API_KEY_CHARS:
        raise ServeError(f"the API key is {len(api_key)} characters; it needs at least {MIN_API_KEY_CHARS}: make "
                         "one with `python -c 'import secrets; print(secrets.token_urlsafe(24))'`")
    if not set(api_key) <= _KEY_CHARACTERS:
        raise ServeError("the API key may hold only ASCII letters, digits and punctuation (no spaces), "
                         "so that an X-API-Key header can carry it")


# --------------------------------------------------------------------------------------------
# the app


def playground_html() -> str:
    return resources.files("routelet.serving").joinpath("static/playground.html").read_text(encoding="utf-8")


def _add_docs(app: FastAPI) -> None:
    """/docs with Swagger UI's script and stylesheet served from here (shipped by fastapi-offline)."""
    assets = resources.files("fastapi_offline") / "static"
    app.mount("/static/docs", StaticFiles(directory=str(assets)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - API docs",
                                   swagger_js_url=f"{root}/static/docs/swagger-ui-bundle.js",
                                   swagger_css_url=f"{root}/static/docs/swagger-ui.css",
                                   swagger_favicon_url=f"{root}/static/docs/favicon.png")


def create_app(router: Router | RouterHolder, api_key: str | None = None, limits: Limits = Limits(),
               sample_log: SampleLog | None = None, deferrer: Deferrer | None = None) -> FastAPI:
    """The FastAPI app serving `router` (or a RouterHolder, whose current router answers each call).
    With `api_key`, /v1/* needs the X-API-Key header; with `sample_log`, each routed text and its
    decision is logged there (redacted; the log writes from its own thread); with `deferrer`,
    abstentions are asked of an LLM (`defer.Deferrer`)."""
    check_api_key(api_key)
    RouteRequest = request_model(limits)
    ImageRouteRequest = image_request_model(limits.max_images, limits.max_top_k)
    page = playground_html()
    batcher = MicroBatcher(router.route, workers=os.cpu_count() or 1, max_texts=limits.batch_texts,
                           share=max(1, limits.batch_texts // 4))

    app = FastAPI(
        title="routelet",
        version=router.model_version,
        description=f"Router `{router.model_version}` (tiers: {', '.join(router.tier_names)}): routes "
        + ", ".join(r["name"] for r in router.routes) + ".",
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,  # `/v1/route/` is a 404, not a redirect a client may not follow with its body
    )
    _add_docs(app)
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
    @app.head("/healthz", include_in_schema=False)
    def healthz() -> dict:
        # Read per request: a RouterHolder may have swapped the router since the last one.
        return {"status": "ok", "model_version": router.model_version}

    @app.get("/v1/model", dependencies=v1, summary="router.json of the served router")
    def model() -> dict:
        return router.info.model_dump(mode="json")

    @app.post(
        "/v1/route",
        dependencies=v1,
        summary="Route one text or image, or a batch",
        description="A text router takes JSON `{\"text\"}` or `{\"texts\"}`. An image router (GET /v1/model: "
        "`input.modality` is `image`) takes image files as multipart/form-data, `image` (one) or `images` (several), "
        "or base64 JSON `{\"image\"}` or `{\"images\"}`. One result comes back for `text` or `image`, "
        "`{\"results\": [...]}` for `texts` or `images`.",
        response_model=RouteResult | RouteResults,
        responses={200: {"headers": {"X-Queue-Ms": {"description": "milliseconds the request waited before its "
                                                    "first text reached a model", "schema": {"type": "number"}}}},
                   401: {"description": "missing or wrong API key"},
                   403: {"description": "a form upload from another site's page"},
                   408: {"description": "the body did not arrive in time"},
                   413: {"description": "body too large, or an image over the per-image limit"},
                   415: {"description": "Content-Type is neither application/json nor, for an image router, "
                         "multipart/form-data"},
                   422: {"description": "invalid request: the field (e.g. `images[2]`) and why (not an image, "
                         "truncated, over the pixel limit, not base64, text sent to an image router...)"}},
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": {"oneOf": [RouteRequest.model_json_schema(),
                                                      ImageRouteRequest.model_json_schema()]}},
            "multipart/form-data": {"schema": form_schema(limits.max_images, limits.max_top_k)}}}},
    )
    async def route(request: Request):
        if routes_images():
            return await route_images(request)
        try:
            body = RouteRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            return error_response(422, validation_reasons(exc, RouteRequest))
        texts = [body.text] if body.texts is None else body.texts
        routed = await batcher.route(texts, body.top_k, inline=len(texts) == 1)
        results = routed.results if deferrer is None else await deferrer.apply(texts, routed.results, router.info)
        if sample_log is not None:
            sample_log.write([sample_record(text, result) for text, result in zip(texts, results)])
        # The runtime already returns the documented shape: no second validation pass.
        content = results[0] if body.texts is None else {"results": results}
        return JSONResponse(content, headers={"X-Queue-Ms": f"{routed.queue_ms:.1f}"})

    # Read per request: a RouterHolder may have swapped the router since the last one. Not through
    # the holder's __getattr__ (about 1.5 us, twice a request): its `router` property is a plain read.
    current = (lambda: router.router) if isinstance(router, RouterHolder) else (lambda: router)

    def routes_images() -> bool:
        return current().info.input.modality == "image"

    async def route_images(request: Request) -> JSONResponse:
        """/v1/route for an image router (routelet.serving.image_request). Images are neither logged
        nor deferred: the sample log and the LLM teacher take text."""
        if is_json(request.headers.get("content-type", "").encode("latin-1")):
            try:
                body = ImageRouteRequest.model_validate_json(await request.body())
            except ValidationError as exc:
                return error_response(422, validation_reasons(exc, ImageRouteRequest))
            items = body.items()
        else:  # multipart/form-data: the guard lets no other type through to an image router
            items = await read_form(request, limits.max_images, limits.max_top_k)
            if isinstance(items, list):
                return error_response(422, items)
        spec = current().info.input
        images, status, reasons = await anyio.to_thread.run_sync(decode, items.items, spec,
                                                                 min(limits.max_image_bytes, spec.max_bytes))
        if reasons:
            return error_response(status, reasons)
        routed = await batcher.route(images, items.top_k)
        content = routed.results[0] if items.single else {"results": routed.results}
        return JSONResponse(content, headers={"X-Queue-Ms": f"{routed.queue_ms:.1f}"})

    app.add_middleware(Direct, path="/v1/route", handler=route)  # inside Guard: added first
    app.add_middleware(Guard, api_key=api_key, max_body_bytes=limits.max_body_bytes,
                       body_timeout_s=limits.body_timeout_s, image_body_bytes=limits.max_image_body_bytes,
                       routes_images=routes_images)
    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def uvicorn_config(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, limits: Limits = Limits(),
                   log_level: str = "info", access_log: bool = False):
    """uvicorn's Config for `app`: one worker, deadlines for slow clients."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, workers=1, log_level=log_level, access_log=access_log,
                          http=deadline_protocol(limits.header_timeout_s), timeout_keep_alive=5)


def _exit_on_sigterm() -> None:
    """uvicorn raises the SIGTERM it caught again once it has shut down; by default that ends the
    process before serve()'s cleanup (the sample log's buffer would be lost): a SystemExit instead."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


def serve(
    router: str | Path = "router",
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    threads: int = 1,
    limits: Limits = Limits(),
    log_level: str = "info",
    access_log: bool = False,
    reload: bool = True,
    log_samples: str | None = None,
    log_endpoint_url: str | None = None,
    defer: DeferSettings | None = None,
) -> None:
    """Load the router folder and run uvicorn (one worker) until interrupted.

    reload watches the folder (and takes SIGHUP) and swaps a new router in after its self-check;
    log_samples is a folder or s3://bucket/prefix (log_endpoint_url for R2/MinIO) for the sample
    log, closed (everything buffered written) when the server stops.

    access_log logs one line per request. It is off by default: under load at concurrency 8, py-spy
    showed formatting and writing that line taking about a sixth of the event loop's time.

    defer sends abstentions to an LLM: the Claude teacher (ANTHROPIC_API_KEY,
    ANTHROPIC_BASE_URL) or an OpenAI-compatible endpoint (`DeferSettings.provider`).

    Raises RouterError for a missing or broken folder and ServeError for a non-loopback host
    without an API key, a key that is too short or deferral without ANTHROPIC_API_KEY, before
    binding anything.
    """
    if not api_key and not is_loopback(host):
        raise ServeError(
            f"refusing to listen on {host} without an API key: anyone who can reach it could use it; "
            "pass --api-key or set ROUTELET_API_KEY, or bind 127.0.0.1"
        )
    check_api_key(api_key)
    try:
        deferrer = Deferrer.teacher(defer) if defer is not None else None
    except ValueError as exc:
        raise ServeError(str(exc)) from None
    import uvicorn

    served = RouterHolder.load(router, threads=threads) if reload else Router.load(router, threads=threads)
    try:
        samples = SampleLog(log_samples, endpoint_url=log_endpoint_url) if log_samples else None
    except OSError as exc:
        raise ServeError(f"--log-samples {log_samples}: cannot create the folder ({exc}); pass a folder "
                         "that can be created or an s3://bucket/prefix") from None
    try:
        app = create_app(served, api_key=api_key, limits=limits, sample_log=samples, deferrer=deferrer)
        if reload:
            served.start(watch=True, sighup=True)
        _exit_on_sigterm()
        uvicorn.Server(uvicorn_config(app, host, port, limits, log_level, access_log)).run()
    finally:
        if reload:
            served.stop()
        if samples is not None:
            samples.close()
        if deferrer is not None:
            deferrer.close()
