"""Retries with backoff, shared by the Claude and OpenAI-compatible clients.

Each client turns its own errors into `CallFailed(kind, ...)`; `with_retries` waits and tries
again on rate limits (exactly `retry-after` when the server sends one), server errors, timeouts,
dropped connections and broken bodies. It gives up at once on what a retry cannot fix: a request
the API rejects (400, 413, 422: that text stays queued) or a bad key or model (which stops the run).
"""

from __future__ import annotations

import email.utils
import random
import time
from typing import Callable, Mapping, TypeVar

from routelet.llm.config import TeacherConfig

T = TypeVar("T")
RETRYABLE = {"rate_limit", "server", "timeout", "connection", "broken"}


class CallFailed(Exception):
    """A request that did not give an answer. `stops_run`: no later request can succeed either."""

    def __init__(self, kind: str, message: str, retry_after: float | None = None, stops_run: bool | None = None):
        super().__init__(message)
        self.kind, self.retry_after = kind, retry_after
        self.stops_run = kind == "fatal" if stops_run is None else stops_run

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE and not self.stops_run


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """`retry-after-ms`, `retry-after` in seconds, or `retry-after` as an HTTP date; None if absent."""
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        try:
            return max(0.0, float(headers.get(name)) * scale)
        except (TypeError, ValueError):
            pass
    parsed = email.utils.parsedate_tz(headers.get("retry-after") or "")
    return None if parsed is None else max(0.0, email.utils.mktime_tz(parsed) - time.time())


def status_failure(status: int, message: str, headers: Mapping[str, str] | None) -> CallFailed:
    """The CallFailed for an HTTP error status, the same for every provider."""
    if status == 429:
        return CallFailed("rate_limit", f"HTTP 429 rate limited: {message}", retry_after_seconds(headers))
    if status >= 500 or status == 408:
        return CallFailed("server", f"HTTP {status}: {message}", retry_after_seconds(headers))
    if status in (400, 413, 422):  # this request (e.g. a text too long): the next one may pass
        return CallFailed("rejected", f"HTTP {status}: {message} (the API refused this request; it stays queued)")
    hint = {401: "check the API key", 403: "check the key's permissions",
            404: "check the model name and the base URL"}.get(status, "check the request settings")
    return CallFailed("fatal", f"HTTP {status}: {message} ({hint})")


def with_retries(call: Callable[[], T], config: TeacherConfig, deadline: float | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> T:
    """Run `call` until it succeeds, raising the last CallFailed when retrying cannot help.

    `deadline` (time.monotonic()) bounds the waiting: a caller serving a request never waits past it.
    """
    for attempt in range(1, config.max_attempts + 1):
        try:
            return call()
        except CallFailed as failure:
            if not failure.retryable or attempt == config.max_attempts:
                raise
            wait = failure.retry_after
            if wait is None:
                wait = min(config.backoff_s * 2 ** (attempt - 1), config.max_backoff_s) * random.uniform(0.75, 1.0)
            elif wait > config.max_retry_after_s:
                raise CallFailed(failure.kind, f"{failure} (retry-after {wait:.0f} s is over max_retry_after_s "
                                 f"{config.max_retry_after_s:.0f} s)", wait, stops_run=True) from None
            if deadline is not None and time.monotonic() + wait > deadline:
                raise CallFailed(failure.kind, f"{failure} (no time left to retry before the deadline)",
                                 wait) from None
            sleep(wait)
    raise AssertionError("unreachable: the last attempt returns or raises")
