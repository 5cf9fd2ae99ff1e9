"""Stage calibrate: per family, fit a temperature on the calibration split, measure NLL, ECE and
Brier before and after, and choose the abstain threshold from `calibrate.policy`.

    python -m stages.calibrate

Reads params `families`, `calibrate.*`; data/prepared; data/models/<family>. Writes
report/calibration.json (temperatures, thresholds, before/after), DVC plot data under
report/plots/ and figures under report/figures/.
"""

from __future__ import annotations

import json
from pathlib import Path

from routelet.evaluation.calibration import (
    choose_threshold,
    fit_temperature_routes,
    gate_only_probs,
    quality,
    reliability,
    risk_coverage,
)
from routelet.data.dataset import load_prepared
from routelet.families import load_trained
from routelet.params import load_params
from routelet.evaluation.plots import reliability_figure, risk_coverage_figure

PLOTS, FIGURES = Path("report/plots"), Path("report/figures")


def calibrate_family(name: str, prepared, config: dict) -> tuple[dict, list, list]:
    trained = load_trained(name)
    logits = trained.model.logits(prepared.texts("calib"))
    y, reject = prepared.route_ids("calib"), prepared.reject_id
    in_scope = y != reject if reject is not None else y >= 0
    before = trained.to_routes(logits, prepared.taxonomy)
    temperature = fit_temperature_routes(lambda t: trained.to_routes(logits, prepared.taxonomy, t), y)
    after = trained.to_routes(logits, prepared.taxonomy, temperature)
    policy = config["policy"]
    chosen = choose_threshold(after, y, reject, policy["target"], policy["value"], policy["margin"])
    gate_only = choose_threshold(gate_only_probs(after, reject), y, reject, policy["target"], policy["value"],
                                 policy["margin"], reject_class=False)
    result = {
        "temperature": round(temperature, 4),
        "threshold": round(chosen.threshold, 6),
        "margin": chosen.margin,
        "gate_only_threshold": round(gate_only.threshold, 6),
        "chosen_on": f"calibration split ({len(y)} rows, {int((~in_scope).sum())} out of scope), "
                     f"target {policy['target']} >= {policy['value']}",
        "before": quality(before, y, in_scope),
        "after": quality(after, y, in_scope),
    }
    return result, reliability(after, y, config["bins"]), risk_coverage(after, y)


def main() -> None:
    params = load_params()
    config = params["calibrate"]
    prepared = load_prepared("data/prepared")
    results, reliabilities, risks = {}, {}, {}
    for name in params["families"]:
        results[name], reliabilities[name], risks[name] = calibrate_family(name, prepared, config)
        print(f"calibrate: {name}: T={results[name]['temperature']}, ECE {results[name]['before']['ece']:.4f} -> "
              f"{results[name]['after']['ece']:.4f}, threshold {results[name]['threshold']:.3f}")
    Path("report").mkdir(exist_ok=True)
    Path("report/calibration.json").write_text(json.dumps(results, indent=2) + "\n")
    for kind, curves in (("reliability", reliabilities), ("risk_coverage", risks)):
        (PLOTS / kind).mkdir(parents=True, exist_ok=True)
        for name, rows in curves.items():
            (PLOTS / kind / f"{name}.json").write_text(json.dumps(rows, indent=1) + "\n")
    reliability_figure(reliabilities, FIGURES / "reliability.png")
    risk_coverage_figure(risks, FIGURES / "risk_coverage.png")


if __name__ == "__main__":
    main()
