"""The teacher's settings (params.yaml `ingest.teacher`) and the per-run budget they set.

    config = TeacherConfig.from_params(params["ingest"]["teacher"], where="params.yaml: ingest.teacher")

Prices are USD per million tokens, as the providers publish them; the cost of a call is computed
from the usage the API reports (input, cache write, cache read, output), so the budget tracks
what the invoice will say, not a guess.
"""

from __future__ import annotations

import threading
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Prices(BaseModel):
    """USD per million tokens. Defaults: Claude Haiku 4.5 list prices (5-minute cache writes)."""

    model_config = ConfigDict(extra="forbid")

    input: float = Field(1.0, ge=0)
    output: float = Field(5.0, ge=0)
    cache_write: float = Field(1.25, ge=0)
    cache_read: float = Field(0.10, ge=0)
    batch_discount: float = Field(0.5, gt=0, le=1)  # the Batches API bills this share of the above

    def cost(self, usage: dict[str, int], batch: bool = False) -> float:
        usd = (usage.get("input_tokens", 0) * self.input + usage.get("output_tokens", 0) * self.output
               + usage.get("cache_creation_input_tokens", 0) * self.cache_write
               + usage.get("cache_read_input_tokens", 0) * self.cache_read) / 1e6
        return usd * (self.batch_discount if batch else 1.0)


class TeacherConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field("claude-haiku-4-5", min_length=1)
    max_tokens: int = Field(256, ge=16, le=8192)
    granularity: Literal["labels", "routes"] = "labels"  # fine labels for ingest, routes to defer
    prices: Prices = Field(default_factory=Prices)
    max_calls: int | None = Field(1000, ge=0)  # billable requests per run; None: no cap
    max_usd: float | None = Field(5.0, ge=0)  # estimated spend per run; None: no cap
    batch: bool = False  # the Message Batches API (half price, answers within 24 h)
    timeout_s: float = Field(30.0, gt=0)
    max_attempts: int = Field(5, ge=1)  # per text, counting the first
    backoff_s: float = Field(1.0, ge=0)  # first wait after a 5xx or a timeout; doubles each time
    max_backoff_s: float = Field(30.0, ge=0)
    max_retry_after_s: float = Field(120.0, ge=0)  # a longer retry-after stops the run: the rest wait
    max_consecutive_failures: int = Field(3, ge=1)  # texts failing in a row before the API is deemed down
    batch_poll_s: float = Field(30.0, gt=0)
    batch_max_wait_s: float = Field(3600.0, ge=0)  # then the batch stays pending for the next run
    batch_chunk: int = Field(10_000, ge=1, le=100_000)

    @classmethod
    def from_params(cls, values: dict[str, Any] | None, where: str = "ingest.teacher") -> TeacherConfig:
        """Validate a params block; an error names each bad field and what it must be."""
        try:
            return cls.model_validate(values or {})
        except ValidationError as error:
            problems = "; ".join(f"{where}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
            raise ValueError(f"invalid teacher settings: {problems}") from None


class Budget:
    """Calls and estimated USD spent in this run; thread-safe, so a server can share one."""

    def __init__(self, config: TeacherConfig) -> None:
        self.max_calls, self.max_usd = config.max_calls, config.max_usd
        self.calls, self.usd = 0, 0.0
        self._worst_call_usd = 0.0
        self._lock = threading.Lock()

    def reserve(self, estimate_usd: float, n: int = 1) -> bool:
        """Take n calls if they fit; each is assumed to cost as much as the dearest one so far."""
        with self._lock:
            # The first estimate is a pessimistic guess; after one answer, the invoice's own figures.
            per_call = self._worst_call_usd if self._worst_call_usd > 0 else estimate_usd
            if self.max_calls is not None and self.calls + n > self.max_calls:
                return False
            if self.max_usd is not None and self.usd + n * per_call > self.max_usd:
                return False
            self.calls += n
            return True

    def release(self, n: int = 1) -> None:
        """Give back calls reserved but never made (a batch that was not created)."""
        with self._lock:
            self.calls -= n

    def spend(self, usd: float) -> None:
        with self._lock:
            self.usd += usd
            self._worst_call_usd = max(self._worst_call_usd, usd)

    def exhausted_reason(self) -> str:
        return (f"budget reached ({self.calls} calls of {self.max_calls}, "
                f"${self.usd:.4f} of ${self.max_usd}): left queued for the next run")
