"""How much data does a router need? Accuracy against examples per label, per family.

Each point trains a fresh model on a seeded per-label sample of the training pool and scores
the route it gives on the holdout by argmax, so the curve isolates data size from calibration.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from routelet.data.dataset import Prepared, per_label_indices
from routelet.families import Trained, training_labels


def sample_per_label(texts: list[str], labels: list[str], per_label: int | None, seed: int) -> tuple[list[str], list[str]]:
    """At most `per_label` rows of each label (all rows when None), the same rows for every family."""
    chosen = per_label_indices(labels, per_label, seed)
    return [texts[i] for i in chosen], [labels[i] for i in chosen]


def score(trained: Trained, prepared: Prepared) -> dict[str, float]:
    probs = trained.route_probs(prepared.inputs("test"), prepared.taxonomy)
    y, reject = prepared.route_ids("test"), prepared.reject_id
    predicted = probs.argmax(axis=1)
    result = {"accuracy": round(float((predicted == y).mean()), 4)}
    if reject is not None:
        in_scope = y != reject
        result["in_scope_accuracy"] = round(float((predicted[in_scope] == y[in_scope]).mean()), 4)
    return result


def learning_curve(make_family, prepared: Prepared, sizes: list[int | None], seed: int, name: str) -> list[dict]:
    """One point per size: `make_family()` builds an unfitted family and its label level."""
    points, scores = [], {}
    for size in sizes:
        texts, labels = sample_per_label(prepared.inputs("train"), prepared.labels("train"), size, seed)
        rows = tuple(texts)  # a size at or over every label's count picks the rows of `all`: fit them once
        if rows not in scores:
            family, level = make_family()
            trained = Trained(name, family.fit(texts, training_labels(labels, prepared.taxonomy, level)), level)
            scores[rows] = score(trained, prepared)
        per_label = size if size is not None else int(np.median(list(_counts(labels).values())))
        points.append({"family": name, "per_label": per_label, "rows": len(texts), **scores[rows]})
    return points


def _counts(labels: list[str]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for label in labels:
        counts[label] += 1
    return counts
