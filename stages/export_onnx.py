"""Stage export_onnx: the family that ships becomes one router folder, data/router (int8 ONNX or
TF-IDF arrays, tokenizer.json, router.json), after the parity gate.

    python -m stages.export_onnx

`export_onnx.ship: auto` ships the family whose abstain policy scored best on the calibration split
(ties to the faster); a family name ships that one. The gate compares the exported router, run
through the runtime, with the trained model on the holdout (routelet.export.ship.export_checked).
Writes report/export.json (DVC metrics): which family won and by how much, the parity figures and
the shipped router's holdout metrics.
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
from routelet.export.ship import choose_family, export_checked
from routelet.families import MODELS, load_trained, trained_class
from routelet.families.base import ExportOptions
from routelet.params import load_params, run
from routelet.paths import CALIBRATION, EXPORT, PREPARED, ROUTER


def main() -> int:
    config = load_params()["export_onnx"]
    prepared = load_prepared(PREPARED)
    calibration = json.loads(CALIBRATION.read_text())
    name, choice = choose_family(calibration, config["ship"], {n: trained_class(n) for n in calibration}, config["tie"])
    trained, texts = load_trained(name), prepared.texts("test")
    options = ExportOptions(config["int8"], config["outlier_channels"], tuple(prepared.texts("calib")))
    hashes = {"taxonomy": prepared.taxonomy.digest(),
              **{f"{split}_sha256": sha256_file(PREPARED / f"{split}.jsonl") for split in ("train", "calib", "test")}}
    print(f"export_onnx: shipping {name} ({choice['rule']})")

    ROUTER.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ROUTER.parent) as scratch:
        staged = Path(scratch) / "router"
        try:
            info, gate, shipped = export_checked(trained, MODELS / name, calibration[name], prepared.taxonomy,
                                                 options, staged, hashes, texts, config)
        except ParityError as error:
            print(f"export_onnx: {error}", file=sys.stderr)
            return 1
        to_routes = info.route_matrix()
        holdout = evaluate(shipped @ to_routes, prepared.route_ids("test"), prepared.taxonomy.route_names,
                           prepared.reject_id, calibration[name])["headline"]
        info.metrics = {"holdout": holdout, "parity": gate, "calibration": calibration[name]["after"]}
        info.write(staged)
        for variant, report in gate.items():
            print(f"export_onnx: {name} {variant}: route agreement {report['agreement']:.4f}, fine-label agreement "
                  f"{report['label_agreement']:.4f}, max |dp| {report['max_abs_dp']:.4f}")
        EXPORT.write_text(json.dumps({"family": name, "choice": choice, **gate, "holdout": holdout}, indent=2) + "\n")
        if ROUTER.exists():
            shutil.rmtree(ROUTER)
        staged.rename(ROUTER)  # only a router that passed replaces the last one
    print(f"export_onnx: {info.model_version} -> {ROUTER}")
    return 0


if __name__ == "__main__":
    run(main)
