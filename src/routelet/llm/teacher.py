"""The teacher: an LLM that labels texts against the taxonomy, cached, budgeted and retried.

    teacher = make_teacher(taxonomy, TeacherConfig(model="claude-haiku-4-5"), cache="data/teacher_cache.jsonl")
    results = teacher.label(texts)                 # ingest: in the given order, until the budget ends
    [result] = teacher.label([text], timeout_s=2)  # serve-time deferral: never waits past 2 s
    teacher.summary()                              # calls, cost, tokens, counts, why it stopped
    make_teacher(..., modality="image").label([image_request(path)])  # screenshots (routelet.llm.image)

Every text is redacted before it is hashed, cached or sent; an image is keyed by its bytes' hash.
A cached answer is returned without a request, with or without an API key. Without a key nothing
is sent and every uncached text is returned `queued`; so is every text the budget, the deadline or
a failing API leaves unanswered.
An answer outside the label set, malformed or refused is returned for `review`, never as a label.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from routelet.data.taxonomy import Taxonomy
from routelet.llm.cache import AnswerCache, cache_key
from routelet.llm.config import Budget, TeacherConfig
from routelet.llm.image import ImageRequest
from routelet.llm.prompt import IMAGE_NOTE, TOOL_NAME, Prompt
from routelet.llm.result import Result
from routelet.llm.retry import CallFailed, status_failure, with_retries
from routelet.serving.preprocess import redact

NO_KEY = "no API key: set ANTHROPIC_API_KEY (or pass api_key); nothing was sent, uncached texts stay queued"
USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


@dataclass
class Answer:
    """One model answer before it is judged: the payload to parse and what it cost."""

    payload: Any  # the tool input (dict) or the message text (str)
    raw: str
    usage: dict[str, int]
    model: str
    latency_ms: float | None
    problem: str = ""  # set when there is nothing to parse (a refusal, no tool call)
    batch: bool = False


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def shown(request: str | ImageRequest) -> str:
    """What stands for a request in its cache key and its Result: the text, or the image's tag."""
    return request if isinstance(request, str) else request.tag


