"""The promotion gate's comparison: score two routers on the same evaluation rows, paired, and say
what fell. Used by `routelet promote` (routelet.serving.promote); torch-free and sklearn-free
(numpy and the runtime), so it runs on a serve-only install.

Per evaluation set, on routes (an abstention answers the reject route):
  accuracy            share of rows routed to their label's route
  in_scope_accuracy   the same on rows whose route is not the reject route (abstaining is wrong)
  oos_recall          share of reject-route rows the router turned away
A set of only in-scope rows shows in_scope_accuracy, one of only out-of-scope rows oos_recall.

A metric *falls* when the whole 95% interval of (candidate - promoted), paired on the same rows, lies
below -tolerance: the drop is larger than the tolerance beyond what the rows' noise explains. A guard
set also falls when the candidate's accuracy on it is under its floor.

The interval is Newcombe's hybrid score interval for paired proportions (Newcombe 1998, method 10;
Fagerland, Lydersen & Laake 2014 recommend it among the closed-form ones): it uses the 2x2 table of
(candidate right?, promoted right?), so only rows where the two disagree move it, it is exact
arithmetic (no resampling, no seed: the same rows give the same verdict on every machine), and it
keeps its coverage at the small counts of guard sets and rare routes, where a paired bootstrap with
few discordant rows collapses to a zero-width interval (no discordant rows: [0, 0] whatever n).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from routelet.data.rows import DataError, read_rows, sha256_file
from routelet.serving.runtime import Router

METRICS = ("accuracy", "in_scope_accuracy", "oos_recall")
Z95 = 1.959964
BATCH = 256  # texts per runtime call: bounds memory on a big holdout


class GateError(ValueError):
    """Input the gate cannot compare; the message names the file (and line) and what to do."""


@dataclass
class EvalSet:
    path: Path
    texts: list[str]
    labels: list[str]
    floor: float | None = None  # guard sets: the candidate's accuracy must reach it
    sha256: str = ""

    @property
    def name(self) -> str:
        return str(self.path)


def read_set(path: str | Path, floor: float | None = None) -> EvalSet:
    """Every row of a {"text", "label"} JSONL file; a bad line is an error naming file:line."""
    path = Path(path)
    try:
        rows, rejected = read_rows(path)
    except DataError as exc:
        raise GateError(str(exc)) from None
    if rejected:
        shown = "; ".join(str(r) for r in rejected[:5])
        raise GateError(f"{path}: {len(rejected)} bad line(s): {shown}; fix them (the gate scores every row)")
    if not rows:
        raise GateError(f"{path}: no rows; an evaluation set needs at least one {{\"text\", \"label\"}} line")
    return EvalSet(path, [r.row.text for r in rows], [r.row.label for r in rows], floor, sha256_file(path))


@dataclass
class Outcomes:
    """Per row: the route it belongs to, the route answered, its confidence and abstain reason."""

    truth: list[str]
    predicted: list[str | None]
    confidence: np.ndarray
    reasons: list[str | None]
    reject: str | None
    correct: np.ndarray = field(init=False)
    in_scope: np.ndarray = field(init=False)

    def __post_init__(self):
        self.correct = np.array([p == t for p, t in zip(self.predicted, self.truth)], dtype=bool)
        self.in_scope = np.array([t != self.reject for t in self.truth], dtype=bool)

    def masks(self) -> dict[str, np.ndarray]:
        """The rows each metric is measured on, for the metrics this set shows (see the docstring)."""
        every = np.ones(len(self.truth), dtype=bool)
        if self.in_scope.all():
            return {"in_scope_accuracy": every}
        if not self.in_scope.any():
            return {"oos_recall": every}
        return {"accuracy": every, "in_scope_accuracy": self.in_scope, "oos_recall": ~self.in_scope}

    def score(self) -> float:
        return float(self.correct.mean())


def label_routes(router: Router) -> dict[str, str]:
    return {label: route.name for route in router.info.routes for label in route.labels}


def outcomes(router: Router, evalset: EvalSet) -> Outcomes:
    owner = label_routes(router)
    unknown = sorted({label for label in evalset.labels if label not in owner})
    if unknown:
        raise GateError(f"{evalset.path}: labels {unknown[:5]} are not labels of router {router.model_version!r} "
                        f"({router.folder}); score it on a set of its own taxonomy")
    results = [r for start in range(0, len(evalset.texts), BATCH)
               for r in router.route(evalset.texts[start:start + BATCH], top_k=1)]
    return Outcomes([owner[label] for label in evalset.labels], [r["route"] for r in results],
                    np.array([r["confidence"] for r in results]), [r["abstain_reason"] for r in results],
                    router.reject_route)


# --------------------------------------------------------------------------------------------
# the paired interval


def wilson(successes: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (unrounded: the paired interval builds on it)."""
    if n == 0:
        return (math.nan, math.nan)
    p, z2 = successes / n, Z95**2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def square_and_add(p1: float, w1: tuple[float, float], p2: float, w2: tuple[float, float],
                   phi: float) -> tuple[float, float]:
    """Newcombe's interval of p1 - p2 from each proportion's Wilson interval and their correlation."""
    (l1, u1), (l2, u2) = w1, w2
    delta = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    epsilon = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return (p1 - p2 - delta, p1 - p2 + epsilon)


