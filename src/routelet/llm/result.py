"""What the teacher returns for one text: a label, an answer for review, or a text still queued."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Status = Literal["labeled", "review", "queued"]


@dataclass
class Result:
    """One text's outcome. Only `labeled` carries a label; nothing is ever dropped.

    - labeled: `label` is in the label set; `provenance` says who answered, when, with what.
    - review: the model answered, but outside the label set, malformed or a refusal; `raw` holds
      the answer and `reason` the problem. Never use it as a label.
    - queued: not answered in this run (no API key, budget spent, API failing); `reason` says why.
      Send it again next run.
    """

    text: str  # the redacted text: what was (or would be) sent; for an image, its tag (sha-256, no bytes)
    status: Status
    label: str | None = None
    reason: str = ""
    raw: str | None = None
    provenance: dict[str, Any] | None = None  # labeler, model, prompt_hash, time, raw, usage, cost_usd, latency_ms
    cached: bool = False
    key: str = ""  # the cache key (model, prompt hash, text hash)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready row for the pool, the review file or a queue file."""
        row = {"text": self.text, "status": self.status, "label": self.label, "reason": self.reason,
               "raw": self.raw, "provenance": self.provenance}
        return {k: v for k, v in row.items() if v not in (None, "")}
