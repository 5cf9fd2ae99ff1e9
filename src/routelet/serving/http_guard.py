"""What the server checks before FastAPI parses anything, and deadlines for slow clients.

    app = Guard(fastapi_app, api_key, max_body_bytes=256 * 1024, body_timeout_s=10)
    uvicorn.Config(app, http=deadline_protocol(header_timeout_s=10))

`Guard` (pure ASGI middleware), in order: the API key on /v1/* (401), a JSON Content-Type on POST
/v1/* (415: a browser page may POST text/plain to a keyless loopback server without asking first,
a CORS "simple request", but never application/json), the body size (413; Content-Length first,
then the bytes actually received) and a deadline for the whole body (408).
`deadline_protocol` gives uvicorn's HTTP protocol a deadline for a request's head: a connection
that sends nothing, or half a request line or header block, is answered 408 and closed after
`header_timeout_s` (uvicorn alone holds it open until the client gives up; its keep-alive timeout
only runs between requests). Every refusal that leaves bytes unread also closes the connection.
"""

from __future__ import annotations

import asyncio
import hmac

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


class Guard:
    """ASGI middleware: API key, Content-Type, body size and body deadline (see the module docstring)."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int, body_timeout_s: float):
        self.app, self.max_body, self.body_timeout = app, max_body_bytes, body_timeout_s
        self.api_key = api_key.encode() if api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self._refusal(scope, dict(scope["headers"]))
        if refusal is not None:
            return await refusal(scope, receive, send)
        body = await self._read_body(receive)
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

    def _refusal(self, scope, headers: dict) -> JSONResponse | None:
        """The response refusing this request from its head alone, or None."""
        v1 = scope["path"].startswith("/v1/")
        if self.api_key is not None and v1:
            given = headers.get(API_KEY_HEADER.lower().encode())
            if given is None:
                return error_response(401, f"missing {API_KEY_HEADER} header: this server needs an API key", True)
            if not hmac.compare_digest(given, self.api_key):
                return error_response(401, f"invalid API key in the {API_KEY_HEADER} header", True)
        if v1 and scope["method"] == "POST" and not is_json(headers.get(b"content-type")):
            given = headers.get(b"content-type", b"none").decode("latin-1")[:100]
            return error_response(415, f"Content-Type is {given!r}; send the body as JSON with "
                                  "'Content-Type: application/json'", True)
        length = headers.get(b"content-length")
        if length is not None and not length.isdigit():
            return error_response(400, "Content-Length header is not a number", True)
        if length is not None and int(length) > self.max_body:
            return self._too_large(int(length))
        return None

    async def _read_body(self, receive) -> bytes | JSONResponse:
        """The whole body, or the response refusing it (too large, or not all there in time)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                return error_response(408, f"the request body did not arrive within {self.body_timeout:g} s "
                                      f"({size:,} bytes came): send it whole, at once", True)
            if message["type"] != "http.request":
                return error_response(400, "client went away", True)  # nobody reads it
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                return self._too_large(size, at_least=True)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self, size: int, at_least: bool = False) -> JSONResponse:
        more = "more than " if at_least else ""
        return error_response(413, f"request body is {more}{size:,} bytes; the limit is {self.max_body:,} bytes: "
                              "send fewer or shorter texts", True)


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
