"""The data contract: JSONL rows `{"text", "label"}` with optional `id` and `meta`.

`read_rows` validates every line and never drops one silently: a bad line becomes a `Rejected`
naming file, line and reason, which `write_quarantine` keeps (redacted) for the user to fix.
A problem with a whole file (unreadable, UTF-16 instead of UTF-8) is a `DataError`: one message
naming the file and what to do.

The contract, line by line: UTF-8 (a byte-order mark at the start of the file is allowed), one
JSON object per line with each key once, a non-blank `text` of at most `max_chars` characters and
a `label` of the taxonomy, neither holding control characters (tab, newline and carriage return
excepted) or lone surrogates.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from routelet.serving.preprocess import redact

DEFAULT_MAX_CHARS = 2000
RAW_KEPT = 2000  # characters of a rejected line kept in quarantine: bounded whatever the line's size
SHOWN = 60  # characters of a user's value (a label, a key) quoted in a reason

# C0 controls other than tab, newline and carriage return: a NUL in a text is a broken export,
# never an intent. Lone surrogates cannot even be written back as UTF-8.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# BOMs of the encodings a JSONL file is most often saved in by mistake (UTF-32 before UTF-16:
# the UTF-32 LE mark starts with the UTF-16 LE one).
_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32LE"),
    (codecs.BOM_UTF32_BE, "UTF-32BE"),
    (codecs.BOM_UTF16_LE, "UTF-16LE"),
    (codecs.BOM_UTF16_BE, "UTF-16BE"),
)


class DataError(Exception):
    """A whole file or folder is unusable. The message is one line: the path, what is wrong, what
    to do. `rejected` carries the lines rejected so far, so they can still be quarantined."""

    def __init__(self, message: str, rejected: list[Rejected] | None = None):
        super().__init__(" ".join(message.split()))
        self.rejected = rejected or []


def bounded(text: str, limit: int = RAW_KEPT) -> str:
    """At most `limit` characters, cut at a space where one is near so that no secret is cut in
    half (a half is what the redaction patterns would no longer recognise)."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    space = max(head.rfind(" "), head.rfind("\t"))
    return head[:space] if space > limit // 2 else head


def shown(value: object) -> str:
    """A user's value quoted in a message: bounded, redacted, cut short."""
    text = redact(bounded(str(value)))
    return repr(text if len(text) <= SHOWN else text[:SHOWN] + "…")


def _clean(value: str, what: str) -> str:
    if match := _CONTROL.search(value):
        raise ValueError(
            f"control character U+{ord(match.group()):04X} at character {match.start() + 1} of the {what}: "
            "remove it (only tab, newline and carriage return are allowed)"
        )
    if match := _SURROGATE.search(value):
        raise ValueError(
            f"lone surrogate U+{ord(match.group()):04X} at character {match.start() + 1} of the {what}: "
            "not valid Unicode, fix the \\u escape"
        )
    if not value.strip():
        raise ValueError(f"{what} is empty")
    return value


class RowFields(BaseModel):
    """What every dataset row may carry beside its input: a label, an id and free metadata."""

    model_config = ConfigDict(extra="forbid")

    label: str | None = None
    id: str | int | None = None
    meta: dict[str, Any] | None = None


class Row(RowFields):
    text: str

    @field_validator("text")
    @classmethod
    def _text(cls, text: str) -> str:
        return _clean(text, "text")

    @field_validator("label")
    @classmethod
    def _label(cls, label: str | None) -> str | None:
        return None if label is None else _clean(label, "label")


