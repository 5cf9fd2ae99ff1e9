"""The sample log: what `routelet serve --log-samples DEST` writes, and `pull_samples` reads back.

    log = SampleLog("samples/")                      # or "s3://bucket/prefix" (endpoint_url= for R2)
    log.write([sample_record(text, decision)])       # from any thread; returns at once
    log.close()                                      # writes what is buffered

Record format (one JSON object per line, a valid `routelet.data.rows.Row` with no label):

    {"text": "<redacted request>", "meta": {"route": "weather", "target": "weather-api",
     "confidence": 0.93, "abstain": false, "model_version": "setfit-d2b9b238",
     "time": "2026-12-01T10:00:00.123Z"}}

A "free label" (the application asked a trusted labeler at serve time) adds `"label"` and
`meta.label_source` (who gave it, e.g. "anthropic:claude-sonnet-4-5"); a label never travels
without its source. `write` redacts every text, whoever built the record.

Batches are cut by size (`max_bytes`) or age (`max_seconds`) and written by one background thread,
each whole: a hidden temp file then `os.replace` in a folder, one PUT on S3. A killed server leaves
complete files only (and perhaps a hidden `.tmp-*` file, which readers skip). Torch-free: stdlib,
plus boto3 imported only for an s3:// destination. Credentials come from the environment or the
AWS config (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or AWS_PROFILE), never from arguments.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from routelet.serving.preprocess import redact

DECISION = ("route", "target", "confidence", "abstain", "model_version")
TEMP_PREFIX = ".tmp-"
log = logging.getLogger("routelet.sample_log")

CREDENTIALS_HELP = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment, or AWS_PROFILE "
                    "(or the `profile` setting) to a profile in ~/.aws/credentials")


class StorageError(RuntimeError):
    """A sample store that cannot be used: the message says what to set or fix."""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def sample_record(text: str, decision: Mapping[str, Any] | None = None, label: str | None = None,
                  label_source: str | None = None, when: str | None = None) -> dict[str, Any]:
    """One log record: the request text, the router's decision (a `Router.route` result), and an
    optional trusted label with its source. `when` is an ISO 8601 time with a timezone (default: now)."""
    if (label is None) != (label_source is None):
        raise ValueError("label and label_source go together: a label is kept only with its provenance")
    meta = {key: decision[key] for key in DECISION if key in decision} if decision else {}
    meta["time"] = when or now_iso()
    record: dict[str, Any] = {"text": redact(text)}
    if label is not None:
        record["label"] = label
        meta["label_source"] = label_source
    record["meta"] = meta
    return record


# --------------------------------------------------------------------------------------------
# S3: the client and the errors a user can act on (shared with routelet.data.samples)


def split_s3_url(url: str) -> tuple[str, str]:
    """s3://bucket/some/prefix -> ("bucket", "some/prefix/"); the prefix is a folder, never a stem."""
    if not url.startswith("s3://") or not url[5:].split("/", 1)[0]:
        raise StorageError(f"{url!r} is not an s3://bucket[/prefix] URL")
    bucket, _, prefix = url[5:].partition("/")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def s3_client(endpoint_url: str | None = None, region: str | None = None, profile: str | None = None):
    """A boto3 S3 client; endpoint_url for R2/MinIO (or AWS_ENDPOINT_URL), credentials as boto3 finds them."""
    try:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import ProfileNotFound
    except ImportError:
        raise StorageError("an s3:// location needs boto3: pip install boto3 (it comes with dvc[s3])") from None
    try:
        session = boto3.Session(profile_name=profile or None)
    except ProfileNotFound:
        raise StorageError(f"AWS profile {profile!r} is not in ~/.aws/config or ~/.aws/credentials: "
                           f"create it, or {CREDENTIALS_HELP}") from None
    # Checksums only when required: R2 and other S3 services reject some of boto3's newer defaults.
    config = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"},
                    request_checksum_calculation="when_required", response_checksum_validation="when_required")
    return session.client("s3", endpoint_url=endpoint_url or None, region_name=region or None, config=config)


