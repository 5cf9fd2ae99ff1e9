"""What the server checks before FastAPI parses anything, and deadlines for slow clients.

    app = Guard(fastapi_app, api_key, max_body_bytes=256 * 1024, body_timeout_s=10,
                image_body_bytes=32 << 20, routes_images=lambda: False)
    uvicorn.Config(app, http=deadline_protocol(header_timeout_s=10))

`Guard` (pure ASGI middleware), in order: the API key on /v1/* (401), a JSON Content-Type on POST
/v1/* (415: a browser page may POST text/plain to a keyless loopback server without asking first,
a CORS "simple request", but never application/json), or multipart/form-data while
`routes_images()` (an image router), which is a simple request too: one from another site's page
(Sec-Fetch-Site, else Origin against Host) is refused (403); the body size (413; Content-Length
first, then the bytes actually received; image_body_bytes for an image router's POSTs) and a
deadline for the whole body (408).
`deadline_protocol` gives uvicorn's HTTP protocol a deadline for a request's head: a connection
that sends nothing, or half a request line or header block, is answered 408 and closed after
`header_timeout_s` (uvicorn alone holds it open until the client gives up; its keep-alive timeout
only runs between requests). Every refusal that leaves bytes unread also closes the connection.
`Direct` (inside Guard) sends a JSON POST /v1/route straight to its handler, past FastAPI's routing.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Callable

from fastapi import Request
from fastapi.responses import JSONResponse

API_KEY_HEADER = "X-API-Key"
_CLOSE = {"connection": "close"}


def error_response(status: int, reasons: list[dict] | str, close: bool = False) -> JSONResponse:
    """{"detail": reason} (or {"detail": "field: reason; ...", "errors": [...]}) with `status`."""
    headers = _CLOSE if close else None
    if isinstance(reasons, str):
        return JSONResponse({"detail": reasons}, status_code=status, headers=headers)
    detail = "; ".join(f"{r['field']}: {r['reason']}" for r in reasons)
    return JSONResponse({"detail": detail, "errors": reasons}, status_code=status, headers=headers)


def is_json(content_type: bytes | None) -> bool:
    """application/json, with or without parameters (`; charset=utf-8`)."""
    return content_type is not None and content_type.split(b";")[0].strip().lower() == b"application/json"


def is_multipart(content_type: bytes | None) -> bool:
    return content_type is not None and content_type.split(b";")[0].strip().lower() == b"multipart/form-data"


class Guard:
    """ASGI middleware: API key, Content-Type, body size and body deadline (see the module docstring)."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int, body_timeout_s: float,
                 image_body_bytes: int | None = None, routes_images: Callable[[], bool] | None = None):
        self.app, self.max_body, self.body_timeout = app, max_body_bytes, body_timeout_s
        self.api_key = api_key.encode() if api_key else None
        self.image_body = image_body_bytes or max_body_bytes
        self.routes_images = routes_images or (lambda: False)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        images = scope["method"] == "POST" and self.routes_images()
        limit = self.image_body if images else self.max_body
        refusal = self._refusal(scope, dict(scope["headers"]), images, limit)
        if refusal is not None:
            return await refusal(scope, receive, send)
        body = await self._read_body(receive, limit, images)
        if isinstance(body, JSONResponse):
            return await body(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _refusal(self, scope, headers: dict, images: bool, limit: int) -> JSONResponse | None:
        """The response refusing this request from its head alone, or None."""
        v1 = scope["path"].startswith("/v1/")
        if self.api_key is not None and v1:
            given = headers.get(API_KEY_HEADER.lower().encode())
            if given is None:
                return error_response(401, f"missing {API_KEY_HEADER} header: this server needs an API key", True)
            if not hmac.compare_digest(given, self.api_key):
                return error_response(401, f"invalid API key in the {API_KEY_HEADER} header", True)
        if v1 and scope["method"] == "POST" and not is_json(content_type := headers.get(b"content-type")):
            if not (images and is_multipart(content_type)):
                return _wrong_type(content_type, images)
            if _cross_site(headers):
                return error_response(403, "a form upload from another site's page is refused: upload from this "
                                      "server's own page, or from a client that is not a browser", True)
        length = headers.get(b"content-length")
        if length is not None and not length.isdigit():
            return error_response(400, "Content-Length header is not a number", True)
        if length is not None and int(length) > limit:
            return self._too_large(int(length), limit, images)
        return None

    async def _read_body(self, receive, limit: int, images: bool) -> bytes | JSONResponse:
        """The whole body, or the response refusing it (too large, or not all there in time)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        chunks, size = [], 0
        while True:
            try:
                # timeout_at, not wait_for: no task per read (Python 3.11's wait_for makes one)
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                return error_response(408, f"the request body did not arrive within {self.body_timeout:g} s "
                                      f"({size:,} bytes came): send it whole, at once", True)
            if message["type"] != "http.request":
                return error_response(400, "client went away", True)  # nobody reads it
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                return self._too_large(size, limit, images, at_least=True)
            if not message.get("more_body", False):
                return b"".join(chunks)

    @staticmethod
    def _too_large(size: int, limit: int, images: bool, at_least: bool = False) -> JSONResponse:
        more = "more than " if at_least else ""
        return error_response(413, f"request body is {more}{size:,} bytes; the limit is {limit:,} bytes: "
                              f"send fewer or {'smaller images' if images else 'shorter texts'}", True)


def _wrong_type(content_type: bytes | None, images: bool) -> JSONResponse:
    given = (content_type or b"none").decode("latin-1")[:100]
    if images:
        expects = ("this router routes images: upload them as multipart/form-data, or send them base64 in JSON "
                   "with 'Content-Type: application/json'")
    elif is_multipart(content_type):
        expects = "this router routes text, not images: send the body as JSON with 'Content-Type: application/json'"
    else:
        expects = "send the body as JSON with 'Content-Type: application/json'"
    return error_response(415, f"Content-Type is {given!r}; {expects}", True)


def _cross_site(headers: dict) -> bool:
    """A browser posting from another site's page (what a form upload can do without a CORS preflight)."""
    site = headers.get(b"sec-fetch-site")
    if site is not None:
        return site not in (b"same-origin", b"none")
    origin = headers.get(b"origin")
    return origin is not None and origin.partition(b"://")[2] != headers.get(b"host", b"")


_TIMEOUT_408 = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                b"connection: close\r\ncontent-length: %d\r\n\r\n%s")


