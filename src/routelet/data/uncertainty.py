"""Uncertainty sampling: which unlabeled texts a model fitted on the current pool is least sure of.

    order = rank_by_uncertainty(texts, pool_texts, pool_labels, UncertaintyConfig(), seed=0)
    teacher.label([texts[i] for i in order])     # the budget is spent on the most informative first

The model is the TF-IDF family (routelet.families.tfidf), fitted inside the calling stage on the
pool as it is now, so no stage depends on its own later output (no cycle in the DAG). The pool may
be capped per label (`max_per_label`): a ranking needs a rough model, not the best one, and the fit
is the slow part. Uncertainty is the margin between the two most probable labels (`margin`) or one
minus the top probability (`top`); ties keep the texts' own order.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from routelet.data.dataset import per_label_indices
from routelet.families import build_family
from routelet.serving.router_format import softmax


class UncertaintyConfig(BaseModel):
    """params.yaml `ingest.uncertainty`."""

    model_config = ConfigDict(extra="forbid")

    measure: Literal["margin", "top"] = "margin"
    max_per_label: int | None = Field(50, ge=1)  # pool rows per label the ranking model sees; None: all
    word_ngrams: tuple[int, int] | None = (1, 2)
    char_ngrams: tuple[int, int] | None = (2, 5)
    C: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _some_features(self) -> UncertaintyConfig:
        if not self.word_ngrams and not self.char_ngrams:
            raise ValueError("word_ngrams and char_ngrams are both null: the ranking model needs one of them")
        return self


def capped_per_label(labels: list[str], cap: int | None, seed: int) -> list[int]:
    """Indices of at most `cap` rows of each label (a seeded choice), in their original order."""
    return per_label_indices(labels, cap, seed)


def uncertainty(probs: np.ndarray, measure: str) -> np.ndarray:
    """Higher is less sure: 1 - (p1 - p2) for `margin`, 1 - p1 for `top`."""
    ordered = np.sort(probs, axis=1)[:, ::-1]
    if measure == "top" or ordered.shape[1] < 2:
        return 1.0 - ordered[:, 0]
    return 1.0 - (ordered[:, 0] - ordered[:, 1])


def rank_by_uncertainty(texts: list[str], pool_texts: list[str], pool_labels: list[str],
                        config: UncertaintyConfig, seed: int) -> list[int] | None:
    """Indices of `texts`, least sure first; None when the pool has fewer than two labels (no model
    can be fitted: keep the given order)."""
    keep = capped_per_label(pool_labels, config.max_per_label, seed)
    labels = [pool_labels[i] for i in keep]
    if len(set(labels)) < 2 or not texts:
        return None
    entry = {"family": "tfidf", "word_ngrams": config.word_ngrams, "char_ngrams": config.char_ngrams, "C": config.C}
    family, _ = build_family("ingest.uncertainty", entry, seed=seed)
    family.fit([pool_texts[i] for i in keep], labels)
    scores = uncertainty(softmax(family.logits(texts)), config.measure)
    return sorted(range(len(texts)), key=lambda i: -scores[i])  # sorted is stable: ties keep their order
