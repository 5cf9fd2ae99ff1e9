"""Texts seen before, exactly and after the one preprocess: what ingest and augment dedup against.

    index = TextIndex()
    index.add("What's my balance?", "evals/holdout.jsonl:12")
    index.find("what's my balance?")      # ("normalised", "evals/holdout.jsonl:12")

"Normalised" is `routelet.serving.preprocess.preprocess` (NFKC, lowercase, one space, redaction),
the same comparison checkdata's leakage check makes, so a sample or variant this index lets
through is never a leak there. `evaluation_sets` lists every frozen text a pool row may not repeat.
"""

from __future__ import annotations

from pathlib import Path

from routelet.data.rows import read_rows
from routelet.serving.preprocess import preprocess


class TextIndex:
    """Where each text (exact) and each preprocessed text was first seen."""

    def __init__(self) -> None:
        self.exact: dict[str, str] = {}
        self.normal: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.normal)

    def add(self, text: str, where: str, normal: str | None = None) -> None:
        self.exact.setdefault(text, where)
        self.normal.setdefault(preprocess(text) if normal is None else normal, where)

    def find(self, text: str, normal: str | None = None) -> tuple[str, str] | None:
        """("exact" or "normalised", where it was seen), or None for a text not seen."""
        if text in self.exact:
            return "exact", self.exact[text]
        where = self.normal.get(preprocess(text) if normal is None else normal)
        return None if where is None else ("normalised", where)


def index_rows(rows, index: TextIndex | None = None) -> TextIndex:
    """Add `routelet.data.rows.Sourced` rows (a dataset split, an evaluation set) to an index."""
    index = index if index is not None else TextIndex()
    for sourced in rows:
        index.add(sourced.row.text, sourced.where)
    return index


def evaluation_sets(dataset_evals: dict[str, list], frozen: Path, max_chars: int) -> TextIndex:
    """Every evaluation text: a dataset's own (its test.jsonl and evals/, as `load_dataset` reads
    them) and the repository's frozen `evals/*.jsonl`, whatever their label set. Lines those files
    reject are checkdata's to report; a valid text in them is enough to block a pool row."""
    index = TextIndex()
    for rows in dataset_evals.values():
        index_rows(rows, index)
    for path in sorted(Path(frozen).glob("*.jsonl")):
        rows, _ = read_rows(path, None, max_chars, require_label=False)
        index_rows(rows, index)
    return index
