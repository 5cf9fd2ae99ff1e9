"""The answer cache: one append-only JSONL file, keyed by (model, prompt hash, text hash).

    cache = AnswerCache("data/teacher_cache.jsonl")
    key = cache_key("claude-haiku-4-5", prompt.hash, redacted_text)
    cache.get(key) or cache.put(key, {...})

Every answer the model gave (a label, or one for review) is written before the next request is
sent, one whole line per write, fsynced, under an exclusive file lock, so a killed run loses at
most the answer in flight and two processes can share the file. A torn last line (a run killed
mid-write) is ignored on reading and cut off before the next append. Texts are redacted before
they reach here, and only their hash is stored.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cache_key(model: str, prompt_hash: str, text: str) -> str:
    return hashlib.sha256(f"{model}\0{prompt_hash}\0{text_hash(text)}".encode()).hexdigest()


class AnswerCache:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.skipped: list[int] = []  # line numbers that could not be read (re-asked, never fatal)
        self._entries: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._load()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> dict[str, Any] | None:
        return self._entries.get(key)

    def put(self, key: str, entry: dict[str, Any]) -> None:
        line = (json.dumps({"key": key, **entry}, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a+b") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    _cut_torn_tail(handle)
                    handle.write(line)
                    handle.flush()
                    os.fsync(handle.fileno())
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
            self._entries[key] = {"key": key, **entry}

    def _load(self) -> None:
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            torn_tail = number == len(lines)  # no newline after it: a write that never finished
            try:
                entry = json.loads(raw)
                self._entries[entry["key"]] = entry
            except (ValueError, KeyError, TypeError):
                if not torn_tail:
                    self.skipped.append(number)
        if self.skipped:
            print(f"{self.path}: lines {self.skipped[:10]} are not cache entries; those texts will be "
                  "asked again (delete the lines to silence this)", file=sys.stderr)


def _cut_torn_tail(handle) -> None:
    """Truncate an unfinished last line, so the next entry starts on a line of its own."""
    size = handle.seek(0, os.SEEK_END)
    if size == 0:
        return
    handle.seek(max(0, size - 65536))
    tail = handle.read()
    if tail.endswith(b"\n"):
        return
    cut = tail.rfind(b"\n")
    if cut == -1 and size > len(tail):  # a torn line longer than the window: terminate it instead
        handle.write(b"\n")
        return
    handle.truncate(size - len(tail) + cut + 1)
    handle.seek(0, os.SEEK_END)
