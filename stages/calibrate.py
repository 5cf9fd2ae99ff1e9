"""Stage calibrate (`python -m stages.calibrate`): per family, a temperature on the calibration
split, NLL/ECE/Brier before and after, the abstain threshold from `calibrate.policy` and the score it
reached (what `export_onnx.ship: auto` ranks by). Under `calibrate.cv_below` calibration rows, out-of-
fold logits over train + calibration instead. Writes report/calibration.json, plot data, figures.
"""

from __future__ import annotations

import json

import numpy as np

from routelet.data.dataset import load_prepared
from routelet.evaluation.calibration import (
    choose_threshold,
    decisions,
    fit_temperature_routes,
    gate_only_probs,
    out_of_fold_logits,
    policy_score,
    quality,
    reliability,
    risk_coverage,
)
from routelet.evaluation.plots import reliability_figure, risk_coverage_figure
from routelet.families import build_family, family_class, load_trained, trained_names, training_labels
from routelet.families.encoders import EncoderSpec
from routelet.params import load_params, run
from routelet.paths import CALIBRATION, ENCODER, FIGURES, PLOTS, PREPARED


def calibration_rows(name: str, trained, prepared, params: dict) -> tuple[np.ndarray, np.ndarray, str]:
    """Logits and true routes to calibrate on: the calibration split, or, when it has fewer rows than
    `calibrate.cv_below`, out-of-fold logits over train + calibration (the family refitted per fold)."""
    config = params["calibrate"]
    if len(prepared.splits["calib"]) >= config["cv_below"]:
        return trained.model.logits(prepared.inputs("calib")), prepared.route_ids("calib"), "calibration split"
    entry = params["train"][name]
    encoder = EncoderSpec.read(ENCODER) if family_class(entry["family"]).uses_encoder else None
    texts = prepared.inputs("train") + prepared.inputs("calib")
    fine = prepared.labels("train") + prepared.labels("calib")
    labels = training_labels(fine, prepared.taxonomy, trained.level)
    logits = out_of_fold_logits(lambda: build_family(name, entry, params["seed"], encoder)[0], texts, labels,
                                trained.model.labels_, config["cv_folds"], params["seed"])
    column = {route: j for j, route in enumerate(prepared.taxonomy.route_names)}
    y = np.array([column[prepared.taxonomy.route_of(label)] for label in fine])
    return logits, y, f"{config['cv_folds']}-fold cross-validation over train + calibration split"


def calibrate_family(name: str, prepared, params: dict) -> tuple[dict, list, list]:
    config = params["calibrate"]
    trained = load_trained(name)
    logits, y, where = calibration_rows(name, trained, prepared, params)
    reject = prepared.reject_id
    in_scope = y != reject if reject is not None else y >= 0
    before = trained.to_routes(logits, prepared.taxonomy)
    temperature = fit_temperature_routes(lambda t: trained.to_routes(logits, prepared.taxonomy, t), y)
    after = trained.to_routes(logits, prepared.taxonomy, temperature)
    target, value, margin = (config["policy"][key] for key in ("target", "value", "margin"))
    chosen = choose_threshold(after, y, reject, target, value, margin)
    gate_only = choose_threshold(gate_only_probs(after, reject), y, reject, target, value, margin, reject_class=False)
    result = {
        "temperature": round(temperature, 4),
        "threshold": round(chosen.threshold, 6),
        "margin": chosen.margin,
        "gate_only_threshold": round(gate_only.threshold, 6),
        "chosen_on": f"{where} ({len(y)} rows, {int((~in_scope).sum())} out of scope), target {target} >= {value}",
        "selection": policy_score(decisions(after, y, reject, chosen), target, value, reject is not None),
        "before": quality(before, y, in_scope),
        "after": quality(after, y, in_scope),
    }
    return result, reliability(after, y, config["bins"]), risk_coverage(after, y)


def main() -> None:
    params = load_params()
    prepared = load_prepared(PREPARED)
    results, reliabilities, risks = {}, {}, {}
    for name in trained_names(params["train"]):  # families skipped for the dataset's modality have no model
        results[name], reliabilities[name], risks[name] = calibrate_family(name, prepared, params)
        cal = results[name]
        print(f"calibrate: {name}: T={cal['temperature']}, ECE {cal['before']['ece']:.4f} -> {cal['after']['ece']:.4f}, "
              f"threshold {cal['threshold']:.3f}, {cal['selection']['metric']} {cal['selection']['score']:.4f}")
    CALIBRATION.parent.mkdir(exist_ok=True)
    CALIBRATION.write_text(json.dumps(results, indent=2) + "\n")
    for kind, curves in (("reliability", reliabilities), ("risk_coverage", risks)):
        (PLOTS / kind).mkdir(parents=True, exist_ok=True)
        for stale in (PLOTS / kind).glob("*.json"):  # a family dropped from params leaves no stale series
            stale.unlink()
        for name, rows in curves.items():
            (PLOTS / kind / f"{name}.json").write_text(json.dumps(rows, indent=1) + "\n")
    reliability_figure(reliabilities, FIGURES / "reliability.png")
    risk_coverage_figure(risks, FIGURES / "risk_coverage.png")


if __name__ == "__main__":
    run(main)
