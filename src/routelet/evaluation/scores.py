"""Scores of decided routes, by name: numpy only, so that the LLM baseline (torch- and sklearn-free)
and the report's deferral estimate score answers the same way.

    route_scores(["banking", None, "oos"], ["banking", "travel", "oos"], reject="oos")
"""

from __future__ import annotations

import numpy as np


def route_scores(predicted: list[str | None], truth: list[str], reject: str | None) -> dict[str, float]:
    """Accuracy, and with a reject route in-scope accuracy and out-of-scope recall (None: wrong)."""
    predicted_, truth_ = np.array(predicted, dtype=object), np.array(truth, dtype=object)
    correct = predicted_ == truth_
    scores = {"accuracy": round(float(correct.mean()), 4)}
    if reject is not None:
        in_scope = truth_ != reject
        if in_scope.any():
            scores["in_scope_accuracy"] = round(float(correct[in_scope].mean()), 4)
        if (~in_scope).any():
            scores["oos_recall"] = round(float(correct[~in_scope].mean()), 4)
    return scores
