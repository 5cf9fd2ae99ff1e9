"""Serve-time deferral: the texts a router abstains on are asked of an LLM (the teacher).

    routelet serve --router data/router --defer teacher --defer-timeout 2 --defer-concurrency 4
    routelet serve --router data/router --defer openai --defer-base-url http://127.0.0.1:8080/v1 --defer-model M
    deferrer = Deferrer.teacher(DeferSettings(timeout_s=2.0))   # needs ANTHROPIC_API_KEY
    results = await deferrer.apply(texts, results, router.info)  # in create_app, after routing

Only abstentions with readable content are deferred. Each LLM call runs in a worker thread, so
the event loop never waits on it; the request waits at most `timeout_s` for it, after which the
router's own answer (the reject route) stands. Over `concurrency` calls in flight (a timed-out
call holds its slot until it returns) or over `per_minute` calls in the last 60 s, the router's
answer stands at once. A result the LLM decided gets the LLM's route and target and
`"deferred": true`; one that fell back keeps the router's answer with `"deferred": false` and a
`"deferred_reason"` (timeout, budget, concurrency, the API error, or an answer outside the
routes); every other result gets `"deferred": false`. Texts go to the teacher, which redacts them.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from routelet.serving.preprocess import redact

NOT_DEFERRED = "no readable content"  # nothing to ask an LLM about
KEY_VARIABLE = "ANTHROPIC_API_KEY"


@dataclass(frozen=True)
class DeferSettings:
    timeout_s: float = 2.0  # the longest a request waits for the LLM
    concurrency: int = 4  # LLM calls in flight at most
    per_minute: int = 60  # LLM calls started in any 60 s at most
    model: str = "claude-haiku-4-5"
    provider: str = "anthropic"  # or "openai": any OpenAI-compatible chat-completions endpoint at base_url
    base_url: str | None = None  # anthropic: default $ANTHROPIC_BASE_URL or the API; openai: required

    def __post_init__(self):
        if self.provider not in ("anthropic", "openai"):
            raise ValueError(f"defer provider must be anthropic or openai, got {self.provider!r}")
        if self.provider == "openai" and not self.base_url:
            raise ValueError("--defer openai needs --defer-base-url, the endpoint's base URL "
                             "(e.g. http://127.0.0.1:8080/v1 for vLLM or llama.cpp)")
        if not self.timeout_s > 0:
            raise ValueError(f"defer timeout must be a positive number of seconds, got {self.timeout_s!r}")
        for name in ("concurrency", "per_minute"):
            if getattr(self, name) < 1:
                raise ValueError(f"defer {name} must be at least 1, got {getattr(self, name)!r}")


class CallWindow:
    """Calls started in the last `period_s` seconds, at most `limit` (thread-safe)."""

    def __init__(self, limit: int, period_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.limit, self.period_s, self.clock = limit, period_s, clock
        self._starts: deque[float] = deque()
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            now = self.clock()
            while self._starts and now - self._starts[0] >= self.period_s:
                self._starts.popleft()
            if len(self._starts) >= self.limit:
                return False
            self._starts.append(now)
            return True


def taxonomy_of(info):
    """The router's routes (and reject route) as a teacher Taxonomy."""
    from routelet.data.taxonomy import Taxonomy

    return Taxonomy(routes=info.routes, reject=info.reject_route)