class Teacher:
    """The provider-independent part: redaction, cache, budget, retries, judging the answers."""

    labeler = "llm"
    style = "tool"

    def __init__(self, taxonomy: Taxonomy, config: TeacherConfig, cache: AnswerCache | str | Path | None = None,
                 modality: str = "text"):
        self.taxonomy, self.config = taxonomy, config
        self.prompt = Prompt(taxonomy, config.granularity, self.style, modality)
        self.cache = cache if isinstance(cache, AnswerCache) or cache is None else AnswerCache(cache)
        self.budget = Budget(config)
        self.stopped = ""  # why this teacher sends nothing more (no key, bad key, budget spent)
        self.counts: Counter[str] = Counter()
        self.tokens: Counter[str] = Counter()
        self._lock = threading.Lock()

    @property
    def cache_model(self) -> str:
        """The model part of the cache key."""
        return self.config.model

    # ---------------------------------------------------------------------------------- public

    def label(self, texts: list[str] | list[ImageRequest], timeout_s: float | None = None) -> list[Result]:
        """One Result per text (or, for an image teacher, per ImageRequest), in order. They are
        asked in the given order until the budget, the deadline (`timeout_s` from now) or the API
        runs out; the rest come back queued."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        image = self.prompt.modality == "image"
        wrong = next((item for item in texts if isinstance(item, ImageRequest) != image), None)
        if wrong is not None:
            raise TypeError(f"this teacher's prompt is for {self.prompt.modality} requests, got a "
                            f"{type(wrong).__name__}: make the teacher with modality="
                            f"{'text' if image else 'image'!r}")
        # Lone surrogates (bytes decoded with surrogateescape) cannot be sent as JSON: replaced.
        redacted = texts if image else [redact(text.encode("utf-8", "replace").decode("utf-8")) for text in texts]
        keys = [cache_key(self.cache_model, self.prompt.hash, shown(text)) for text in redacted]
        results: list[Result | None] = [self._cached(text, key) for text, key in zip(redacted, keys)]
        todo = [i for i, result in enumerate(results) if result is None]
        if todo and self.config.batch and not self.stopped:
            from routelet.llm.batch import label_in_batches

            answered = label_in_batches(self, {keys[i]: redacted[i] for i in todo})
            for i in todo:
                results[i] = answered[keys[i]]
        else:
            self._label_one_by_one(redacted, keys, results, todo, deadline)
        self._count(results)
        return results

    def summary(self) -> dict[str, Any]:
        """What this teacher did so far in this run: for the stage's report."""
        return {"model": self.config.model, "prompt_hash": self.prompt.hash, **dict(sorted(self.counts.items())),
                "calls": self.budget.calls, "usd": round(self.budget.usd, 6), "tokens": dict(self.tokens),
                "stopped": self.stopped}

    # ------------------------------------------------------------------------------- internals

    def _label_one_by_one(self, texts, keys, results, todo, deadline) -> None:
        failures_in_row, halt = 0, ""
        for i in todo:
            text, key = texts[i], keys[i]
            results[i] = self._cached(text, key)  # the same text earlier in this list
            if results[i] is not None:
                continue
            reason = self.stopped or halt
            if not reason and deadline is not None and time.monotonic() >= deadline:
                reason = "deadline passed before this text was sent"
            if not reason and not self.budget.reserve(self._estimate_usd(text)):
                self.stopped = reason = self.budget.exhausted_reason()
            if reason:
                results[i] = Result(shown(text), "queued", reason=reason, key=key)
                continue
            try:
                answer = with_retries(lambda: self._ask(text, self._timeout(deadline)), self.config, deadline)
            except CallFailed as failure:
                self.budget.release()
                failures_in_row += 1
                results[i] = Result(shown(text), "queued", reason=f"{failure.kind}: {failure}", key=key)
                if failure.kind == "fatal":
                    self.stopped = f"stopped: {failure}"
                elif failure.stops_run or failures_in_row >= self.config.max_consecutive_failures:
                    halt = f"not sent: the API kept failing ({failure.kind}: {failure})"
                continue
            failures_in_row = 0
            results[i] = self.record(text, key, answer)

    def record(self, text: str | ImageRequest, key: str, answer: Answer) -> Result:
        """Judge an answer, bill it, cache it and return its Result."""
        value, problem = (None, answer.problem) if answer.problem else self.prompt.parse(answer.payload)
        cost = self.config.prices.cost(answer.usage, batch=answer.batch)
        self.budget.spend(cost)
        with self._lock:
            self.tokens.update(answer.usage)
        provenance = {"labeler": self.labeler, "model": answer.model, "prompt_hash": self.prompt.hash,
                      "time": now_iso(), "raw": answer.raw, "usage": answer.usage, "cost_usd": round(cost, 8),
                      "latency_ms": answer.latency_ms, "batch": answer.batch}
        entry = {"status": "labeled" if value is not None else "review", "label": value, "reason": problem,
                 "raw": answer.raw, "provenance": provenance}
        if self.cache is not None:
            self.cache.put(key, entry)
        return Result(shown(text), entry["status"], value, problem, answer.raw, provenance, key=key)

    def _cached(self, text: str | ImageRequest, key: str) -> Result | None:
        entry = self.cache.get(key) if self.cache is not None else None
        if entry is None:
            return None
        return Result(shown(text), entry["status"], entry.get("label"), entry.get("reason", ""), entry.get("raw"),
                      entry.get("provenance"), cached=True, key=key)

    def _count(self, results: list[Result]) -> None:
        with self._lock:
            for result in results:
                self.counts[result.status] += 1
                self.counts["cache_hits"] += result.cached

    def _estimate_usd(self, text: str | ImageRequest) -> float:
        """The price of a first call, before any invoice figure: ~3 characters a token (English
        runs nearer 4), an image's width x height / 750, the prompt written to the cache, and a
        tool answer of up to 64 tokens."""
        words = len(text) if isinstance(text, str) else len(IMAGE_NOTE)
        tokens = (len(self.prompt.system) + len(json.dumps(self.prompt.tool)) + words) // 3
        tokens += 0 if isinstance(text, str) else text.tokens
        output = min(self.config.max_tokens, 64)
        return self.config.prices.cost({"cache_creation_input_tokens": tokens, "output_tokens": output})

    def _timeout(self, deadline: float | None) -> float:
        if deadline is None:
            return self.config.timeout_s
        return max(0.05, min(self.config.timeout_s, deadline - time.monotonic()))

    def _ask(self, text: str | ImageRequest, timeout: float) -> Answer:
        raise NotImplementedError