def paired_interval(candidate: np.ndarray, promoted: np.ndarray) -> tuple[float, float, float]:
    """(difference, low, high): candidate minus promoted share of right rows, same rows, 95%."""
    x, y = np.asarray(candidate, dtype=bool), np.asarray(promoted, dtype=bool)
    n = len(x)
    if n == 0 or len(y) != n:
        raise ValueError(f"paired_interval needs two equal, non-empty outcome arrays ({len(x)}, {len(y)})")
    a, b = int((x & y).sum()), int((x & ~y).sum())
    c, d = int((~x & y).sum()), int((~x & ~y).sum())
    product = (a + b) * (c + d) * (a + c) * (b + d)
    phi = (a * d - b * c) / math.sqrt(product) if product else 0.0
    p1, p2 = (a + b) / n, (a + c) / n
    low, high = square_and_add(p1, wilson(a + b, n), p2, wilson(a + c, n), phi)
    return (p1 - p2, low, high)


# --------------------------------------------------------------------------------------------
# the comparison


@dataclass
class Line:
    set: str
    metric: str
    n: int
    candidate: float
    promoted: float | None = None
    difference: float | None = None
    interval: tuple[float, float] | None = None
    tolerance: float | None = None
    floor: float | None = None
    fell: list[str] = field(default_factory=list)  # why it fell; empty: it held


def compare_set(evalset: EvalSet, cand: Outcomes, prom: Outcomes | None, tolerance: dict[str, float]) -> list[Line]:
    lines = []
    for metric, mask in cand.masks().items():
        line = Line(evalset.name, metric, int(mask.sum()), float(cand.correct[mask].mean()))
        if prom is not None:
            line.promoted = float(prom.correct[mask].mean())
            line.difference, low, high = paired_interval(cand.correct[mask], prom.correct[mask])
            line.interval, line.tolerance = (low, high), tolerance[metric]
            if high < -tolerance[metric]:
                line.fell.append(f"dropped more than {tolerance[metric]:g} beyond the 95% interval")
        if evalset.floor is not None and (metric == "accuracy" or len(cand.masks()) == 1):
            line.floor = evalset.floor
            if line.candidate < evalset.floor:
                line.fell.append(f"under the floor {evalset.floor:g}")
        lines.append(line)
    return lines


def _number(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def table(lines: list[Line]) -> str:
    """A Markdown table (aligned for a terminal, pasteable in a pull request)."""
    head = ["set", "metric", "n", "promoted", "candidate", "difference", "95% interval (paired)",
            "tolerance", "floor", "verdict"]
    rows = [[line.set, line.metric, str(line.n), _number(line.promoted), _number(line.candidate),
             _number(line.difference, signed=True),
             "-" if line.interval is None else f"[{line.interval[0]:+.4f}, {line.interval[1]:+.4f}]",
             "-" if line.tolerance is None else f"{line.tolerance:g}",
             "-" if line.floor is None else f"{line.floor:g}",
             "FELL: " + "; ".join(line.fell) if line.fell else "ok"] for line in lines]
    widths = [max(len(row[i]) for row in [head] + rows) for i in range(len(head))]
    render = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([render(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [render(r) for r in rows])
