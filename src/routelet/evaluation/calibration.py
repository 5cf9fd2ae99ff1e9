"""Calibration and abstention, all on route-level probabilities (what a caller acts on).

A family's fine-label logits become route probabilities by softmax at a temperature, then the
sum over each route's labels (`Trained.to_routes`). `fit_temperature_routes` picks the temperature
that minimises route-level NLL on the calibration split; `choose_threshold` picks the confidence
gate from an abstain policy, also on the calibration split, never on a holdout.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.metrics import roc_auc_score

from routelet.params import POLICY_TARGETS
from routelet.serving.router_format import Policy


EPS = 1e-12


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(probs[np.arange(len(y)), y] + EPS).mean())


def brier(probs: np.ndarray, y: np.ndarray) -> float:
    onehot = np.eye(probs.shape[1])[y]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def reliability(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> list[dict[str, float]]:
    """Per confidence bin: mean confidence, accuracy and count (the reliability diagram)."""
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == y
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    rows = []
    for b in range(bins):
        mask = index == b
        if mask.any():
            rows.append(
                {"bin": round(float((edges[b] + edges[b + 1]) / 2), 4), "confidence": float(confidence[mask].mean()),
                 "accuracy": float(correct[mask].mean()), "count": int(mask.sum())}
            )
    return rows


def ece(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of the top-1 confidence, equal-width bins."""
    if len(y) == 0:
        return float("nan")
    return float(sum(r["count"] * abs(r["confidence"] - r["accuracy"]) for r in reliability(probs, y, bins)) / len(y))


def fit_temperature_routes(probs_at, y: np.ndarray) -> float:
    """The temperature minimising route-level NLL, searched on log T in [0.05, 20].
    `probs_at(T)` gives route probabilities at temperature T."""
    result = minimize_scalar(
        lambda log_t: nll(probs_at(float(np.exp(log_t))), y), bounds=(np.log(0.05), np.log(20.0)), method="bounded"
    )
    return float(np.exp(result.x))


def quality(probs: np.ndarray, y: np.ndarray, in_scope: np.ndarray) -> dict[str, float]:
    """NLL, Brier and ECE on all rows and ECE on in-scope rows only: with an out-of-scope share
    that differs between splits, the two slices tell different stories."""
    figures = {
        "nll": nll(probs, y),
        "brier": brier(probs, y),
        "ece": ece(probs, y),
        "ece_in_scope": ece(probs[in_scope], y[in_scope]) if in_scope.any() else float("nan"),
    }
    # Rounded: the last digits wobble with BLAS summation order and would churn every diff.
    return {key: round(value, 6) for key, value in figures.items()}


def gate_only_probs(probs: np.ndarray, reject: int | None) -> np.ndarray:
    """Route probabilities with the reject route's mass removed and the rest renormalised:
    what a router with a confidence gate and no reject class would see."""
    if reject is None:
        return probs
    kept = probs.copy()
    kept[:, reject] = 0.0
    return kept / np.maximum(kept.sum(axis=1, keepdims=True), EPS)


def decisions(probs: np.ndarray, y: np.ndarray, reject: int | None, policy: Policy) -> dict[str, float]:
    """In-scope accuracy (an abstained in-scope row counts as wrong), out-of-scope recall (share of
    reject-route rows abstained on), coverage, and precision on accepted rows."""
    abstain = policy.abstains(probs, reject)
    predicted = probs.argmax(axis=1)
    in_scope = y != reject if reject is not None else np.ones(len(y), bool)
    correct = (predicted == y) & ~abstain
    accepted = ~abstain
    return {
        "in_scope_accuracy": float(correct[in_scope].mean()) if in_scope.any() else float("nan"),
        "oos_recall": float(abstain[~in_scope].mean()) if (~in_scope).any() else float("nan"),
        "coverage": float(accepted.mean()),
        "accepted_precision": float(correct[accepted].mean()) if accepted.any() else float("nan"),
    }


