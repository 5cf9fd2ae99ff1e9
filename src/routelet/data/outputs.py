"""Writing a stage's outputs so that the same content leaves the same file, untouched.

    write_if_changed(path, jsonl_bytes(rows))   # False: the file already held exactly this

A file is replaced whole (temp file, fsync, rename), so a killed run never leaves half of one, and
an unchanged one keeps its bytes and mtime, so DVC sees nothing to re-run downstream.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def jsonl_bytes(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")


def json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def write_if_changed(path: Path, data: bytes) -> bool:
    """Replace `path` whole unless it already holds `data`; whether it was written."""
    path = Path(path)
    if path.is_file() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".tmp-{path.name}")
    with temp.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temp, path)  # also breaks a hardlink into the DVC cache instead of writing through it
    return True
