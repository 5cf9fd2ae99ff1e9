"""Stage report: every family side by side on the frozen holdout, and the shipped router measured
through the torch-free runtime. A tiered router is measured as shipped ("router": with the share of
the holdout each tier answered) and each of its tiers alone, as served from its own subfolder
("router:<tier>"): the price of the fast tier's answers in quality, next to what it saves in time.

    python -m stages.report

Reads params `train` (the families), `report.*`, `promote.guards` (guard sets scored beside the holdout); data/prepared, data/models, data/router,
report/calibration.json, report/export.json and report/baselines.json (cached LLM baselines: their
scores, and router + deferral to each LLM estimated from its per-row answers).
Writes report/metrics.json (DVC metrics: quality only, so a commit diffed against itself shows
nothing), report/timings.json (latency and size, which move with the host), report/details.json
(per-route scores, confusion matrices, abstention comparison), plot data and PNG figures.
"""

from __future__ import annotations

import json

from routelet.data.dataset import load_prepared
from routelet.data.rows import sha256_file
from routelet.evaluation.plots import confusion_figure, scatter_figure
from routelet.evaluation.report import evaluate, folder_megabytes, llm_answers, llm_baselines, single_query_latency
from routelet.evaluation.served import guard_scores, measure_deferral, measure_image_router, measure_routers
from routelet.families import MODELS, load_trained, trained_names
from routelet.params import load_params, run
from routelet.paths import BASELINES, CALIBRATION, DETAILS, EXPORT, FIGURES, METRICS, PLOTS, PREPARED, ROUTER, TIMINGS
from routelet.serving.router_format import RouterInfo
from routelet.serving.runtime import Router


def main() -> None:
    params = load_params()
    import torch  # the families' reference paths: latency at the same thread count as the runtime's

    torch.set_num_threads(params["report"]["threads"])
    prepared = load_prepared(PREPARED)
    calibration = json.loads(CALIBRATION.read_text())
    shipped = json.loads(EXPORT.read_text())
    names, reject = prepared.taxonomy.route_names, prepared.reject_id
    y, texts = prepared.route_ids("test"), prepared.inputs("test")
    n = params["report"]["latency_queries"]
    sample = texts[:: max(1, len(texts) // n)][:n]

    metrics, timings, details = {}, {}, {}
    for name in trained_names(params["train"]):  # families skipped for the dataset's modality have no model
        trained = load_trained(name)
        result = evaluate(trained.route_probs(texts, prepared.taxonomy, calibration[name]["temperature"]), y, names,
                          reject, calibration[name])
        metrics[name], details[name] = result["headline"], result["detail"]
        # A served query is never a cache hit: time the family's reference (uncached) path.
        timings[name] = single_query_latency(trained.model.reference, sample) | {
            "size_mb": folder_megabytes(*trained.model.size_paths(MODELS / name))}
        print(f"report: {name}: {metrics[name]} {timings[name]}")

    family = RouterInfo.read(ROUTER).family
    holdout_sha256 = sha256_file(PREPARED / "test.jsonl")
    baselines = llm_baselines(BASELINES, holdout_sha256)
    if prepared.modality == "image":
        guards = {}  # the guard sets are texts
        measure_image_router(texts, sample, (y, names, reject), calibration[family], metrics, timings, details)
    else:
        router = Router.load(ROUTER, threads=1)
        measure_routers(router, texts, sample, (y, names, reject), calibration, metrics, timings, details)
        guards = guard_scores(router, params["promote"]["guards"])
        measure_deferral(router, texts, (y, names, reject), baselines, llm_answers(BASELINES, holdout_sha256),
                         metrics, details)
    details["router"]["choice"] = shipped["choice"]
    for model, scores in baselines.items():
        metrics[f"llm:{model}"] = scores

    METRICS.write_text(json.dumps({"holdout": metrics, "guards": guards}, indent=2) + "\n")
    TIMINGS.write_text(json.dumps({"holdout": timings}, indent=2) + "\n")
    DETAILS.write_text(json.dumps({"holdout": details, "routes": names}, indent=2) + "\n")

    matrix = details["router"]["confusion"]
    records = [{"actual": names[i], "predicted": names[j]} for i, row in enumerate(matrix)
               for j, count in enumerate(row) for _ in range(count)]
    PLOTS.mkdir(parents=True, exist_ok=True)
    (PLOTS / "confusion.json").write_text(json.dumps(records) + "\n")
    confusion_figure(matrix, names, f"shipped router ({family}) on the holdout, with abstention",
                     FIGURES / "confusion.png")
    key = "in_scope_accuracy" if reject is not None else "accuracy"
    scatter_figure({n: (timings[n]["p50_ms"], m[key]) for n, m in metrics.items() if n in timings},
                   "single-query p50 latency, ms (log)", key.replace("_", " "), "Accuracy vs latency",
                   FIGURES / "accuracy_vs_latency.png", log_x=True)


if __name__ == "__main__":
    run(main)