_CLIENT_ERRORS = {
    "InvalidAccessKeyId": "the access key id is not known there: check AWS_ACCESS_KEY_ID (or your profile)",
    "SignatureDoesNotMatch": "the secret key does not match the access key: check AWS_SECRET_ACCESS_KEY",
    "AccessDenied": "access denied: the credentials need s3:ListBucket, s3:GetObject (pull) or s3:PutObject (log)",
    "403": "access denied (403): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the key's permissions",
    "NoSuchBucket": "the bucket does not exist: check the s3:// URL and the endpoint URL",
    "404": "the bucket does not exist (404): check the s3:// URL and the endpoint URL",
}


@contextlib.contextmanager
def s3_errors(url: str, endpoint_url: str | None) -> Iterator[None]:
    """Turn botocore's exceptions into a StorageError naming the location and what to do."""
    from botocore.exceptions import (ClientError, EndpointConnectionError, NoCredentialsError,
                                     PartialCredentialsError)

    where = f"{url} (endpoint {endpoint_url or os.environ.get('AWS_ENDPOINT_URL') or 'AWS default'})"
    try:
        yield
    except (NoCredentialsError, PartialCredentialsError):
        raise StorageError(f"{where}: no S3 credentials found: {CREDENTIALS_HELP}") from None
    except EndpointConnectionError as exc:
        raise StorageError(f"{where}: cannot reach the endpoint ({redact(str(exc))}): check endpoint_url") from None
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        # The server's own message may echo names from the request: redacted like any stored text.
        problem = _CLIENT_ERRORS.get(code) or redact(f"{code or 'error'}: {exc}")
        raise StorageError(f"{where}: {problem}") from None


# --------------------------------------------------------------------------------------------
# sinks: write one whole batch under a name


