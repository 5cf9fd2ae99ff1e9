"""Stage export_onnx: the families that ship become one router folder, data/router (int8 ONNX or
TF-IDF arrays, tokenizer.json, router.json), after the parity gate.

    python -m stages.export_onnx

`export_onnx.ship: auto` ships the family whose abstain policy scored best on the calibration split
(ties to the faster); a family name ships that one. `export_onnx.tiers: auto` ships it alone; a list
such as [tfidf, setfit] ships those tiers in answering order, each in its own subfolder, the fast
ones with an accept threshold chosen on the calibration split (routelet.export.tiers). The gate
compares the exported router, run through the runtime, with the trained models on the holdout
(routelet.export.ship.export_router). Writes report/export.json (DVC metrics): which family won and
by how much, the tiers and their thresholds, the parity figures and the shipped router's holdout
metrics with the share each tier answered.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from routelet.data.dataset import load_prepared
from routelet.data.rows import sha256_file
from routelet.evaluation.report import evaluate
from routelet.export.parity import ParityError
from routelet.export.ship import choose_family, export_router, resolve_tiers
from routelet.families import MODELS, load_trained, trained_class
from routelet.families.base import ExportOptions
from routelet.params import load_params, run
from routelet.paths import CALIBRATION, EXPORT, PREPARED, ROUTER


def main() -> int:
    config = load_params()["export_onnx"]
    prepared = load_prepared(PREPARED)
    calibration = json.loads(CALIBRATION.read_text())
    name, choice = choose_family(calibration, config["ship"], {n: trained_class(n) for n in calibration}, config["tie"])
    names = resolve_tiers(config.get("tiers", "auto"), name, list(calibration))
    tiers, texts = [load_trained(n) for n in names], prepared.inputs("test")
    options = ExportOptions(config["int8"], config["outlier_channels"], tuple(prepared.inputs("calib")))
    hashes = {"taxonomy": prepared.taxonomy.digest(),
              **{f"{split}_sha256": sha256_file(PREPARED / f"{split}.jsonl") for split in ("train", "calib", "test")}}
    print(f"export_onnx: shipping {' then '.join(names)} "
          f"({choice['rule'] if names == [name] else 'export_onnx.tiers'})")

    ROUTER.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ROUTER.parent) as scratch:
        staged = Path(scratch) / "router"
        try:
            info, gate, shipped = export_router(tiers, MODELS, calibration, prepared.taxonomy, options, staged, hashes,
                                                texts, (prepared.inputs("calib"), prepared.route_ids("calib")), config)
        except ParityError as error:
            print(f"export_onnx: {error}", file=sys.stderr)
            return 1
        last = info.family
        holdout = evaluate(shipped @ info.route_matrix(), prepared.route_ids("test"), prepared.taxonomy.route_names,
                           prepared.reject_id, calibration[last])["headline"]
        holdout["answered_share"] = gate["tiered"]["answered_share"] if "tiered" in gate else {last: 1.0}
        info.metrics = {"holdout": holdout, "parity": gate, "calibration": calibration[last]["after"]}
        info.write(staged)
        report_gate(gate)
        # The last tier's parity at the top level, as for a one-tier router; the other tiers' beside it.
        others = {n: variants for n, variants in gate["tiers"].items() if n != last}
        EXPORT.write_text(json.dumps({"family": last, "tiers": [t.family for t in info.tiers], "choice": choice,
                                      **gate["tiers"][last], **({"tier_parity": others} if others else {}),
                                      **{k: gate[k] for k in ("tiered", "selection") if k in gate},
                                      "holdout": holdout}, indent=2) + "\n")
        if ROUTER.exists():
            shutil.rmtree(ROUTER)
        staged.rename(ROUTER)  # only a router that passed replaces the last one
    print(f"export_onnx: {info.model_version} -> {ROUTER}")
    return 0


def report_gate(gate: dict) -> None:
    for name, variants in gate["tiers"].items():
        for variant, report in variants.items():
            print(f"export_onnx: {name} {variant}: route agreement {report['agreement']:.4f}, fine-label agreement "
                  f"{report['label_agreement']:.4f}, max |dp| {report['max_abs_dp']:.4f}")
    if "tiered" in gate:
        tiered = gate["tiered"]
        print(f"export_onnx: tiered router: route agreement {tiered['agreement']:.4f}, decisions "
              f"{tiered['decision_agreement']:.4f}, answered {tiered['answered_share']}")
        for tier in gate["selection"]["tiers"][:-1]:
            print(f"export_onnx: {tier['family']} answers at route confidence >= {tier['accept']:.8f}: "
                  f"{tier['answered_share']:.1%} of the calibration split, accuracy {tier['accuracy']:.4f} "
                  f"against {tier['later_tiers_accuracy']:.4f} for the tiers after it")
        for name, why in gate["selection"]["dropped"].items():
            print(f"export_onnx: tier {name} dropped: {why}")


if __name__ == "__main__":
    run(main)
