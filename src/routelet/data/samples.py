"""Pull logged samples from a folder or an S3 bucket into an append-only JSONL, exactly once.

    from routelet.data.samples import Limits, pull
    summary = pull("s3://bucket/prefix", Path("data/samples"), endpoint_url="https://<acct>.r2.cloudflarestorage.com")

Usually run as the stage: `python -m stages.pull_samples`. The source holds JSONL objects in the
format `routelet.serving.sample_log` writes (a request, its decision, perhaps a trusted label with
its `label_source`). The output folder holds:

- pulled.jsonl      every valid row, text redacted, with `meta.pulled` = {file, version, line}
- quarantine.jsonl  every rejected object or line: file, version, line, reason, raw (redacted, cut)
- manifest.json     the objects taken (key -> version and counts) and the committed file sizes

Objects are taken in key order; an object is new when its key is not in the manifest or its
version (the S3 ETag; the SHA-256 of a local file) changed. A changed object is taken again, whole,
as a new version: its rows are appended beside the old ones and told apart by
`meta.pulled.version`; ingest deduplicates texts. Deleted objects change nothing.

Exactly once: rows are appended and fsynced, then the manifest (with the new sizes) replaces the
old one in one rename. A run killed in between leaves bytes past the committed sizes; the next run
cuts them off and takes those objects again, so the result is byte for byte what one clean run
writes. A run with nothing new writes nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from routelet.data.rows import parse_line as parse_row
from routelet.data.sample_sources import FolderSource, SourceObject, open_source
from routelet.serving.preprocess import redact
from routelet.serving.sample_log import TEMP_PREFIX, StorageError

PULLED, QUARANTINE, MANIFEST = "pulled.jsonl", "quarantine.jsonl", "manifest.json"
RAW_CHARS = 200  # quarantined content kept, after redaction: enough to find the line, no more
SNIFF_BYTES = 8192
COUNTS = ("rows", "labeled", "quarantined")


@dataclass(frozen=True)
class Limits:
    max_object_bytes: int = 64 << 20
    max_line_bytes: int = 64 << 10
    max_chars: int = 2000


class SampleMeta(BaseModel):
    """`meta` of a sample row: the router's decision, when it was made, who labeled it."""

    model_config = ConfigDict(extra="forbid", strict=True)

    route: str | None = None
    target: str | None = None
    confidence: float | None = Field(None, ge=0.0, le=1.0)
    abstain: bool | None = None
    model_version: str | None = None
    time: str | None = None
    label_source: str | None = Field(None, min_length=1)

    @field_validator("time")
    @classmethod
    def _iso_time(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"not an ISO 8601 time: {value[:40]!r}") from None
        if moment.tzinfo is None:
            raise ValueError("an ISO 8601 time needs a timezone (e.g. 2026-12-01T10:00:00Z)")
        return value


@dataclass
class Outcome:
    """What one object gave: encoded row lines and quarantine records."""

    rows: list[bytes] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    labeled: int = 0
    unread: bool = False  # quarantined whole for its size: taken again once max_object_bytes allows


# --------------------------------------------------------------------------------------------
# parsing one object


