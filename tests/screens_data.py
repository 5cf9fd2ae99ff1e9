"""A small generated screenshot dataset for image tests: scripts/make_screens.py at 8 images per
screen kind, built once per test module.

    from screens_data import screens  # noqa: F401  (fixture)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def screens(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("screens") / "screens"
    subprocess.run([sys.executable, "-m", "scripts.make_screens", "--out", str(out), "--per-label", "8"],
                   cwd=ROOT, check=True, capture_output=True)
    return out
