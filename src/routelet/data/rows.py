"""The data contract: JSONL rows `{"text", "label"}` with optional `id` and `meta`.

`read_rows` validates every line and never drops one silently: a bad line becomes a `Rejected`
naming file, line and reason, which `write_quarantine` keeps (redacted) for the user to fix.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from routelet.serving.preprocess import redact

DEFAULT_MAX_CHARS = 2000


class Row(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str
    label: str | None = None
    id: str | int | None = None
    meta: dict[str, Any] | None = None

    @field_validator("text")
    @classmethod
    def _not_empty(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("text is empty")
        return text


@dataclass(frozen=True)
class Rejected:
    file: str
    line: int
    reason: str
    raw: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass(frozen=True)
class Sourced:
    """A valid row and where it came from, so every later error can point back at it."""

    row: Row
    file: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def read_rows(
    path: str | Path,
    known_labels: Iterable[str] | None = None,
    max_chars: int = DEFAULT_MAX_CHARS,
    require_label: bool = True,
) -> tuple[list[Sourced], list[Rejected]]:
    """Read a JSONL file; return the valid rows and the rejected lines with their reasons."""
    path = Path(path)
    known = set(known_labels) if known_labels is not None else None
    rows: list[Sourced] = []
    rejected: list[Rejected] = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue  # blank lines (a trailing newline) carry nothing to lose
            reason, row = _parse(raw, known, max_chars, require_label)
            if row is None:
                rejected.append(Rejected(str(path), number, reason, raw.decode("utf-8", "replace").rstrip("\n")))
            else:
                rows.append(Sourced(row, str(path), number))
    return rows, rejected


def _parse(raw: bytes, known: set[str] | None, max_chars: int, require_label: bool) -> tuple[str, Row | None]:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return f"invalid UTF-8 at byte {error.start}", None
    try:
        value = json.loads(line)
    except json.JSONDecodeError as error:
        return f"malformed JSON: {error.msg} (column {error.colno})", None
    if not isinstance(value, dict):
        return f"expected a JSON object, got {type(value).__name__}", None
    try:
        row = Row.model_validate(value)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "row"
        return f"{field}: {first['msg'].removeprefix('Value error, ')}", None
    if len(row.text) > max_chars:
        return f"text has {len(row.text)} characters, over the limit of {max_chars}", None
    if require_label and row.label is None:
        return "label: missing", None
    if known is not None and row.label is not None and row.label not in known:
        return f"unknown label {row.label!r}: not in the taxonomy", None
    return "", row


def write_quarantine(path: str | Path, rejected: Iterable[Rejected]) -> None:
    """One JSON line per rejected input line; the raw content is redacted, never stored as is."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for item in rejected:
            record = {"file": item.file, "line": item.line, "reason": item.reason, "raw": redact(item.raw)}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file this pipeline wrote itself (already validated)."""
    with Path(path).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file's bytes: how router.json and baselines.json name the data they saw."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
