"""A dataset folder and the checks every pool must pass before anything trains on it.

A dataset is a folder with `train.jsonl`, optional `valid.jsonl` (else a seeded stratified split
of train becomes the calibration split), `test.jsonl`, and an optional taxonomy file (else each
label found in train is a route). `load_dataset` validates every file against the taxonomy;
`check_pool` finds leakage into evaluation sets and texts with two labels.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from routelet.data.rows import Rejected, Sourced, read_jsonl, read_rows, write_jsonl
from routelet.serving.preprocess import normalise, preprocess
from routelet.data.taxonomy import Taxonomy


@dataclass
class Dataset:
    taxonomy: Taxonomy
    train: list[Sourced]
    calib: list[Sourced]
    test: list[Sourced]
    rejected: list[Rejected] = field(default_factory=list)
    lines_read: int = 0

    @property
    def rejected_share(self) -> float:
        return len(self.rejected) / max(self.lines_read, 1)


def load_dataset(
    folder: str | Path,
    taxonomy_file: str = "taxonomy.yaml",
    max_chars: int = 2000,
    valid_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    folder = Path(folder)
    if not (folder / "train.jsonl").is_file():
        raise FileNotFoundError(f"{folder}: a dataset folder needs train.jsonl (and test.jsonl)")
    if not (folder / "test.jsonl").is_file():
        raise FileNotFoundError(f"{folder}: test.jsonl is missing: a dataset needs a held-out test set")
    taxonomy_path = folder / taxonomy_file
    if taxonomy_path.is_file():
        taxonomy = Taxonomy.load(taxonomy_path)
    else:
        # Without a taxonomy the label set is whatever train holds; still validate the rest.
        train_labels = [s.row.label for s in read_rows(folder / "train.jsonl", max_chars=max_chars)[0]]
        taxonomy = Taxonomy.from_labels([label for label in train_labels if label])

    def read(name: str) -> list[Sourced]:
        rows, rejected = read_rows(folder / name, taxonomy.labels, max_chars)
        dataset.rejected.extend(rejected)
        dataset.lines_read += len(rows) + len(rejected)
        return rows

    dataset = Dataset(taxonomy, [], [], [])
    dataset.train = read("train.jsonl")
    if (folder / "valid.jsonl").is_file():
        dataset.calib = read("valid.jsonl")
    else:
        dataset.train, dataset.calib = stratified_split(dataset.train, valid_fraction, seed)
    dataset.test = read("test.jsonl")
    return dataset


def stratified_split(rows: list[Sourced], fraction: float, seed: int) -> tuple[list[Sourced], list[Sourced]]:
    """Hold out `fraction` of each label (at least one row where a label has two or more)."""
    by_label: dict[str, list[Sourced]] = defaultdict(list)
    for row in rows:
        by_label[row.row.label].append(row)
    rng = random.Random(seed)
    kept, held = [], []
    for label in sorted(by_label):
        group = by_label[label][:]
        rng.shuffle(group)
        n_held = max(1, round(fraction * len(group))) if len(group) > 1 else 0
        held += group[:n_held]
        kept += group[n_held:]
    order = {id(row): i for i, row in enumerate(rows)}  # keep file order: diffs stay readable
    return sorted(kept, key=lambda r: order[id(r)]), sorted(held, key=lambda r: order[id(r)])


@dataclass
class PoolReport:
    counts: dict[str, dict[str, int]]
    leaks: list[dict[str, str]]
    conflicts: list[dict[str, object]]
    duplicates: int

    @property
    def problems(self) -> list[str]:
        lines = [
            f"leakage ({leak['kind']}): {leak['pool']} repeats {leak['eval']}: {leak['text']!r}"
            for leak in self.leaks
        ]
        lines += [
            f"conflict: {c['text']!r} has labels {c['labels']} at {', '.join(c['where'])}" for c in self.conflicts
        ]
        return lines

    def as_dict(self) -> dict[str, object]:
        return {
            "counts": self.counts,
            "leaks": self.leaks,
            "conflicts": self.conflicts,
            "duplicates_in_pool": self.duplicates,
            "ok": not self.problems,
        }


def check_pool(pool: dict[str, list[Sourced]], evals: dict[str, list[Sourced]]) -> PoolReport:
    """Leakage from any pool split into any evaluation set (exact text, then after the
    preprocess), and one text carrying two labels anywhere in the pool."""
    counts = {name: dict(sorted(Counter(s.row.label for s in rows).items())) for name, rows in pool.items()}
    exact = {s.row.text: s for rows in evals.values() for s in rows}
    normal = {preprocess(s.row.text): s for rows in evals.values() for s in rows}
    leaks = []
    for rows in pool.values():
        for s in rows:
            if s.row.text in exact:
                leaks.append({"kind": "exact", "pool": s.where, "eval": exact[s.row.text].where, "text": s.row.text})
            elif (key := preprocess(s.row.text)) in normal:
                leaks.append({"kind": "normalised", "pool": s.where, "eval": normal[key].where, "text": s.row.text})

    seen: dict[str, list[Sourced]] = defaultdict(list)
    for rows in pool.values():
        for s in rows:
            seen[normalise(s.row.text)].append(s)
    conflicts = [
        {"text": text, "labels": sorted({s.row.label for s in group}), "where": [s.where for s in group]}
        for text, group in seen.items()
        if len({s.row.label for s in group}) > 1
    ]
    duplicates = sum(len(group) - 1 for group in seen.values())
    return PoolReport(counts, leaks, conflicts, duplicates)


@dataclass
class Prepared:
    """The checked splits the training stages read: text already preprocessed."""

    taxonomy: Taxonomy
    splits: dict[str, list[dict]]

    def texts(self, split: str) -> list[str]:
        return [row["text"] for row in self.splits[split]]

    def labels(self, split: str) -> list[str]:
        return [row["label"] for row in self.splits[split]]

    def route_ids(self, split: str) -> np.ndarray:
        """The true route of each row, as an index into taxonomy.route_names."""
        column = {name: j for j, name in enumerate(self.taxonomy.route_names)}
        return np.array([column[self.taxonomy.route_of(label)] for label in self.labels(split)], dtype=int)

    @property
    def reject_id(self) -> int | None:
        reject = self.taxonomy.reject
        return None if reject is None else self.taxonomy.route_names.index(reject)


SPLITS = ("train", "calib", "test")


def write_prepared(dataset: Dataset, folder: str | Path) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dataset.taxonomy.save(folder / "taxonomy.json")
    for split in SPLITS:
        rows = getattr(dataset, split)
        write_jsonl(folder / f"{split}.jsonl",
                    ({"text": preprocess(s.row.text), "label": s.row.label, "source": s.where} for s in rows))


def load_prepared(folder: str | Path) -> Prepared:
    folder = Path(folder)
    return Prepared(Taxonomy.load(folder / "taxonomy.json"), {s: read_jsonl(folder / f"{s}.jsonl") for s in SPLITS})
