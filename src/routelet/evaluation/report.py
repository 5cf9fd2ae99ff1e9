"""Evaluate calibrated families on a frozen evaluation set: the numbers `report` publishes."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np

from routelet.evaluation.calibration import decisions, ece, gate_only_probs, oos_auroc
from routelet.evaluation.metrics import classification
from routelet.serving.router_format import Policy


def evaluate(probs: np.ndarray, y: np.ndarray, names: list[str], reject: int | None, calibration: dict) -> dict:
    """Headline metrics (with the chosen policy), the abstention comparison and calibration."""
    policy = Policy(threshold=calibration["threshold"], margin=calibration["margin"])
    in_scope = y != reject if reject is not None else np.ones(len(y), bool)
    detail = classification(y, policy.decide(probs, reject), names)
    headline = {
        "accuracy": detail["accuracy"],
        "macro_f1": detail["macro_f1"],
        "ece": round(ece(probs, y), 4),
        "ece_in_scope": round(ece(probs[in_scope], y[in_scope]), 4),
    }
    if reject is not None:
        both = decisions(probs, y, reject, policy)
        headline |= {
            "in_scope_accuracy": round(both["in_scope_accuracy"], 4),
            "oos_recall": round(both["oos_recall"], 4),
            "oos_auroc": round(oos_auroc(probs, y, reject), 4),
        }
        n_in, n_out = int(in_scope.sum()), int((~in_scope).sum())
        detail["in_scope_accuracy_n"], detail["oos_recall_n"] = n_in, n_out
        class_only = decisions(probs, y, reject, Policy())
        gate_only = decisions(gate_only_probs(probs, reject), y, reject,
                              Policy(threshold=calibration["gate_only_threshold"], margin=calibration["margin"],
                                     reject_class=False))
        detail["abstention"] = {
            "reject_class_only": _rounded(class_only),
            "confidence_gate_only": _rounded(gate_only),
            "both": _rounded(both),
        }
    return {"headline": headline, "detail": detail}


def _rounded(values: dict) -> dict:
    return {key: round(value, 4) for key, value in values.items()}


def single_query_latency(predict, texts: list[str], warmup: int = 5) -> dict[str, float]:
    """p50/p95/p99 milliseconds of `predict([text])`, one text at a time, as a router serves."""
    return latency_percentiles(_timed(predict, texts, warmup)[0])


def router_latency(router, texts: list[str], warmup: int = 5) -> dict:
    """single_query_latency of `router.route`, with the share of texts and the p50 of each tier that answered."""
    timings, results = _timed(router.route, texts, warmup)
    tiers = [result[0]["tier"] for result in results]
    by_tier = {name: {"share": round(tiers.count(name) / max(len(tiers), 1), 4),
                      **latency_percentiles([t for t, tier in zip(timings, tiers) if tier == name])}
               for name in router.tier_names}
    return latency_percentiles(timings) | ({"by_tier": by_tier} if len(router.tier_names) > 1 else {})


def _timed(predict, texts: list[str], warmup: int) -> tuple[list[float], list]:
    for text in texts[:warmup]:
        predict([text])
    timings, results = [], []
    for text in texts:
        start = time.perf_counter()
        results.append(predict([text]))
        timings.append((time.perf_counter() - start) * 1000)
    return timings, results


def latency_percentiles(timings: list[float]) -> dict[str, float | None]:
    if not timings:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    ordered = sorted(timings)

    def at(share: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 3)

    return {"p50_ms": round(statistics.median(ordered), 3), "p95_ms": at(0.95), "p99_ms": at(0.99)}


def folder_megabytes(*paths: str | Path) -> float:
    total = 0
    for path in paths:
        path = Path(path)
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        total += sum(p.stat().st_size for p in files)
    return round(total / 1e6, 2)


def llm_baselines(path: str | Path, holdout_sha256: str) -> dict[str, dict]:
    """LLM baseline scores cached in `path` for this exact holdout, by model name.

    The file reads {"holdout": {"sha256": <sha-256 of data/prepared/test.jsonl>, "models":
    {name: {metric: value}}, "answers": {name: {row: route}}}}. A missing file, or one measured on
    another holdout, gives {}: a baseline scored on different rows must not sit in the same table.
    """
    return _baselines_entry(path, holdout_sha256).get("models", {})


def llm_answers(path: str | Path, holdout_sha256: str) -> dict[str, dict[str, str | None]]:
    """The per-row answers of each LLM baseline in `path` for this exact holdout (row index -> route)."""
    answers = _baselines_entry(path, holdout_sha256).get("answers") or {}
    well_formed = isinstance(answers, dict) and all(
        isinstance(rows, dict) and all(row.isdigit() and (route is None or isinstance(route, str))
                                       for row, route in rows.items()) for rows in answers.values())
    if not well_formed:
        raise ValueError(f"{path}: holdout.answers must map each model name to {{row index: route or null}}; "
                         "run `routelet llm-baseline` again to rewrite it")
    return answers


def _baselines_entry(path: str | Path, holdout_sha256: str) -> dict:
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        entry = json.loads(path.read_text())["holdout"]
        digest, models = entry["sha256"], entry["models"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f'{path}: not a baselines file ({type(exc).__name__}: {exc}); expected '
                         '{"holdout": {"sha256": ..., "models": {name: {metric: value}}}}') from None
    if not isinstance(models, dict) or not all(isinstance(m, dict) for m in models.values()):
        raise ValueError(f"{path}: holdout.models must map each model name to its metrics")
    return entry if digest == holdout_sha256 else {}
