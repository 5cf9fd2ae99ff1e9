"""Classification metrics with 95% intervals, on route indices (0..n_routes-1)."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

Z95 = 1.959964


def wilson(successes: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval for a proportion: sound at the small counts of rare routes."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
    return (round(centre - half, 4), round(centre + half, 4))


def macro_f1(y: np.ndarray, predicted: np.ndarray, n_routes: int) -> float:
    """Macro-F1 over routes 0..n_routes-1, a route never true nor predicted scoring 0: sklearn's
    f1_score(labels=range(n), average="macro", zero_division=0), from one bincount (the bootstrap
    calls it 200 times, where sklearn's checks cost ~1.5 s)."""
    confusion = np.bincount(np.asarray(y) * n_routes + np.asarray(predicted), minlength=n_routes * n_routes)
    confusion = confusion.reshape(n_routes, n_routes)
    tp = np.diag(confusion)
    denominator = confusion.sum(axis=0) + confusion.sum(axis=1)  # 2tp + fp + fn
    return float(np.divide(2 * tp, denominator, out=np.zeros(n_routes), where=denominator > 0).mean())


def bootstrap_macro_f1(y: np.ndarray, predicted: np.ndarray, n_routes: int, rounds: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(rounds):
        sample = rng.integers(0, len(y), len(y))
        scores.append(macro_f1(y[sample], predicted[sample], n_routes))
    return (round(float(np.percentile(scores, 2.5)), 4), round(float(np.percentile(scores, 97.5)), 4))


def classification(y: np.ndarray, predicted: np.ndarray, names: list[str]) -> dict:
    """Accuracy and macro-F1 with intervals, per-route precision/recall/F1 and the confusion matrix.
    `predicted` is the final decision: an abstention counts as the reject route."""
    n = len(names)
    correct = int((y == predicted).sum())
    precision, recall, f1, support = precision_recall_fscore_support(
        y, predicted, labels=range(n), zero_division=0
    )
    return {
        "n": int(len(y)),
        "accuracy": round(correct / max(len(y), 1), 4),
        "accuracy_ci95": wilson(correct, len(y)),
        "macro_f1": round(macro_f1(y, predicted, n), 4),
        "macro_f1_ci95": bootstrap_macro_f1(y, predicted, n),
        "per_route": {
            name: {"precision": round(float(p), 4), "recall": round(float(r), 4), "f1": round(float(f), 4), "support": int(s)}
            for name, p, r, f, s in zip(names, precision, recall, f1, support)
        },
        "confusion": confusion_matrix(y, predicted, labels=range(n)).tolist(),
    }
