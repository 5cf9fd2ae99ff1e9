"""Tiers in one router folder: a cheap family answers what it is sure of, the last family the rest.

    info, selection = assemble_tiers(out, ["tfidf", "setfit"], calib_texts, calib_route_ids)

Each tier but the last gets `accept`, chosen on the calibration split (never the holdout): the
lowest route confidence at which the rows the tier would answer are decided at least as accurately
as the tiers after it decide the same rows, judged apart on in-scope and out-of-scope rows: out-of-scope
requests are a few percent of a calibration split (3% of CLINC150's) but far more of real traffic, so
a fast tier may not turn away fewer of them than the tiers after it would on the rows it takes, beyond
`oos_tolerance` of out-of-scope recall (params `export_onnx.tier_oos_tolerance`, default 0: with 100
out-of-scope rows a split resolves recall only to 0.01, and one more row lost measured 0.007 of
holdout recall on CLINC150). Both sides are measured through the runtime
(`Router.route`), so the rule is the runtime's own: which rows a fast tier may answer at all (its
top route is not the reject route, it read something it knows), the abstain policy of the router
applied to whichever tier answered, an abstained row getting the reject route. A tier that is never
as accurate as the ones after it is dropped from the folder, and the selection says so.

`assemble_tiers` takes tier routers already exported into `out/<name>/` (each a valid one-tier
router folder of its own, servable alone) and writes `out/router.json` listing them in order, their
files as paths relative to `out`.
"""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from routelet.serving.router_format import RouterInfo
from routelet.serving.runtime import Router


def pick(arrays: list[np.ndarray], by: np.ndarray) -> np.ndarray:
    """Row i of arrays[by[i]]: the answering tier's probabilities per row."""
    return np.stack(arrays)[by, np.arange(len(by))] if len(by) else arrays[0][:0]


def choose_accept(confidence: np.ndarray, eligible: np.ndarray, decided: np.ndarray, later: np.ndarray,
                  y: np.ndarray, reject: int | None = None, oos_tolerance: float = 0.0) -> dict | None:
    """The lowest accept for a fast tier: `confidence` is its top route probability per row,
    `eligible` the rows it may answer at all, `decided` / `later` the route index it / the later
    tiers give each row (-1 for none), `reject` the reject route's index (None: no out-of-scope rows).
    On the accepted rows the fast tier must decide at least as many in-scope rows right as the later
    tiers, and as many out-of-scope ones but for `oos_tolerance` of all out-of-scope rows (a recall
    loss). None when no threshold does both."""
    if not 0 <= oos_tolerance < 1:
        raise ValueError(f"export_onnx.tier_oos_tolerance is {oos_tolerance!r}: use a recall loss in [0, 1), e.g. 0 or 0.01")
    allowed = int(np.floor(oos_tolerance * (np.sum(y == reject) if reject is not None else 0) + 1e-9))
    rows = np.flatnonzero(eligible)
    order = np.argsort(-confidence[rows], kind="stable")
    rows = rows[order]
    sure = confidence[rows]
    oos = y[rows] == reject if reject is not None else np.zeros(len(rows), bool)
    fast_ok, later_ok = decided[rows] == y[rows], later[rows] == y[rows]
    fast_in, later_in = np.cumsum(fast_ok & ~oos), np.cumsum(later_ok & ~oos)
    fast_out, later_out = np.cumsum(fast_ok & oos), np.cumsum(later_ok & oos)
    # A threshold accepts every row at or above it: only the last row of a run of equal confidences ends one.
    ends = np.flatnonzero(np.append(sure[1:] != sure[:-1], True)) if len(rows) else rows
    good = ends[(fast_in[ends] >= later_in[ends]) & (later_out[ends] - fast_out[ends] <= allowed)]
    if not len(good):
        return None
    end, answered = good[-1], good[-1] + 1
    return {"accept": min(float(sure[end]), 1.0), "answered_share": round(answered / len(y), 6),
            "answered_rows": int(answered), "accuracy": round((fast_in[end] + fast_out[end]) / answered, 6),
            "later_tiers_accuracy": round((later_in[end] + later_out[end]) / answered, 6),
            "out_of_scope_rows_answered": int(oos[:answered].sum()),
            "out_of_scope_rows_lost": int(later_out[end] - fast_out[end]), "rows": len(y)}


def runtime_answers(folder: Path, texts: list[str], threads: int = 1) -> dict[str, np.ndarray]:
    """The router folder's answers through the runtime: route index (-1: none), top route
    confidence and the index of the tier that answered, per text."""
    router = Router.load(folder, threads=threads)
    names, results = router.info.route_names, router.route(texts, top_k=1)
    return {"route": np.array([-1 if r["route"] is None else names.index(r["route"]) for r in results], dtype=int),
            "confidence": np.array([r["confidence"] for r in results], dtype=np.float64),
            "tier": np.array([router.tier_names.index(r["tier"]) for r in results], dtype=int)}


