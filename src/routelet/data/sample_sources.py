"""Where logged samples come from: a local folder or an S3 bucket (R2, MinIO, any S3 endpoint).

A source lists its objects in key order with a version (the SHA-256 of a local file, the ETag of
an S3 object) and loads one object's bytes, pinned to that version: an object that vanished or
changed since the listing loads as None and is taken by the next pull. Used by
`routelet.data.samples.pull`; credentials as `routelet.serving.sample_log` explains.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from routelet.serving.sample_log import StorageError, s3_client, s3_errors, split_s3_url


@dataclass(frozen=True)
class SourceObject:
    name: str
    version: str
    size: int
    load: Callable[[], bytes | None]  # None: it vanished or changed since the listing


class FolderSource:
    """Every non-hidden file under a folder (hidden ones are SampleLog's temp files)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.url = self.root.as_posix()
        if self.root.exists() and not self.root.is_dir():
            raise StorageError(f"sample source {self.url} is a file: give a folder or an s3:// URL")

    def objects(self) -> Iterator[SourceObject]:
        if not self.root.is_dir():
            return
        files = (p for p in self.root.rglob("*") if p.is_file())
        for path in sorted(files, key=lambda p: p.relative_to(self.root).as_posix()):
            relative = path.relative_to(self.root).as_posix()
            if any(part.startswith(".") for part in relative.split("/")):
                continue
            version = _sha256(path)
            # A file name that is not UTF-8 gets a printable name; the file is still read by its path.
            name = f"{self.url}/{relative}".encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            yield SourceObject(name, version, path.stat().st_size,
                               lambda path=path, version=version: _read_if(path, version))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_if(path: Path, version: str) -> bytes | None:
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        return None
    return content if hashlib.sha256(content).hexdigest() == version else None


class S3Source:
    """Every object under s3://bucket/prefix; the ETag is the version, GET is pinned to it."""

    def __init__(self, url: str, endpoint_url: str | None = None, region: str | None = None,
                 profile: str | None = None):
        self.url, self.endpoint_url = url.rstrip("/"), endpoint_url
        self.bucket, self.prefix = split_s3_url(url)
        self.client = s3_client(endpoint_url, region, profile)

    def objects(self) -> Iterator[SourceObject]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        with s3_errors(self.url, self.endpoint_url):
            for page in pages:
                for item in page.get("Contents", []):
                    if item["Key"].endswith("/"):
                        continue  # a "folder" marker, no content
                    etag = item["ETag"].strip('"')
                    yield SourceObject(f"s3://{self.bucket}/{item['Key']}", etag, item["Size"],
                                       lambda key=item["Key"], etag=etag: self._get(key, etag))

    def _get(self, key: str, etag: str) -> bytes | None:
        from botocore.exceptions import ClientError

        with s3_errors(self.url, self.endpoint_url):
            try:
                return self.client.get_object(Bucket=self.bucket, Key=key, IfMatch=etag)["Body"].read()
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "PreconditionFailed", "412"):
                    return None
                raise


def open_source(url: str, endpoint_url: str | None = None, region: str | None = None,
                profile: str | None = None) -> FolderSource | S3Source:
    if url.startswith("s3://"):
        return S3Source(url, endpoint_url, region, profile)
    return FolderSource(url)