class ClaudeTeacher(Teacher):
    """Claude through the official SDK: a forced `classify` tool call, the system prompt cached."""

    labeler = "claude"

    def __init__(self, taxonomy: Taxonomy, config: TeacherConfig, cache: AnswerCache | str | Path | None = None,
                 api_key: str | None = None, base_url: str | None = None, modality: str = "text") -> None:
        super().__init__(taxonomy, config, cache, modality)
        self.api_key, self.base_url = api_key or os.environ.get("ANTHROPIC_API_KEY"), base_url
        if not self.api_key:
            self.stopped = NO_KEY

    @functools.cached_property
    def client(self):
        """The SDK client, made (and the SDK imported: ~1.5 s) at the first call: a repro with
        nothing new to label never pays it. Retries are ours (with_retries), so the budget and the
        deadline see every wait."""
        import anthropic

        return anthropic.Anthropic(api_key=self.api_key, base_url=self.base_url, max_retries=0,
                                   timeout=self.config.timeout_s)

    def request_params(self, text: str | ImageRequest) -> dict[str, Any]:
        """The Messages API parameters for one text or image (also the body of a batch request)."""
        if isinstance(text, str):
            content: Any = self.prompt.user(text)
        else:  # the image first, as Anthropic advises, then the one fixed line of text
            content = [{"type": "image", "source": {"type": "base64", "media_type": text.media_type,
                                                    "data": text.base64()}},
                       {"type": "text", "text": IMAGE_NOTE}]
        return {
            "model": self.config.model,
            "max_tokens": self.config.max_tokens,
            "system": [{"type": "text", "text": self.prompt.system, "cache_control": {"type": "ephemeral"}}],
            "tools": [self.prompt.tool],
            "tool_choice": {"type": "tool", "name": TOOL_NAME},
            "messages": [{"role": "user", "content": content}],
        }

    def _ask(self, text: str | ImageRequest, timeout: float) -> Answer:
        start = time.monotonic()
        with sdk_errors():
            message = self.client.messages.create(**self.request_params(text), timeout=timeout)
        return answer_from_message(message, (time.monotonic() - start) * 1000)


class sdk_errors:
    """Turn the SDK's exceptions into CallFailed (a context manager, used around every SDK call)."""

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        if error is None or isinstance(error, CallFailed):
            return False
        import anthropic  # loaded already: a call was made

        if isinstance(error, anthropic.APIStatusError):
            message = error.message if isinstance(error.message, str) else str(error)
            raise status_failure(error.status_code, message[:300], error.response.headers) from None
        if isinstance(error, anthropic.APITimeoutError):
            raise CallFailed("timeout", "no answer before the timeout") from None
        if isinstance(error, anthropic.APIConnectionError):
            raise CallFailed("connection", f"connection failed: {error}") from None
        if isinstance(error, (ValueError, anthropic.APIResponseValidationError)):  # a body that is not JSON
            raise CallFailed("broken", f"unreadable response body ({type(error).__name__}: {error})"[:300]) from None
        return False


def answer_from_message(message, latency_ms: float | None, batch: bool = False) -> Answer:
    """The forced tool call's input, or the problem when the message has none."""
    usage = {name: int(getattr(message.usage, name, 0) or 0) for name in USAGE_FIELDS}
    calls = [block for block in message.content if block.type == "tool_use" and block.name == TOOL_NAME]
    texts = " ".join(getattr(block, "text", "") for block in message.content if block.type == "text")
    if calls:
        payload = calls[0].input
        return Answer(payload, json.dumps(payload, ensure_ascii=False), usage, message.model, latency_ms, batch=batch)
    problem = ("refusal" if message.stop_reason == "refusal"
               else f"malformed: no tool call (stop_reason {message.stop_reason})")
    return Answer(None, texts[:2000], usage, message.model, latency_ms, problem, batch)


def make_teacher(taxonomy: Taxonomy, config: TeacherConfig, cache: AnswerCache | str | Path | None = None,
                 provider: str = "anthropic", base_url: str | None = None, api_key: str | None = None,
                 modality: str = "text") -> Teacher:
    """A teacher for `provider`: "anthropic" (Claude, the default) or "openai" (any
    OpenAI-compatible chat-completions endpoint at `base_url`, e.g. vLLM or llama.cpp).
    `modality` "image": it labels ImageRequests (screenshots) instead of texts."""
    if provider == "anthropic":
        return ClaudeTeacher(taxonomy, config, cache, api_key=api_key, base_url=base_url, modality=modality)
    if provider == "openai":
        if not base_url:
            raise ValueError("provider openai needs a base URL (e.g. http://127.0.0.1:8000/v1)")
        from routelet.llm.openai_compat import OpenAITeacher

        return OpenAITeacher(taxonomy, config, cache, base_url=base_url, api_key=api_key, modality=modality)
    raise ValueError(f"unknown provider {provider!r}: use 'anthropic' or 'openai'")