def choose_threshold(probs: np.ndarray, y: np.ndarray, reject: int | None, target: str, value: float,
                     margin: float = 0.0, reject_class: bool = True) -> Policy:
    """The confidence threshold for an abstain policy, from these (calibration) rows.

    - `expected_accuracy`: maximise the decision accuracy expected when a share `value` of the
      traffic is out of scope, (1 - value) * in-scope accuracy + value * out-of-scope recall. The
      calibration split's own out-of-scope share rarely matches traffic (CLINC150's valid is 3%),
      so the share is stated, not inherited.
    - `in_scope_accuracy`: the threshold turning away the most out-of-scope rows while in-scope
      accuracy (an abstained in-scope row counts as wrong) stays at least `value`. The accuracy is
      estimated on in-scope rows, which every split has plenty of.
    - `oos_recall` / `precision`: the smallest threshold whose out-of-scope recall / accuracy on
      accepted rows reaches `value`; the smallest keeps the most in-scope traffic.
    """
    if target not in POLICY_TARGETS:
        raise ValueError(f"calibrate.policy.target is {target!r}; choose one of: {', '.join(POLICY_TARGETS)}")
    if target == "in_scope_accuracy":
        # A gate is worth its in-scope cost only if it turns away one more out-of-scope row, so the
        # candidates sit just above those rows' confidences (not at 1.0 on an easy split).
        oos_top = probs[y == reject].max(axis=1) if reject is not None else np.zeros(0)
        gates = np.unique(np.concatenate([[0.0], np.nextafter(oos_top, 2.0)]))
        meeting = []
        for gate in (Policy(threshold=float(t), margin=margin, reject_class=reject_class) for t in gates):
            result = decisions(probs, y, reject, gate)
            if result["in_scope_accuracy"] >= value:
                meeting.append((np.nan_to_num(result["oos_recall"]), -gate.threshold, gate))
        # The most out-of-scope recall, then the lowest gate; no gate when none keeps the target.
        return max(meeting, key=lambda m: m[:2])[2] if meeting else Policy(margin=margin, reject_class=reject_class)
    candidates = np.unique(np.concatenate([[0.0], probs.max(axis=1)]))
    policies = [Policy(threshold=float(t), margin=margin, reject_class=reject_class) for t in candidates]
    if target == "expected_accuracy":
        def expected(policy: Policy) -> float:
            result = decisions(probs, y, reject, policy)
            return (1 - value) * result["in_scope_accuracy"] + value * np.nan_to_num(result["oos_recall"])
        return max(policies, key=expected)  # max keeps the first (smallest) threshold among ties
    key = {"oos_recall": "oos_recall", "precision": "accepted_precision"}[target]
    for policy in policies:
        if decisions(probs, y, reject, policy)[key] >= value:
            return policy
    return Policy(threshold=min(1.0, float(candidates[-1]) + 1e-6), margin=margin, reject_class=reject_class)


def risk_coverage(probs: np.ndarray, y: np.ndarray, points: int = 50) -> list[dict[str, float]]:
    """Error rate among the most confident `coverage` share of rows, for coverage from 0 to 1."""
    order = np.argsort(-probs.max(axis=1))
    wrong = (probs.argmax(axis=1) != y)[order]
    cumulative = np.cumsum(wrong) / np.arange(1, len(y) + 1)
    rows = []
    for coverage in np.linspace(1 / points, 1, points):
        k = max(1, int(round(coverage * len(y))))
        rows.append({"coverage": round(float(coverage), 4), "risk": float(cumulative[k - 1])})
    return rows


def oos_auroc(probs: np.ndarray, y: np.ndarray, reject: int | None) -> float:
    """How well the top in-scope route probability separates in-scope from out-of-scope rows."""
    if reject is None or (y == reject).all() or (y != reject).all():
        return float("nan")
    score = np.delete(probs, reject, axis=1).max(axis=1)
    return float(roc_auc_score((y != reject).astype(int), score))


def policy_score(result: dict[str, float], target: str, value: float, has_reject: bool) -> dict:
    """How well a family did under the abstain policy on the calibration split, as one number to
    rank families by (higher is better) and whether it met the policy's target. What the policy
    maximises is the score: out-of-scope recall under an in-scope accuracy floor, expected accuracy,
    in-scope accuracy under an out-of-scope recall floor, coverage under a precision floor. Without
    a reject route there is nothing out of scope: in-scope accuracy is the score."""
    in_scope, oos = result["in_scope_accuracy"], np.nan_to_num(result["oos_recall"])
    if not has_reject:
        metric, meets = "in_scope_accuracy", target != "precision" or result["accepted_precision"] >= value
    elif target == "in_scope_accuracy":
        metric, meets = "oos_recall", in_scope >= value
    elif target == "expected_accuracy":
        return {"metric": "expected_accuracy", "score": round((1 - value) * in_scope + value * oos, 6),
                "meets_target": True}
    elif target == "oos_recall":
        metric, meets = "in_scope_accuracy", oos >= value
    else:
        metric, meets = "coverage", result["accepted_precision"] >= value
    return {"metric": metric, "score": round(float(np.nan_to_num(result[metric])), 6), "meets_target": bool(meets)}


MISSING_LOGIT = -30.0  # a label a fold never saw: probability ~0, finite so NLL stays defined


def fold_ids(labels: list[str], folds: int, seed: int) -> np.ndarray:
    """A seeded stratified fold per row: each label's rows dealt round-robin from a shuffled order."""
    rng = np.random.default_rng(seed)
    ids = np.zeros(len(labels), dtype=int)
    for label in sorted(set(labels)):
        rows = np.flatnonzero(np.asarray(labels) == label)
        ids[rng.permutation(rows)] = np.arange(len(rows)) % folds
    return ids


def out_of_fold_logits(make_family, texts: list[str], labels: list[str], columns: list[str], folds: int = 5,
                       seed: int = 0) -> np.ndarray:
    """Logits for every row from a model that never saw it: `folds` models, each fitted by
    `make_family()` on the other folds, columns in `columns` order. How calibration works when the
    calibration split is too small to fit a temperature and a threshold on (a few rows per route)."""
    ids = fold_ids(labels, folds, seed)
    logits = np.full((len(texts), len(columns)), MISSING_LOGIT)
    index = {label: j for j, label in enumerate(columns)}
    for fold in range(folds):
        held = np.flatnonzero(ids == fold)
        kept = np.flatnonzero(ids != fold)
        if not len(held) or len(set(labels[i] for i in kept)) < 2:
            continue
        family = make_family().fit([texts[i] for i in kept], [labels[i] for i in kept])
        scores = family.logits([texts[i] for i in held])
        cols = [index[label] for label in family.labels_]
        logits[np.ix_(held, cols)] = scores
    return logits
