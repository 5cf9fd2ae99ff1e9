"""A dataset folder and the checks every pool must pass before anything trains on it.

A dataset is a folder:

    train.jsonl        the pool the models learn from
    valid.jsonl        optional: the calibration split (else a seeded stratified split of train)
    test.jsonl         the holdout every figure is measured on; never trained on
    evals/*.jsonl      optional: more frozen evaluation sets (any label set; only texts matter)
    taxonomy.yaml      optional: the routes (else each label found in train is a route)

`load_dataset` validates every file against the taxonomy (the checks across rows are in
routelet.data.checks). The dataset's modality comes from its first train row: `{"text": ...}` rows
make a text dataset, `{"image": "relative/path.png", ...}` rows an image dataset (read and checked
by routelet.data.images; every row of one dataset has the same modality). A folder's evaluation sets are its own test.jsonl and evals/: switching
`data.dir` switches what leakage is checked against.
"""

from __future__ import annotations

import json
import os
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from routelet.data.images import prepared_images, read_image_rows, write_prepared_images
from routelet.data.rows import DataError, Rejected, Row, Sourced, read_jsonl, read_rows, write_jsonl
from routelet.data.taxonomy import Taxonomy
from routelet.serving.preprocess import preprocess

EVALS = "evals"  # the subfolder of a dataset folder holding more frozen evaluation sets


@dataclass
class FileCount:
    lines: int = 0
    rejected: int = 0


@dataclass
class _Reads:
    """Every file read so far: the rejected lines and, per file, lines read and rejected."""

    max_chars: int
    modality: str = "text"
    rejected: list[Rejected] = field(default_factory=list)
    files: dict[str, FileCount] = field(default_factory=dict)

    def read(self, path: Path, known: list[str] | None, require_label: bool = True) -> list[Sourced]:
        if self.modality == "image":
            rows, rejected = read_image_rows(path, known, require_label=require_label)
        else:
            rows, rejected = read_rows(path, known, self.max_chars, require_label)
        self.rejected += rejected
        self.files[str(path)] = FileCount(len(rows) + len(rejected), len(rejected))
        return rows

    def require_rows(self, path: Path, why: str) -> None:
        count = self.files[str(path)]
        if count.lines > count.rejected:
            return
        if count.lines == 0:
            raise DataError(f"{path}: no rows (the file is empty): {why}", self.rejected)
        first = next(r for r in self.rejected if r.file == str(path))
        raise DataError(f"{path}: no valid rows: all {count.lines} lines rejected (first, line {first.line}: "
                        f"{first.reason}): {why}", self.rejected)


@dataclass
class Dataset:
    taxonomy: Taxonomy
    train: list[Sourced]
    calib: list[Sourced]
    test: list[Sourced]
    evals: dict[str, list[Sourced]] = field(default_factory=dict)  # test.jsonl and evals/*.jsonl, by path
    rejected: list[Rejected] = field(default_factory=list)
    files: dict[str, FileCount] = field(default_factory=dict)  # lines read and rejected, per file
    taxonomy_source: str = ""  # the taxonomy file, or where the routes came from without one
    modality: str = "text"  # image: the rows are routelet.data.images.ImageSourced


def detect_modality(train: Path) -> str:
    """"image" when the first non-blank row of train.jsonl names an image, else "text" (a row
    that cannot be parsed is left to the text reader, which quarantines it with its reason)."""
    try:
        with train.open("rb") as lines:
            first = next((line for line in lines if line.strip()), b"")
        row = json.loads(first.removeprefix(b"\xef\xbb\xbf").decode("utf-8"))
    except (OSError, ValueError):
        return "text"
    return "image" if isinstance(row, dict) and "image" in row and "text" not in row else "text"