def deadline_protocol(header_timeout_s: float, base: type | None = None) -> type:
    """uvicorn's HTTP protocol class (httptools when installed, else h11) with a deadline for each
    request's head, counted from the connection's first moment, or from the end of the previous
    response (uvicorn's shorter keep-alive timeout still closes a silent connection first)."""
    if base is None:
        from uvicorn.protocols.http.auto import AutoHTTPProtocol as base

    class DeadlineProtocol(base):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            cycle = self.cycle
            super().data_received(data)
            if self.cycle is not cycle:  # the parser read a whole head and started the request
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._disarm()
            if not self.transport.is_closing():
                self._arm()  # bytes of the next request may already wait in the parser, half a head

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._head_timer = self.loop.call_later(header_timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _expire(self) -> None:
            self._head_timer = None
            idle = self.cycle is None or self.cycle.response_complete
            if idle and not self.transport.is_closing():
                reason = f"the request head did not arrive within {header_timeout_s:g} s".encode()
                self.transport.write(_TIMEOUT_408 % (len(reason), reason))
                self.transport.close()

    return DeadlineProtocol


class Direct:
    """ASGI middleware: a JSON POST to `path` straight to its handler, past FastAPI's routing, its
    middleware and dependency machinery (py-spy at concurrency 1: about 0.1-0.15 ms CPU a request);
    the route stays registered with FastAPI for the OpenAPI schema and /docs, and takes the rest
    (multipart uploads keep FastAPI's form handling). Only inside Guard, which has already checked the
    API key (the route's dependency repeats that check), the Content-Type and the body."""

    def __init__(self, app, path: str, handler):
        self.app, self.path, self.handler = app, path, handler

    async def __call__(self, scope, receive, send):
        if (scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == self.path
                and is_json(next((v for k, v in scope["headers"] if k == b"content-type"), None))):
            response = await self.handler(Request(scope, receive))
            return await response(scope, receive, send)
        await self.app(scope, receive, send)
