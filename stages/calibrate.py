"""Stage calibrate: per family, fit a temperature on the calibration split, measure NLL, ECE and
Brier before and after, choose the abstain threshold from `calibrate.policy`, and score the policy's
outcome (what `export_onnx.ship: auto` ranks families by).

    python -m stages.calibrate

Reads params `train` (the families), `calibrate.*`; data/prepared; data/models/<family>. Writes
report/calibration.json, DVC plot data under report/plots/ and figures under report/figures/.
"""

from __future__ import annotations

import json

from routelet.data.dataset import load_prepared
from routelet.evaluation.calibration import (
    choose_threshold,
    decisions,
    fit_temperature_routes,
    gate_only_probs,
    policy_score,
    quality,
    reliability,
    risk_coverage,
)
from routelet.evaluation.plots import reliability_figure, risk_coverage_figure
from routelet.families import load_trained
from routelet.params import load_params, run
from routelet.paths import CALIBRATION, FIGURES, PLOTS, PREPARED


def calibrate_family(name: str, prepared, config: dict) -> tuple[dict, list, list]:
    trained = load_trained(name)
    logits = trained.model.logits(prepared.texts("calib"))
    y, reject = prepared.route_ids("calib"), prepared.reject_id
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
        "chosen_on": f"calibration split ({len(y)} rows, {int((~in_scope).sum())} out of scope), "
                     f"target {target} >= {value}",
        "selection": policy_score(decisions(after, y, reject, chosen), target, value, reject is not None),
        "before": quality(before, y, in_scope),
        "after": quality(after, y, in_scope),
    }
    return result, reliability(after, y, config["bins"]), risk_coverage(after, y)


def main() -> None:
    params = load_params()
    prepared = load_prepared(PREPARED)
    results, reliabilities, risks = {}, {}, {}
    for name in params["train"]:
        results[name], reliabilities[name], risks[name] = calibrate_family(name, prepared, params["calibrate"])
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