@dataclass(frozen=True)
class Rejected:
    file: str
    line: int
    reason: str  # built from our words and `shown` values only: safe to print as is
    raw: str  # at most RAW_KEPT characters of the line, not yet redacted
    length: int = 0  # characters in the whole line, when `raw` is cut

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
    """Read a JSONL file; return the valid rows and the rejected lines with their reasons.
    Raises DataError when the file cannot be read or is not UTF-8 as a whole."""
    path = Path(path)
    known = set(known_labels) if known_labels is not None else None
    rows: list[Sourced] = []
    rejected: list[Rejected] = []
    try:
        handle = path.open("rb")
    except OSError as error:
        reason = error.strerror or error
        raise DataError(f"{path}: cannot read it ({reason}): check the path and its permissions") from None
    with handle:
        _check_encoding(path, handle.read(4096))
        handle.seek(0)
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]  # a BOM at file start is how some editors save UTF-8
            if not raw.strip():
                continue  # blank lines (a trailing newline) carry nothing to lose
            reason, row = parse_line(raw, known, max_chars, require_label)
            if row is None:
                rejected.append(_rejected(path, number, reason, raw))
            else:
                rows.append(Sourced(row, str(path), number))
    return rows, rejected


def _rejected(path: Path, number: int, reason: str, raw: bytes) -> Rejected:
    text = raw.decode("utf-8", "replace").rstrip("\r\n")
    return Rejected(str(path), number, reason, bounded(text), len(text))


def _check_encoding(path: Path, head: bytes) -> None:
    """A file saved as UTF-16/32 would otherwise give one rejection per line and no hint."""
    encoding = next((name for bom, name in _BOMS if head.startswith(bom)), None) or _nul_pattern(head)
    if encoding:
        raise DataError(
            f"{path}: the file is {encoding}, not UTF-8: convert it, e.g. "
            f"iconv -f {encoding} -t UTF-8 {path.name} > {path.stem}.utf8.jsonl"
        )


def _nul_pattern(head: bytes) -> str | None:
    """UTF-16/32 without a BOM: ASCII text has a NUL beside nearly every character."""
    if len(head) < 8 or head.count(0) < len(head) // 4:
        return None  # a few NULs are a broken line, rejected on its own
    if head.count(0) > len(head) * 2 // 3:
        return "UTF-32LE" if head[0] else "UTF-32BE"
    return "UTF-16LE" if head[1::2].count(0) > head[0::2].count(0) else "UTF-16BE"


class _BadJson(ValueError):
    pass


def json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object hook: a repeated key would silently keep only its last value."""
    value: dict[str, Any] = {}
    for key, item in pairs:
        if key in value:
            raise _BadJson(f"duplicate key {shown(key)}: name each field once")
        value[key] = item
    return value


def _constant(name: str) -> None:
    raise _BadJson(f"{name} is not JSON (Python's json writes it; standard JSON has no {name})")


def parse_line(raw: bytes, known: set[str] | None, max_chars: int, require_label: bool) -> tuple[str, Row | None]:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return f"invalid UTF-8 at byte {error.start + 1} (Latin-1 or Windows-1252? re-save the file as UTF-8)", None
    if line.startswith("\ufeff"):
        return "a byte-order mark starts this line (files joined with cat?): remove it", None
    try:
        value = json.loads(line, object_pairs_hook=json_object, parse_constant=_constant)
    except _BadJson as error:
        return str(error), None
    except json.JSONDecodeError as error:
        return f"malformed JSON: {error.msg} (column {error.colno})", None
    except RecursionError:
        return "malformed JSON: nested too deeply", None
    if not isinstance(value, dict):
        return f"expected a JSON object, got {type(value).__name__}", None
    try:
        row = Row.model_validate(value)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(redact(bounded(str(part)))[:SHOWN] for part in first["loc"]) or "row"
        return f"{field}: {first['msg'].removeprefix('Value error, ')}", None
    if len(row.text) > max_chars:
        return f"text has {len(row.text)} characters, over the limit of {max_chars} (data.max_chars)", None
    if require_label and row.label is None:
        return "label: missing", None
    if known is not None and row.label is not None and row.label not in known:
        return f"unknown label {shown(row.label)}: not in the taxonomy (add it there or fix the row)", None
    return "", row


def write_quarantine(path: str | Path, rejected: Iterable[Rejected]) -> None:
    """One JSON line per rejected input line; the raw content is redacted, never stored as is."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for item in rejected:
            record = {"file": item.file, "line": item.line, "reason": item.reason, "raw": redact(item.raw)}
            if item.length > len(item.raw):
                record["raw_cut_from_chars"] = item.length
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
