"""The shipped router measured as it serves: through the torch-free runtime (each tier alone too,
when it has several), an image router from its folder, the guard sets beside their floors, and the
router with its abstentions deferred to an LLM baseline (estimated from the baseline's answers)."""

from __future__ import annotations

from pathlib import Path

from routelet.evaluation.deferral import deferral_estimate
from routelet.evaluation.report import evaluate, folder_megabytes, router_latency, single_query_latency
from routelet.export.ship import image_router
from routelet.paths import ROUTER
from routelet.serving import gate
from routelet.serving.router_format import RouterInfo
from routelet.serving.runtime import Router


def guard_scores(router: Router, guards: dict[str, float]) -> dict:
    """The shipped router's accuracy on each guard set beside its floor (params `promote.guards`); a
    set written for another taxonomy is skipped, saying so."""
    scores = {}
    for path, floor in guards.items():
        try:
            accuracy = gate.outcomes(router, gate.read_set(path, floor)).score()
        except gate.GateError as error:
            print(f"report: guard set skipped: {error}")
            continue
        scores[Path(path).stem] = {"accuracy": round(accuracy, 4), "floor": floor, "meets_floor": accuracy >= floor}
    return scores


def measure_routers(router: Router, texts, sample, truth, calibration, metrics, timings, details) -> None:
    """The shipped text router through the runtime, and each of its tiers alone when it has several.
    `truth`: the holdout's route ids, the route names and the reject route's index."""
    y, names, reject = truth
    for key, folder in routers(router).items():
        served = router if folder == ROUTER else Router.load(folder, threads=1)
        probs, by = served.decide(texts)
        result = evaluate(probs @ served.info.route_matrix(), y, names, reject, calibration[served.info.family])
        metrics[key] = result["headline"] | {"answered_share": {
            tier: round(float((by == index).mean()), 4) if len(by) else 0.0 for index, tier in enumerate(served.tier_names)}}
        details[key] = result["detail"] | {"family": served.info.family, "tiers": served.tier_names}
        timings[key] = router_latency(served, sample) | {"size_mb": folder_megabytes(folder)}
        print(f"report: {key}: {metrics[key]} {timings[key]}")


def measure_deferral(router: Router, texts, truth, baselines: dict[str, dict], answers: dict[str, dict],
                     metrics, details) -> None:
    """`router+llm:<model>` for each LLM baseline with per-row answers: the router answering, the LLM
    the rows it abstains on (routelet.evaluation.deferral), beside the LLM alone on the same rows."""
    if not answers:
        return
    y, names, reject = truth
    results = router.route(texts, top_k=1)
    for model, rows in answers.items():
        estimate = deferral_estimate(results, [names[i] for i in y], None if reject is None else names[reject], rows,
                                     baselines.get(model, {}).get("cost_per_1k_usd"))
        if estimate is None:
            continue
        key = f"router+llm:{model}"
        metrics[key] = {k: v for k, v in estimate.items() if not isinstance(v, dict)}
        details[key] = estimate
        print(f"report: {key}: {estimate}")


def measure_image_router(paths, sample, truth, calibration: dict, metrics, timings, details) -> None:
    """The shipped image router (one tier), torch-free from its folder, on the holdout's image files."""
    (y, names, reject), info, predict = truth, RouterInfo.read(ROUTER), image_router(ROUTER)
    result = evaluate(predict(paths) @ info.route_matrix(), y, names, reject, calibration)
    metrics["router"] = result["headline"] | {"answered_share": {info.family: 1.0}}
    details["router"] = result["detail"] | {"family": info.family, "tiers": [info.family]}
    timings["router"] = single_query_latency(predict, sample) | {"size_mb": folder_megabytes(ROUTER)}
    print(f"report: router: {metrics['router']} {timings['router']}")


def routers(router: Router) -> dict:
    """The shipped router, and each of its tiers alone (from its subfolder) when it has several."""
    if len(router.tier_names) == 1:
        return {"router": ROUTER}
    return {"router": ROUTER, **{f"router:{tier.family}": ROUTER / Path(tier.files["model"]).parent
                                 for tier in router.info.tiers}}
