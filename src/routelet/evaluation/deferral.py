"""Router + LLM deferral, estimated offline: the shipped router answers each holdout row, and the rows
it abstains on take the LLM baseline's answer for that row (report/baselines.json `answers`), as
`routelet serve --defer` would at serve time (an LLM answer that was not a route falls back to the
reject route, as a failed deferral does). Set beside the router alone and the LLM alone on the same
rows, with the cost per 1,000 requests: the LLM is paid only for the deferred share.

    estimate = deferral_estimate(router.route(texts), truth_routes, reject_route, answers, llm_cost_per_1k)
"""

from __future__ import annotations

from routelet.evaluation.scores import route_scores


def deferral_estimate(results: list[dict], truth: list[str], reject: str | None, answers: dict[str, str | None],
                      llm_cost_per_1k: float | None) -> dict | None:
    """`results`: the runtime's answer per holdout row (route, abstain); `answers`: the LLM's route per
    row index (as a string, the baselines file's keys), None where it gave no route. Scored on the rows
    the LLM answered (a `--limit` baseline covers a sample). None when it answered no row."""
    rows = sorted(int(row) for row in answers if int(row) < len(results))
    if not rows:
        return None
    llm = [answers[str(row)] for row in rows]
    router = [results[row]["route"] for row in rows]
    deferred = [bool(results[row]["abstain"]) for row in rows]
    combined = [(answer if answer is not None else reject) if defer else route
                for route, answer, defer in zip(router, llm, deferred)]
    truth_ = [truth[row] for row in rows]
    share = sum(deferred) / len(rows)
    cost = None if llm_cost_per_1k is None else round(share * llm_cost_per_1k, 4)
    return {"n": len(rows), "deferred_share": round(share, 4), **route_scores(combined, truth_, reject),
            "cost_per_1k_usd": cost,
            "router_alone": route_scores(router, truth_, reject),
            "llm_alone": route_scores(llm, truth_, reject) | {"cost_per_1k_usd": llm_cost_per_1k}}
