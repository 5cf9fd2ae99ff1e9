"""The promoted routers: a copy of each by model_version, an append-only promotions log, and a
`current` link that `routelet serve --router data/promoted/current` follows.

    data/promoted/
      promotions.jsonl            one JSON line per promotion or rollback, appended, never rewritten
      routers/<model_version>/    a copy of each promoted router folder, plus its selfcheck.jsonl
      current -> routers/<v>      the one to serve; replaced atomically (a new link renamed over it)

The log is the truth: replaying it (promote pushes a version, rollback pops one) gives the history,
and `current` is made to match it whenever it does not (a crash between the two writes).
Used by `routelet.serving.promote`; torch-free, POSIX (a symlink and flock).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from routelet.serving.reload import SELFCHECK_FILE

LOG, ROUTERS, CURRENT = "promotions.jsonl", "routers", "current"
# model_version names a folder: no separators, no "..", nothing a shell would mangle.
VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


class RegistryError(ValueError):
    """A registry that cannot be used as it is; the message says where and what to do."""


def folder_digest(folder: Path) -> str:
    """SHA-256 over the folder's files (relative path and bytes), selfcheck.jsonl aside: equal
    digests mean the same router."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != SELFCHECK_FILE):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def git_commit() -> dict | None:
    """{"commit", "dirty"} of the working tree, or None outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Registry:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.log, self.routers, self.current = self.root / LOG, self.root / ROUTERS, self.root / CURRENT

    @contextmanager
    def locked(self) -> Iterator[Registry]:
        """One promote or rollback at a time (another waits)."""
        self.routers.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield self
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # ---- the log

    def entries(self) -> list[dict]:
        if not self.log.is_file():
            return []
        entries = []
        for number, line in enumerate(self.log.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                if entry["event"] not in ("promote", "rollback") or not VERSION.match(entry["model_version"]):
                    raise ValueError(f"event {entry['event']!r}, model_version {entry['model_version']!r}")
            except (ValueError, KeyError, TypeError) as exc:
                raise RegistryError(f"{self.log}:{number}: not a promotions log entry ({exc}); the log is "
                                    "append-only: restore the line from a backup or git, never edit it") from None
            entries.append(entry)
        return entries

    def history(self) -> list[str]:
        """The promoted versions, oldest first, as the log leaves them: the last is current."""
        stack: list[str] = []
        for entry in self.entries():
            if entry["event"] == "promote":
                stack.append(entry["model_version"])
            elif stack and stack[-1] == entry.get("from") and len(stack) > 1:
                stack.pop()
        return stack

    def append(self, entry: dict) -> None:
        """One line, one write on an O_APPEND file, synced: a reader never sees half a line
        written by a finished call."""
        line = (json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
        fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    # ---- router copies and the current link

    def folder(self, version: str) -> Path:
        if not VERSION.match(version):
            raise RegistryError(f"model_version {version!r} cannot name a registry folder: use letters, "
                                "digits, '.', '_', '+', '-' (re-export the router with such a version)")
        return self.routers / version

    def check_same(self, version: str, source: Path) -> None:
        """Refuse a folder that differs from the copy promoted under the same model_version."""
        target = self.folder(version)
        if target.exists() and folder_digest(target) != folder_digest(Path(source)):
            raise RegistryError(f"{target}: a different router was promoted as model_version {version!r}; "
                                "a model_version names one router: re-export the candidate")

    def store(self, source: Path, version: str, selfcheck: list[dict]) -> Path:
        """Copy `source` into routers/<version> (a temporary copy renamed into place) with its
        selfcheck.jsonl. An existing copy is kept when it holds the same files; refused otherwise."""
        target = self.folder(version)
        self.check_same(version, source)
        if target.exists():
            return target
        temporary = self.routers / f".{version}.{uuid.uuid4().hex[:8]}.tmp"
        shutil.copytree(source, temporary)  # follows links: DVC may check outputs out as links
        (temporary / SELFCHECK_FILE).write_text(
            "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in selfcheck), encoding="utf-8")
        os.replace(temporary, target)
        return target

    def current_version(self) -> str | None:
        """Where `current` points (the folder name), or None when there is no link."""
        if not self.current.is_symlink():
            if self.current.exists():
                raise RegistryError(f"{self.current}: is not a link; move it away, then promote again")
            return None
        return Path(os.readlink(self.current)).name

    def point(self, version: str) -> None:
        """Make `current` point at routers/<version>: a new link renamed over the old one, so a
        reader sees either the old or the new router, never no link."""
        if not self.folder(version).is_dir():
            raise RegistryError(f"{self.folder(version)}: missing, so `current` cannot point at it; restore "
                                "the folder (or promote the router again)")
        link = self.root / f".current.{uuid.uuid4().hex[:8]}"
        os.symlink(Path(ROUTERS) / version, link)  # relative: the registry can move
        os.replace(link, self.current)

    def repair(self) -> str | None:
        """Point `current` where the log says; say what was fixed (None when nothing was)."""
        history = self.history()
        if not history or self.current_version() == history[-1]:
            return None
        was = self.current_version()
        self.point(history[-1])
        return f"{self.current} pointed at {was!r}, not at {history[-1]!r} as {self.log.name} says: fixed"