class _FolderSink:
    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def put(self, name: str, data: bytes) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(TEMP_PREFIX + path.name)
        with temp.open("wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)


class _S3Sink:
    def __init__(self, url: str, endpoint_url: str | None, region: str | None, profile: str | None):
        self.url, self.endpoint_url = url, endpoint_url
        self.bucket, self.prefix = split_s3_url(url)
        self.client = s3_client(endpoint_url, region, profile)
        with s3_errors(url, endpoint_url):  # fail at start, not at the first batch
            self.client.head_bucket(Bucket=self.bucket)

    def put(self, name: str, data: bytes) -> None:
        with s3_errors(self.url, self.endpoint_url):
            self.client.put_object(Bucket=self.bucket, Key=self.prefix + name, Body=data,
                                   ContentType="application/x-ndjson")


# --------------------------------------------------------------------------------------------


class SampleLog:
    """Buffers records and writes them as whole JSONL batches from one background thread.

    A batch is cut when it reaches `max_bytes` or its oldest record is `max_seconds` old. When the
    store fails, batches wait and are retried with backoff; past `max_pending_bytes` the oldest
    waiting batch is dropped and counted in `dropped` (a server must not grow without bound).
    """

    def __init__(self, dest: str | Path, max_bytes: int = 1 << 20, max_seconds: float = 60.0,
                 endpoint_url: str | None = None, region: str | None = None, profile: str | None = None,
                 max_pending_bytes: int = 64 << 20):
        if max_bytes < 1 or max_seconds <= 0 or max_pending_bytes < max_bytes:
            raise ValueError("SampleLog needs max_bytes >= 1, max_seconds > 0 and max_pending_bytes >= max_bytes")
        dest = str(dest)
        self.dest = dest
        self._sink = (_S3Sink(dest, endpoint_url, region, profile) if dest.startswith("s3://")
                      else _FolderSink(Path(dest)))
        self.max_bytes, self.max_seconds, self.max_pending_bytes = max_bytes, max_seconds, max_pending_bytes
        self._cond = threading.Condition()
        self._buffer: list[bytes] = []
        self._buffer_bytes, self._buffer_since = 0, 0.0
        self._pending: deque[tuple[str, bytes, int]] = deque()  # (name, data, records)
        self._pending_bytes = 0
        self._in_flight = self._closing = False
        self._token, self._seq = uuid.uuid4().hex[:8], 0
        self.written = self.dropped = self.batches = 0
        self._thread = threading.Thread(target=self._run, name="routelet-sample-log", daemon=True)
        self._thread.start()
        atexit.register(self.close)  # an interpreter that exits without close() still writes the buffer

    def write(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Queue records (see `sample_record`); every text is redacted here again."""
        lines = [_encode(record) for record in records]
        with self._cond:
            if self._closing:
                raise RuntimeError(f"SampleLog({self.dest!r}) is closed")
            if lines and not self._buffer:
                self._buffer_since = time.monotonic()
                self._cond.notify_all()  # the writer thread starts timing this batch's age
            for line in lines:
                self._buffer.append(line)
                self._buffer_bytes += len(line)
                if self._buffer_bytes >= self.max_bytes:
                    self._cut()
                    self._buffer_since = time.monotonic()
                    self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Write everything buffered now; True when it is all stored within `timeout` seconds."""
        with self._cond:
            self._cut()
            self._cond.notify_all()
            return self._cond.wait_for(lambda: not self._pending and not self._in_flight, timeout)

    def close(self) -> None:
        """Write what is buffered (one try per batch if the store is failing) and stop the thread."""
        with self._cond:
            if self._closing:
                return
            self._cut()
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        atexit.unregister(self.close)

    def __enter__(self) -> SampleLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _cut(self) -> None:
        """Move the buffer to the pending batches (called with the lock held)."""
        if not self._buffer:
            return
        stamp = datetime.now(timezone.utc)
        self._seq += 1
        name = f"{stamp:%Y-%m-%d}/{stamp:%H%M%S.%f}Z-{self._token}-{self._seq:06d}.jsonl"
        self._pending.append((name, b"".join(self._buffer), len(self._buffer)))
        self._pending_bytes += self._buffer_bytes
        self._buffer, self._buffer_bytes = [], 0
        while self._pending_bytes > self.max_pending_bytes and len(self._pending) > 1:
            name, data, count = self._pending.popleft()
            self._pending_bytes -= len(data)
            self.dropped += count
            log.error("sample log %s: store failing and %d bytes waiting: dropped batch %s (%d records)",
                      self.dest, self._pending_bytes, name, count)

    def _next_batch(self) -> tuple[str, bytes, int] | None:
        """Take the next batch to write; None when closing and nothing is left (lock held)."""
        while True:
            if self._buffer and time.monotonic() - self._buffer_since >= self.max_seconds:
                self._cut()
            if self._pending:
                batch = self._pending.popleft()
                self._pending_bytes -= len(batch[1])
                self._in_flight = True  # out of the queue, so _cut can never drop it
                return batch
            if self._closing:
                return None
            age_left = self.max_seconds - (time.monotonic() - self._buffer_since) if self._buffer else None
            self._cond.wait(age_left)

    def _run(self) -> None:
        backoff = 0.0
        while True:
            with self._cond:
                if backoff:
                    self._cond.wait_for(lambda: self._closing, backoff)
                batch = self._next_batch()
                closing = self._closing
            if batch is None:
                return
            stored = self._store(batch, closing)
            backoff = 0.0 if stored else min(30.0, backoff * 2 or 0.5)
            with self._cond:
                self._in_flight = False
                if stored:
                    self.written += batch[2]
                    self.batches += 1
                elif closing:
                    self.dropped += batch[2]
                else:
                    self._pending.appendleft(batch)  # retried after the backoff
                    self._pending_bytes += len(batch[1])
                self._cond.notify_all()

    def _store(self, batch: tuple[str, bytes, int], closing: bool) -> bool:
        name, data, count = batch
        try:
            self._sink.put(name, data)
        except Exception as exc:  # the store's failure must never reach a request thread
            log.warning("sample log %s: writing %s failed (%s)%s", self.dest, name, redact(str(exc)),
                        f": {count} records lost" if closing else ": will retry")
            return False
        return True


def _encode(record: Mapping[str, Any]) -> bytes:
    if not isinstance(record, Mapping) or not isinstance(record.get("text"), str):
        raise TypeError(f"a sample record is a dict with a 'text' string, got {type(record).__name__}")
    record = dict(record, text=redact(record["text"]))
    return (json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