class Deferrer:
    """Asks `label(router_info, text, timeout_s) -> (route | None, why not)` about abstained texts,
    in worker threads, within the timeout, the concurrency cap and the per-minute window."""

    def __init__(self, label: Callable[[Any, str, float], tuple[str | None, str]], settings: DeferSettings):
        self.label, self.settings = label, settings
        self.window = CallWindow(settings.per_minute)
        self._pool = ThreadPoolExecutor(max_workers=settings.concurrency, thread_name_prefix="routelet-defer")
        self._in_flight = 0
        self._lock = threading.Lock()

    @classmethod
    def teacher(cls, settings: DeferSettings, api_key: str | None = None, base_url: str | None = None,
                cache=None) -> Deferrer:
        """The Claude teacher (ANTHROPIC_API_KEY / ANTHROPIC_BASE_URL unless given), or with
        settings.provider "openai" the OpenAI-compatible endpoint at settings.base_url ($OPENAI_API_KEY
        if it wants one). Raises ValueError naming the variable when Claude has no key."""
        anthropic = settings.provider == "anthropic"
        api_key = api_key or os.environ.get(KEY_VARIABLE if anthropic else "OPENAI_API_KEY")
        if anthropic and not api_key:
            raise ValueError(f"--defer teacher needs an API key: set {KEY_VARIABLE} (and ANTHROPIC_BASE_URL "
                             "for a proxy or a compatible endpoint)")
        from routelet.llm.config import TeacherConfig
        from routelet.llm.teacher import make_teacher

        base_url = base_url or settings.base_url or (os.environ.get("ANTHROPIC_BASE_URL") if anthropic else None) or None
        # No run budget (the per-minute window is the budget) and no retry: the deadline is short.
        config = TeacherConfig(model=settings.model, granularity="routes", timeout_s=settings.timeout_s,
                               max_attempts=1, max_calls=None, max_usd=None, max_consecutive_failures=1)
        teachers: dict[str, Any] = {}
        lock = threading.Lock()

        def label(info, text: str, timeout_s: float) -> tuple[str | None, str]:
            taxonomy = taxonomy_of(info)
            with lock:  # one teacher per route set: a reload with new routes gets a new prompt
                key = taxonomy.digest()
                if key not in teachers:
                    teachers[key] = make_teacher(taxonomy, config, cache=cache, provider=settings.provider,
                                                 base_url=base_url, api_key=api_key)
                teacher = teachers[key]
            [result] = teacher.label([text], timeout_s=timeout_s)
            if result.status == "labeled":
                return result.label, ""
            return None, f"{result.status}: {result.reason}"[:300]

        return cls(label, settings)

    async def apply(self, texts: list[str], results: list[dict], info) -> list[dict]:
        """`results` with every abstention deferred (concurrently); the others marked not deferred."""
        return list(await asyncio.gather(*(self._one(text, result, info) for text, result in zip(texts, results))))

    async def _one(self, text: str, result: dict, info) -> dict:
        if not result.get("abstain") or result.get("abstain_reason") == NOT_DEFERRED:
            return {**result, "deferred": False}
        with self._lock:
            if self._in_flight >= self.settings.concurrency:
                return fell_back(result, f"concurrency: {self.settings.concurrency} LLM calls already in flight")
            if not self.window.take():
                return fell_back(result, f"budget: {self.settings.per_minute} LLM calls in the last minute")
            self._in_flight += 1
        future = self._pool.submit(self._call, info, text)
        try:
            # shield: a timed-out call keeps running in its thread (and holds its slot) until it returns.
            route, reason = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)),
                                                   self.settings.timeout_s)
        except asyncio.TimeoutError:
            return fell_back(result, f"timeout: no LLM answer within {self.settings.timeout_s:g} s")
        if route is None:
            return fell_back(result, reason)
        targets = {r.name: r.target for r in info.routes}
        if route not in targets:
            return fell_back(result, f"review: the LLM answered {route!r}, which is not one of the routes")
        return {**result, "route": route, "target": targets[route], "deferred": True}

    def _call(self, info, text: str) -> tuple[str | None, str]:
        try:
            return self.label(info, text, self.settings.timeout_s)
        except Exception as exc:  # a server keeps answering whatever the client library does
            return None, f"error: {type(exc).__name__}: {exc}"[:300]
        finally:
            with self._lock:
                self._in_flight -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def fell_back(result: dict, reason: str) -> dict:
    return {**result, "deferred": False, "deferred_reason": redact(reason)}