def _same_outputs(names: list[str], subs: list[RouterInfo]) -> None:
    last, where = subs[-1], names[-1]
    for name, sub in zip(names, subs):
        if sub.labels != last.labels:
            raise ValueError(f"export_onnx.tiers: tier {name!r} predicts labels {sub.labels[:5]}... but {where!r} "
                             f"predicts {last.labels[:5]}...; tiers must share one label set: train them at the same "
                             "`level` (fine or route) on the same data")
        if [r.model_dump() for r in sub.routes] != [r.model_dump() for r in last.routes] or \
                sub.reject_route != last.reject_route:
            raise ValueError(f"export_onnx.tiers: tiers {name!r} and {where!r} were exported with different routes")


def _input_block(names: list[str], subs: list[RouterInfo]) -> dict:
    """The router's input block: the tokenizer of the last tier that has one, under its subfolder."""
    lengths = {sub.input.max_length for sub in subs if sub.tiers[0].kind == "onnx"}
    if len(lengths) > 1:
        raise ValueError(f"export_onnx.tiers: the encoder tiers truncate at different lengths {sorted(lengths)}; "
                         "one router folder has one input.max_length: train them with the same max_length")
    tokenized = [(name, sub) for name, sub in zip(names, subs) if sub.input.tokenizer]
    tokenizer = f"{tokenized[-1][0]}/{tokenized[-1][1].input.tokenizer}" if tokenized else None
    return {"modality": "text", "tokenizer": tokenizer, "max_length": lengths.pop() if lengths else None}


def write_tiers(out: Path, kept: list[tuple[str, RouterInfo, float | None]]) -> RouterInfo:
    """out/router.json over the one-tier routers out/<name>/: (name, its router.json, accept) in
    answering order, the last with accept None; everything else as the last tier's router.json says."""
    names, subs = [name for name, _, _ in kept], [sub for _, sub, _ in kept]
    tiers = [sub.tiers[0].model_copy(update={"files": {key: f"{name}/{path}" for key, path in sub.tiers[0].files.items()},
                                             "accept": accept}).model_dump() for name, sub, accept in kept]
    info = RouterInfo.model_validate(subs[-1].model_dump() | {
        "model_version": "+".join(sub.model_version for sub in subs),
        "input": _input_block(names, subs),
        "tiers": tiers,
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    info.write(out)
    return info


def assemble_tiers(out: Path, names: list[str], calib_texts: list[str], calib_y: np.ndarray,
                   threads: int = 1, oos_tolerance: float = 0.0) -> tuple[RouterInfo, dict]:
    """Write out/router.json over the one-tier routers out/<name>/ (in answering order), with each
    fast tier's accept chosen on the calibration rows, from the back: each tier against the tiers kept
    after it, thresholds included. Tiers that never qualify are dropped, their folders removed.
    Returns (router.json, the selection: per tier its accept and calibration-split figures)."""
    out, y = Path(out), np.asarray(calib_y)
    subs = [RouterInfo.read(out / name) for name in names]
    _same_outputs(names, subs)
    kept: list[tuple[str, RouterInfo, float | None]] = [(names[-1], subs[-1], None)]
    chosen: dict[str, dict] = {}
    dropped: dict[str, str] = {}
    for name, sub in reversed(list(zip(names[:-1], subs[:-1]))):
        write_tiers(out, kept)
        later = runtime_answers(out, calib_texts, threads)
        write_tiers(out, [(name, sub, 0.0), kept[-1]])  # accept 0: the rows the runtime lets this tier answer
        trial = runtime_answers(out, calib_texts, threads)
        pick_ = choose_accept(trial["confidence"], trial["tier"] == 0, trial["route"], later["route"], y,
                              subs[-1].reject_index, oos_tolerance)
        if pick_ is None:
            dropped[name] = "no confidence threshold made it as accurate as the tiers after it on the calibration split"
            shutil.rmtree(out / name)  # a tier that never answers would only cost time
            continue
        chosen[name] = pick_
        kept.insert(0, (name, sub, pick_["accept"]))
    info = write_tiers(out, kept)
    selection = {"chosen_on": f"calibration split ({len(calib_texts)} rows)", "dropped": dropped,
                 "tiers": [{"family": name, **chosen.get(name, {"accept": None})} for name, _, _ in kept]}
    return info, selection
