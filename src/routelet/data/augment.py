"""Augment: label-preserving, voice-like variants of the training pool (routelet.data.voice).

    variants, report = augment(pool_rows, blocked, AugmentConfig(seed=0, per_row=1))

Usually run as the stage: `python -m stages.augment`. The pool is the dataset's train rows and
data/collected.jsonl, never its calibration split (valid.jsonl, or the rows the seeded split
carves out). Each row written is

    {"text": variant, "label": the original's label, "source": "augment:<kind>[+<kind>]",
     "of": "<file>:<line> of the original"}

so checkdata can keep a variant only where its original landed in the train split. A variant is
never written when its normalised form (routelet.serving.preprocess.preprocess, checkdata's
leakage comparison) equals an evaluation text, a calibration text, a pool text (which would add
nothing, or contradict that row's label) or an earlier variant; the report counts each reason.
Each row's variants depend only on the seed and that row (text and label), so a growing pool keeps
the variants it had. Texts are redacted before they are perturbed and again after.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from routelet.data.dataset import Dataset
from routelet.data.dedup import TextIndex, evaluation_sets, index_rows
from routelet.data.rows import Rejected, read_rows
from routelet.data.voice import APPLIES, KINDS, perturb
from routelet.serving.preprocess import preprocess, redact

SKIPPED = ("unchanged", "evals", "calib", "pool", "repeat")  # why a variant was not written


class AugmentConfig(BaseModel):
    """params.yaml `augment`."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True  # false: an empty data/augmented.jsonl, so the DAG keeps its shape
    seed: int = 0
    kinds: list[str] = Field(default_factory=lambda: list(KINDS))
    per_row: int = Field(1, ge=0, le=20)  # variants tried per augmented row
    share: float = Field(1.0, ge=0, le=1)  # of the pool rows, the share augmented (a seeded choice per row)
    kinds_per_variant: int = Field(1, ge=1)  # kinds combined in one variant ("filler+asr")

    @field_validator("kinds")
    @classmethod
    def _known(cls, kinds: list[str]) -> list[str]:
        unknown = [kind for kind in kinds if kind not in KINDS]
        if unknown or not kinds:
            raise ValueError(f"unknown kind(s) {unknown}: choose from {', '.join(KINDS)}" if unknown
                             else f"no kinds: choose from {', '.join(KINDS)}, or set augment.enabled: false")
        return kinds


@dataclass(frozen=True)
class PoolRow:
    text: str
    label: str
    where: str  # file:line, as checkdata names the row


@dataclass
class Blocked:
    """Texts no variant may repeat, by why: evaluation sets, the calibration split, the pool."""

    evals: TextIndex
    calib: TextIndex
    pool: TextIndex


@dataclass
class Report:
    enabled: bool
    pool_rows: int = 0
    augmented_rows: int = 0
    variants: int = 0
    by_kind: Counter = field(default_factory=Counter)
    by_label: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "pool_rows": self.pool_rows, "augmented_rows": self.augmented_rows,
                "variants": self.variants, "by_kind": dict(sorted(self.by_kind.items())),
                "by_label": dict(sorted(self.by_label.items())),
                "skipped": {reason: self.skipped[reason] for reason in SKIPPED}}


def training_pool(dataset: Dataset, collected: Path, frozen_evals: Path,
                  max_chars: int) -> tuple[list[PoolRow], Blocked, list[Rejected]]:
    """The rows to augment (the dataset's train split, then the collected pool) and the texts no
    variant may repeat. Collected rows whose label left the taxonomy are returned as rejected:
    checkdata quarantines them, so no variant of them is made."""
    extra, rejected = read_rows(collected, dataset.taxonomy.labels, max_chars) if collected.is_file() else ([], [])
    pool = [PoolRow(s.row.text, s.row.label, s.where) for s in dataset.train + extra]
    blocked = Blocked(evaluation_sets(dataset.evals, frozen_evals, max_chars), index_rows(dataset.calib),
                      index_rows(dataset.train + extra))
    return pool, blocked, rejected


def row_rng(seed: int, row: PoolRow) -> random.Random:
    # A str seed is hashed with SHA-512: the same on every run and platform, whatever PYTHONHASHSEED.
    return random.Random(f"{seed}\0{row.label}\0{row.text}")


def variants_of(row: PoolRow, config: AugmentConfig) -> list[tuple[str, str]]:
    """(kind, variant text) candidates for one row, before any dedup."""
    rng = row_rng(config.seed, row)
    if rng.random() >= config.share:
        return []
    base = redact(row.text)
    usable = [kind for kind in config.kinds if APPLIES[kind](base)]
    found = []
    for _ in range(config.per_row if usable else 0):
        chosen = rng.sample(usable, min(config.kinds_per_variant, len(usable)))
        kinds = [kind for kind in KINDS if kind in chosen]
        found.append(("+".join(kinds), redact(perturb(base, kinds, rng))))
    return found


def augment(pool: list[PoolRow], blocked: Blocked, config: AugmentConfig) -> tuple[list[dict[str, Any]], Report]:
    """Every kept variant of the pool, in pool order, and the counts for report/augment.json."""
    report = Report(config.enabled, pool_rows=len(pool))
    if not config.enabled:
        return [], report
    written = TextIndex()
    rows = []
    for row in pool:
        original = preprocess(row.text)
        kept = 0
        for kind, text in variants_of(row, config):
            normal = preprocess(text)
            reason = ("unchanged" if normal == original else
                      next((name for name in ("evals", "calib", "pool")
                            if getattr(blocked, name).find(text, normal)), None)
                      or ("repeat" if written.find(text, normal) else None))
            if reason:
                report.skipped[reason] += 1
                continue
            written.add(text, row.where, normal)
            rows.append({"text": text, "label": row.label, "source": f"augment:{kind}", "of": row.where})
            report.by_kind[kind] += 1
            report.by_label[row.label] += 1
            kept += 1
        report.augmented_rows += kept > 0
    report.variants = len(rows)
    return rows, report
