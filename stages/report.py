"""Stage report: every family side by side on every frozen evaluation set.

    python -m stages.report

Reads params `families`, `export_onnx.ship`, `report.*`; data/prepared, data/models, the shipped
router (data/router, measured through the torch-free runtime), report/calibration.json and, when present, report/baselines.json (cached LLM baseline).
Writes report/metrics.json (DVC metrics: one column per family and metric), report/details.json
(per-route scores, confusion matrices, abstention comparison), DVC plot data and PNG figures.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from routelet.data.rows import sha256_file
from routelet.data.dataset import load_prepared
from routelet.families.encoders import EncoderSpec
from routelet.families import MODELS, load_trained
from routelet.params import load_params
from routelet.evaluation.plots import confusion_figure, scatter_figure
from routelet.evaluation.report import evaluate, folder_megabytes, llm_baselines, single_query_latency
from routelet.serving.runtime import Router

REPORT, FIGURES, ROUTER = Path("report"), Path("report/figures"), Path("data/router")


def model_size(trained) -> float:
    """What the family needs on disk: its folder, plus a frozen encoder it loads from elsewhere."""
    paths = [MODELS / trained.name]
    encoder = getattr(trained.model, "encoder", None)
    if trained.model.family == "embed" and isinstance(encoder, EncoderSpec):
        paths.append(encoder.resolve())
    return folder_megabytes(*paths)


def shipped_router(prepared, calibration: dict, sample: list[str]) -> tuple[dict, dict]:
    """The exported router folder through the torch-free runtime, exactly as it serves."""
    router = Router.load(ROUTER, threads=1)
    family = router.info["family"]
    trained = load_trained(family)
    probs = router.probs(prepared.texts("test")) @ trained.taxonomy_view(prepared.taxonomy).label_to_route_matrix(
        router.labels)
    result = evaluate(probs, prepared.route_ids("test"), prepared.taxonomy.route_names, prepared.reject_id,
                      calibration[family])
    latency = single_query_latency(router.route, sample)
    headline = result["headline"] | latency | {"size_mb": folder_megabytes(ROUTER)}
    return headline, result["detail"] | {"family": family, "kind": router.info["kind"]}


def main() -> None:
    params = load_params()
    torch.set_num_threads(params["report"]["threads"])
    prepared = load_prepared("data/prepared")
    calibration = json.loads((REPORT / "calibration.json").read_text())
    names, reject = prepared.taxonomy.route_names, prepared.reject_id
    y, texts = prepared.route_ids("test"), prepared.texts("test")
    sample = texts[:: max(1, len(texts) // params["report"]["latency_queries"])][: params["report"]["latency_queries"]]

    metrics, details = {}, {}
    for name in params["families"]:
        trained = load_trained(name)
        cal = calibration[name]
        probs = trained.route_probs(texts, prepared.taxonomy, cal["temperature"])
        result = evaluate(probs, y, names, reject, cal)
        predict = trained.model.logits
        if trained.model.family == "embed":  # a served query is never a cache hit
            predict = lambda batch, model=trained.model: model.logits(batch, use_cache=False)  # noqa: E731
        metrics[name] = result["headline"] | single_query_latency(predict, sample) | {"size_mb": model_size(trained)}
        details[name] = result["detail"]
        print(f"report: {name}: {metrics[name]}")

    metrics["router"], details["router"] = shipped_router(prepared, calibration, sample)
    for model, scores in llm_baselines(REPORT / "baselines.json", sha256_file("data/prepared/test.jsonl")).items():
        metrics[f"llm:{model}"] = scores
    (REPORT / "metrics.json").write_text(json.dumps({"holdout": metrics}, indent=2) + "\n")
    (REPORT / "details.json").write_text(json.dumps({"holdout": details, "routes": names}, indent=2) + "\n")

    ship = params["export_onnx"]["ship"]
    matrix = details[ship]["confusion"]
    records = [{"actual": names[i], "predicted": names[j]} for i, row in enumerate(matrix)
               for j, count in enumerate(row) for _ in range(count)]
    (REPORT / "plots").mkdir(parents=True, exist_ok=True)
    (REPORT / "plots" / "confusion.json").write_text(json.dumps(records) + "\n")
    confusion_figure(matrix, names, f"{ship} on the holdout (with abstention)", FIGURES / "confusion.png")
    key = "in_scope_accuracy" if reject is not None else "accuracy"
    scatter_figure({n: (m["p50_ms"], m[key]) for n, m in metrics.items() if "p50_ms" in m},
                   "single-query p50 latency, ms (log)", key.replace("_", " "), "Accuracy vs latency",
                   FIGURES / "accuracy_vs_latency.png", log_x=True)


if __name__ == "__main__":
    main()