def parse_object(name: str, version: str, content: bytes, limits: Limits) -> Outcome:
    """Validate every line of one object; a bad line is quarantined, the rest is kept."""
    outcome = Outcome()
    reason = _not_jsonl(content)
    if reason:
        outcome.rejected.append(_rejected(name, version, None, reason, content[:SNIFF_BYTES]))
        return outcome
    content = content.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 BOM is harmless: drop it
    for number, line in enumerate(content.split(b"\n"), start=1):
        line = line.removesuffix(b"\r")
        if not line.strip():
            continue
        reason, row = _parse_line(line, limits)
        if reason:
            outcome.rejected.append(_rejected(name, version, number, reason, line))
            continue
        row["meta"]["pulled"] = {"file": name, "version": version, "line": number}
        try:
            outcome.rows.append((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
        except UnicodeEncodeError as error:  # a \ud800-style escape in a field other than text
            reason = f"lone surrogate U+{ord(error.object[error.start]):04X} in a field: not valid Unicode"
            outcome.rejected.append(_rejected(name, version, number, reason, line))
            continue
        outcome.labeled += "label" in row
    return outcome


def _not_jsonl(content: bytes) -> str:
    head = content[:SNIFF_BYTES]
    if head.startswith(b"\x1f\x8b"):
        return "gzip-compressed, not JSONL: upload plain UTF-8 JSONL"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "UTF-16/32 text, not UTF-8 JSONL: re-encode it as UTF-8"
    if b"\x00" in head:
        return "binary content (NUL bytes), not JSONL"
    return ""


def _parse_line(line: bytes, limits: Limits) -> tuple[str, dict[str, Any] | None]:
    if len(line) > limits.max_line_bytes:
        return f"line has {len(line)} bytes, over max_line_bytes={limits.max_line_bytes}", None
    reason, row = parse_row(line, None, limits.max_chars, False)
    if row is None:
        return reason, None
    try:
        meta = SampleMeta.model_validate(row.meta or {})
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in ("meta", *first["loc"]))
        return f"{where}: {first['msg'].removeprefix('Value error, ')}", None
    if (row.label is None) != (meta.label_source is None):
        return "label and meta.label_source go together: a label is kept only with its provenance", None
    record: dict[str, Any] = {"text": redact(row.text)}
    if row.label is not None:
        record["label"] = row.label
    if row.id is not None:
        record["id"] = row.id
    record["meta"] = meta.model_dump(exclude_unset=True)
    return "", record


def _rejected(name: str, version: str, line: int | None, reason: str, raw: bytes) -> dict[str, Any]:
    # Redact before cutting, so a secret cut in half cannot slip past the patterns.
    text = redact(raw[:SNIFF_BYTES].decode("utf-8", "replace"))[:RAW_CHARS]
    # A reason may quote a field name from the input: keep it writable as UTF-8 whatever it holds.
    reason = reason.encode("utf-8", "backslashreplace").decode("utf-8")
    return {"file": name, "version": version, "line": line, "reason": reason, "raw": text}


# --------------------------------------------------------------------------------------------
# the output folder: append, commit, reconcile


class Store:
    """pulled.jsonl and quarantine.jsonl grow only; manifest.json says how far they are committed."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.manifest = self._load()
        self._handles: dict[str, Any] = {}

    def _load(self) -> dict[str, Any]:
        path = self.folder / MANIFEST
        if path.exists():
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise StorageError(f"{path} is not valid JSON ({exc}): restore it with `dvc checkout "
                                   f"{self.folder}`, or delete {self.folder} to pull everything again") from None
        if any((self.folder / name).exists() and (self.folder / name).stat().st_size
               for name in (PULLED, QUARANTINE)):
            raise StorageError(f"{self.folder}: rows but no {MANIFEST}: restore it with `dvc checkout "
                               f"{self.folder}`, or delete {self.folder} to pull everything again")
        return {"format": 1, "sizes": {PULLED: 0, QUARANTINE: 0}, "objects": {}, "totals": dict.fromkeys(COUNTS, 0)}

    def open(self) -> list[str]:
        """Cut what an interrupted run wrote past the committed sizes; say what was cut."""
        self.folder.mkdir(parents=True, exist_ok=True)
        notes = []
        for name, committed in self.manifest["sizes"].items():
            path = self.folder / name
            _own_copy(path)
            handle = self._handles[name] = path.open("ab")
            size = handle.tell()
            if size < committed:
                self.close()
                raise StorageError(f"{path} has {size} bytes but {MANIFEST} committed {committed}: it was "
                                   f"cut or edited; restore it with `dvc checkout {self.folder}`")
            if size > committed:
                handle.truncate(committed)
                notes.append(f"{path}: dropped {size - committed} bytes an interrupted run left uncommitted")
        if not (self.folder / MANIFEST).exists():
            self.commit()
        return notes

    def add(self, obj: SourceObject, outcome: Outcome) -> None:
        self._handles[PULLED].writelines(outcome.rows)
        self._handles[QUARANTINE].writelines(
            (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8") for record in outcome.rejected)
        counts = {"rows": len(outcome.rows), "labeled": outcome.labeled, "quarantined": len(outcome.rejected)}
        entry = {"version": obj.version} | counts
        self.manifest["objects"][obj.name] = entry | {"unread": True} if outcome.unread else entry
        for key, count in counts.items():  # every version ever taken: what the two files hold
            self.manifest["totals"][key] += count

    def commit(self) -> None:
        """Make the appended rows durable, then record them in the manifest by one rename."""
        for name, handle in self._handles.items():
            handle.flush()
            os.fsync(handle.fileno())
            self.manifest["sizes"][name] = handle.tell()
        _replace(self.folder / MANIFEST, json.dumps(self.manifest, indent=1, sort_keys=True) + "\n")

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()

    def totals(self) -> dict[str, int]:
        totals = self.manifest["totals"]
        return {"objects": len(self.manifest["objects"])} | {key: totals[key] for key in COUNTS}


def _own_copy(path: Path) -> None:
    """A file shared with the DVC cache (hardlink or symlink) is copied first: appending must not
    change the cached object."""
    if path.is_symlink() or (path.exists() and path.stat().st_nlink > 1):
        temp = path.with_name(TEMP_PREFIX + path.name)
        shutil.copyfile(path, temp)
        os.replace(temp, path)


def _replace(path: Path, text: str) -> None:
    temp = path.with_name(TEMP_PREFIX + path.name)
    with temp.open("w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temp, path)


# --------------------------------------------------------------------------------------------


@dataclass
class Summary:
    source: str
    new_objects: int = 0
    changed_objects: int = 0
    new_rows: int = 0
    new_quarantined: int = 0
    skipped: list[str] = field(default_factory=list)  # vanished or changed while pulling: next run
    notes: list[str] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def pull(source: str, out: str | Path, *, endpoint_url: str | None = None, region: str | None = None,
         profile: str | None = None, limits: Limits = Limits(), workers: int = 8,
         commit_seconds: float = 1.0) -> Summary:
    """Take every new object of `source` into `out`; see the module docstring. `workers` objects
    download at once; their rows are still appended in key order."""
    start = time.perf_counter()
    src = open_source(source, endpoint_url, region, profile)
    store = Store(Path(out))
    summary = Summary(src.url, notes=store.open())
    if isinstance(src, FolderSource) and not src.root.is_dir():
        summary.notes.append(f"source folder {src.url} does not exist: nothing to pull")
    last_commit, dirty = time.monotonic(), False
    try:
        new = (obj for obj in src.objects() if _is_new(obj, store, limits))
        for obj, outcome in _prefetched(new, limits, workers):
            if outcome is None:
                summary.skipped.append(obj.name)
                continue
            known = obj.name in store.manifest["objects"]
            store.add(obj, outcome)
            summary.changed_objects += known
            summary.new_objects += not known
            summary.new_rows += len(outcome.rows)
            summary.new_quarantined += len(outcome.rejected)
            dirty = True
            if time.monotonic() - last_commit >= commit_seconds:
                store.commit()
                last_commit, dirty = time.monotonic(), False
    finally:
        if dirty:  # what is complete is kept, even when listing or a download failed
            store.commit()
        store.close()
    summary.totals = store.totals()
    summary.seconds = time.perf_counter() - start
    return summary


def _is_new(obj: SourceObject, store: Store, limits: Limits) -> bool:
    known = store.manifest["objects"].get(obj.name)
    if known is None or known["version"] != obj.version:
        return True
    return known.get("unread", False) and obj.size <= limits.max_object_bytes


def _prefetched(objects: Iterable[SourceObject], limits: Limits,
                workers: int) -> Iterator[tuple[SourceObject, Outcome | None]]:
    """(object, outcome) in the objects' order, with up to 2 x `workers` downloads ahead."""
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="pull") as pool:
        ahead: deque[tuple[SourceObject, Future]] = deque()
        try:
            for obj in objects:
                ahead.append((obj, pool.submit(_take, obj, limits)))
                if len(ahead) >= 2 * workers:
                    obj, future = ahead.popleft()
                    yield obj, future.result()
            while ahead:
                obj, future = ahead.popleft()
                yield obj, future.result()
        finally:
            for _, future in ahead:
                future.cancel()


def _take(obj: SourceObject, limits: Limits) -> Outcome | None:
    if obj.size > limits.max_object_bytes:
        outcome = Outcome(unread=True)
        reason = (f"object has {obj.size} bytes, over max_object_bytes={limits.max_object_bytes}: not read; "
                  "raise the limit to take it")
        outcome.rejected.append(_rejected(obj.name, obj.version, None, reason, b""))
        return outcome
    content = obj.load()
    return None if content is None else parse_object(obj.name, obj.version, content, limits)
