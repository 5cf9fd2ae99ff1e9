"""Stage export_onnx: the shipped family (`export_onnx.ship`) becomes one router folder,
data/router: int8 ONNX (or TF-IDF arrays), tokenizer.json and router.json; then the parity gate.

    python -m stages.export_onnx

The gate compares the exported router with the trained model on the holdout: agreement of the
route each gives (what a caller acts on; fine-label agreement is reported beside it) and max |Δp|,
for int8 and, for encoder families, fp32 too. It fails below `export_onnx.min_agreement`. Writes
report/export.json (DVC metrics).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from routelet.data.rows import sha256_file
from routelet.data.dataset import load_prepared
from routelet.families import MODELS, load_trained
from routelet.params import load_params
from routelet.evaluation.report import evaluate
from routelet.serving.runtime import Router
from routelet.export.onnx import check_parity
from routelet.export.ship import (
    export_model,
    fp32_probs,
    route_parity,
    replace_folder,
    router_info,
    trained_probs,
)

ROUTER = Path("data/router")


def main() -> int:
    params = load_params()
    config = params["export_onnx"]
    name = config["ship"]
    prepared = load_prepared("data/prepared")
    trained = load_trained(name)
    calibration = json.loads(Path("report/calibration.json").read_text())[name]
    texts = prepared.texts("test")
    hashes = {"taxonomy": prepared.taxonomy.digest(),
              **{f"{split}_sha256": sha256_file(f"data/prepared/{split}.jsonl") for split in ("train", "calib", "test")}}

    ROUTER.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ROUTER.parent) as scratch:
        staged = Path(scratch) / "router"
        exported = export_model(trained, MODELS / name, calibration["temperature"], staged, int8=config["int8"],
                                calibration=prepared.texts("calib"), outlier_channels=config["outlier_channels"])
        reference = trained_probs(trained, texts, calibration["temperature"])
        # Through the runtime exactly as served: preprocess, tokenizer, the int8 graph.
        (staged / "router.json").write_text(json.dumps(
            router_info(trained, prepared.taxonomy, calibration, exported, hashes, {}, staged)))
        router = Router.load(staged, threads=1)
        shipped = router.probs(texts)
        to_routes = trained.taxonomy_view(prepared.taxonomy).label_to_route_matrix(router.labels)
        gate = {"int8" if exported["kind"] == "onnx" else "numpy": route_parity(reference, shipped, to_routes)}
        if exported["kind"] == "onnx" and config["check_fp32"]:
            fp32 = fp32_probs(trained, MODELS / name, calibration["temperature"], texts)
            gate["fp32"] = route_parity(reference, fp32, to_routes)
        holdout = evaluate(shipped @ to_routes, prepared.route_ids("test"), prepared.taxonomy.route_names,
                           prepared.reject_id, calibration)["headline"]
        metrics = {"holdout": holdout, "parity": gate, "calibration": calibration["after"]}
        info = router_info(trained, prepared.taxonomy, calibration, exported, hashes, metrics, staged)
        (staged / "router.json").write_text(json.dumps(info, indent=2) + "\n")

        Path("report/export.json").write_text(json.dumps({"family": name, **metrics["parity"], "holdout": holdout},
                                                         indent=2) + "\n")
        for kind, report in gate.items():
            print(f"export_onnx: {name} {kind}: route agreement {report['agreement']:.4f}, fine-label agreement "
                  f"{report['label_agreement']:.4f}, max |dp| {report['max_abs_dp']:.4f}")
            try:
                check_parity(report, config["min_agreement"], what=f"{kind} router")
            except ValueError as error:
                print(f"export_onnx: {error}", file=sys.stderr)
                return 1
        replace_folder(staged, ROUTER)
    print(f"export_onnx: {info['model_version']} -> {ROUTER}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