def load_dataset(
    folder: str | Path,
    taxonomy_file: str = "taxonomy.yaml",
    max_chars: int = 2000,
    valid_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """Read and validate a dataset folder. Raises DataError, one line, when it cannot be used."""
    folder = Path(folder)
    _check_folder(folder)
    taxonomy = _load_taxonomy(folder, taxonomy_file)
    reads = _Reads(max_chars, detect_modality(folder / "train.jsonl"))
    train = reads.read(folder / "train.jsonl", taxonomy.labels if taxonomy else None)
    reads.require_rows(folder / "train.jsonl", "a router needs training rows")
    source = str(folder / taxonomy_file)
    if taxonomy is None:
        taxonomy, source = _taxonomy_from_labels(folder, train), "one route per label of train.jsonl"
    if (folder / "valid.jsonl").is_file():
        calib = reads.read(folder / "valid.jsonl", taxonomy.labels)
    else:
        train, calib = stratified_split(train, valid_fraction, seed)
    test = reads.read(folder / "test.jsonl", taxonomy.labels)
    reads.require_rows(folder / "test.jsonl", "every figure is measured on the holdout")
    evals = {str(folder / "test.jsonl"): test}
    for path in sorted((folder / EVALS).glob("*.jsonl")):
        # Other evaluation sets may use other label sets: only their texts matter for leakage.
        evals[str(path)] = reads.read(path, None, require_label=False)
    return Dataset(taxonomy, train, calib, test, evals, reads.rejected, reads.files, source, reads.modality)


def add_pool_files(dataset: Dataset, collected: Path, augmented: Path, max_chars: int) -> dict[str, int]:
    """Join ingest's labeled pool and augment's variants to the train split (never calibration).
    collected.jsonl rows are validated like train.jsonl (a label that left the taxonomy is rejected,
    so quarantined). An augmented row is kept only when its original (`of`, a "<file>:<line>" as
    Sourced.where names it) is in the train split. Returns counts for the report. Both files hold
    texts, so an image dataset joins neither (the counts say so)."""
    if dataset.modality == "image":
        return {"collected": 0, "augmented": 0, "augmented_not_in_train": 0, "not_joined": "an image dataset"}
    reads = _Reads(max_chars)
    extra = reads.read(collected, dataset.taxonomy.labels) if collected.is_file() else []
    dataset.rejected += reads.rejected
    dataset.files |= reads.files
    dataset.train = dataset.train + extra
    in_train = {s.where for s in dataset.train}
    variants, skipped = [], 0
    if augmented.is_file():
        for number, row in enumerate(read_jsonl(augmented), start=1):
            if row["of"] not in in_train or row["label"] not in dataset.taxonomy.labels:
                skipped += 1
                continue
            meta = {"source": row["source"], "of": row["of"]}
            variants.append(Sourced(Row(text=row["text"], label=row["label"], meta=meta), str(augmented), number))
    dataset.train += variants
    return {"collected": len(extra), "augmented": len(variants), "augmented_not_in_train": skipped}


def _check_folder(folder: Path) -> None:
    if not folder.exists():
        raise DataError(f"{folder}: no such dataset folder: set data.dir in params.yaml to a folder "
                        "with train.jsonl and test.jsonl")
    if not folder.is_dir():
        raise DataError(f"{folder}: a file, not a folder: data.dir names a folder with train.jsonl and test.jsonl")
    if (folder / EVALS).is_symlink():  # DVC follows file links in a dependency, not folder links
        raise DataError(f"{folder / EVALS}: a link to a folder, which DVC would not track: make it a real folder "
                        "(the files in it may be links)")
    for name, why in (("train.jsonl", "the rows to train on"), ("test.jsonl", "a held-out test set, never trained on")):
        path = folder / name
        if path.is_symlink() and not path.exists():
            raise DataError(f"{path}: a broken symlink to {os.readlink(path)}: restore its target")
        if not path.is_file():
            raise DataError(f"{path}: missing: a dataset folder needs {name} ({why})")


def _load_taxonomy(folder: Path, name: str) -> Taxonomy | None:
    path = folder / name
    if not path.is_file():
        others = sorted(p.name for p in folder.glob("*taxonomy*.y*ml"))
        if others:  # a typo in data.taxonomy must not silently fall back to one route per label
            raise DataError(f"{path}: missing; the folder has {', '.join(others)}: set data.taxonomy to one of them")
        return None
    try:
        return Taxonomy.load(path)
    except (ValueError, TypeError, KeyError, OSError, yaml.YAMLError) as error:
        message = str(error) if str(error).startswith(str(path)) else f"{path}: {error}"
        raise DataError(f"{message} (fix the taxonomy file: its format is in routelet/data/taxonomy.py)") from None


def _taxonomy_from_labels(folder: Path, train: list[Sourced]) -> Taxonomy:
    try:
        return Taxonomy.from_labels([s.row.label for s in train if s.row.label])
    except (ValueError, TypeError) as error:
        raise DataError(f"{folder / 'train.jsonl'}: its labels do not make a taxonomy ({error}): "
                        "add a taxonomy.yaml") from None


def per_label_indices(labels: list[str], per_label: int | None, seed: int) -> list[int]:
    """Indices of at most `per_label` rows of each label (all when None), a seeded choice, in order."""
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_label[label].append(i)
    rng = random.Random(seed)
    chosen = []
    for label in sorted(by_label):
        rows = by_label[label][:]
        rng.shuffle(rows)
        chosen += rows if per_label is None else rows[:per_label]
    return sorted(chosen)


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
class Prepared:
    """The checked splits the training stages read: text already preprocessed, or images copied
    into the prepared folder (`modality` says which)."""

    taxonomy: Taxonomy
    splits: dict[str, list[dict]]
    modality: str = "text"
    folder: Path = Path(".")

    def texts(self, split: str) -> list[str]:
        return [row["text"] for row in self.splits[split]]

    def inputs(self, split: str) -> list[str]:
        """What a family of this modality takes: the texts, or the image paths."""
        if self.modality == "image":
            return prepared_images(self.folder, self.splits[split])
        return self.texts(split)

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


MODALITY = "modality.json"  # in the prepared folder, written only for a non-text dataset


def write_prepared(dataset: Dataset, folder: str | Path) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dataset.taxonomy.save(folder / "taxonomy.json")
    # A text dataset's prepared folder stays byte for byte what it was: no modality file.
    (folder / MODALITY).unlink(missing_ok=True)
    if dataset.modality == "image":
        (folder / MODALITY).write_text(json.dumps({"modality": "image"}) + "\n")
        write_prepared_images({split: getattr(dataset, split) for split in SPLITS}, folder)
        return
    for split in SPLITS:
        rows = getattr(dataset, split)
        write_jsonl(folder / f"{split}.jsonl",
                    ({"text": preprocess(s.row.text), "label": s.row.label, "source": s.where} for s in rows))


def prepared_modality(folder: str | Path) -> str:
    path = Path(folder) / MODALITY
    return json.loads(path.read_text())["modality"] if path.is_file() else "text"


def load_prepared(folder: str | Path) -> Prepared:
    folder = Path(folder)
    return Prepared(Taxonomy.load(folder / "taxonomy.json"), {s: read_jsonl(folder / f"{s}.jsonl") for s in SPLITS},
                    prepared_modality(folder), folder)
