"""Router + LLM deferral estimated offline (routelet.evaluation.deferral, report's `router+llm:<model>`):
the LLM answers exactly the rows the router abstains on, and is paid only for those."""

from __future__ import annotations

import json

import pytest
from routers import make_tfidf_router

from routelet.data.rows import sha256_file
from routelet.evaluation.deferral import deferral_estimate
from routelet.evaluation.report import llm_answers
from routelet.evaluation.served import measure_deferral
from routelet.serving.runtime import Router


def result(route, abstain=False):
    return {"route": route, "abstain": abstain}


def test_abstained_rows_take_the_llm_answer():
    truth = ["banking", "travel", "oos", "oos", "banking"]
    results = [result("banking"), result("oos", True), result("oos", True), result("travel"), result("oos", True)]
    # The LLM is right on rows 1 and 2, gives no route on row 4 (the reject route answers, as a failed
    # deferral does), and is wrong on row 3, which the router answered itself.
    answers = {"0": "travel", "1": "travel", "2": "oos", "3": "banking", "4": None}
    estimate = deferral_estimate(results, truth, "oos", answers, llm_cost_per_1k=2.0)
    assert estimate["n"] == 5 and estimate["deferred_share"] == 0.6
    assert estimate["cost_per_1k_usd"] == 1.2  # 60% of the requests reach the LLM
    # combined: banking, travel, oos, travel, oos -> rows 0, 1, 2 right
    assert estimate["accuracy"] == 0.6 and estimate["in_scope_accuracy"] == 0.6667 and estimate["oos_recall"] == 0.5
    assert estimate["router_alone"] == {"accuracy": 0.4, "in_scope_accuracy": 0.3333, "oos_recall": 0.5}
    assert estimate["llm_alone"] == {"accuracy": 0.4, "in_scope_accuracy": 0.3333, "oos_recall": 0.5,
                                     "cost_per_1k_usd": 2.0}


def test_only_rows_the_llm_answered_are_scored():
    truth = ["banking", "travel", "oos"]
    results = [result("banking"), result("oos", True), result("oos", True)]
    estimate = deferral_estimate(results, truth, "oos", {"1": "travel", "7": "oos"}, llm_cost_per_1k=None)
    assert estimate["n"] == 1 and estimate["accuracy"] == 1.0 and estimate["cost_per_1k_usd"] is None
    assert deferral_estimate(results, truth, "oos", {}, 1.0) is None


def test_without_a_reject_route_there_is_only_accuracy():
    estimate = deferral_estimate([result("a"), result(None, True)], ["a", "b"], None, {"0": "b", "1": "b"}, 1.0)
    assert estimate["accuracy"] == 1.0 and "oos_recall" not in estimate


def baselines_file(tmp_path, answers):
    holdout = tmp_path / "test.jsonl"
    holdout.write_text('{"text": "hi", "label": "banking"}\n')
    path = tmp_path / "baselines.json"
    path.write_text(json.dumps({"holdout": {"sha256": sha256_file(holdout), "models": {"haiku": {"accuracy": 1.0}},
                                            "answers": answers}}))
    return path, sha256_file(holdout)


def test_answers_are_read_for_this_holdout_only(tmp_path):
    path, digest = baselines_file(tmp_path, {"haiku": {"0": "banking", "1": None}})
    assert llm_answers(path, digest) == {"haiku": {"0": "banking", "1": None}}
    assert llm_answers(path, "another holdout") == {}
    assert llm_answers(tmp_path / "absent.json", digest) == {}


@pytest.mark.parametrize("answers", [["banking"], {"haiku": ["banking"]}, {"haiku": {"-1": "banking"}},
                                     {"haiku": {"row one": "banking"}}, {"haiku": {"0": 3}}])
def test_malformed_answers_are_named(tmp_path, answers):
    path, digest = baselines_file(tmp_path, answers)
    with pytest.raises(ValueError, match=r"baselines\.json: holdout\.answers"):
        llm_answers(path, digest)


def test_report_entry_through_the_runtime(tmp_path):
    router = Router.load(make_tfidf_router(tmp_path / "router"))
    texts = ["check my account balance", "tell me a joke about the weather", "zzz qqq"]
    names = router.info.route_names
    y = [names.index("banking"), names.index("oos"), names.index("oos")]
    served = router.route(texts, top_k=1)
    metrics, details = {}, {}
    answers = {"haiku": {str(i): "oos" for i in range(3)}}
    measure_deferral(router, texts, (y, names, names.index("oos")), {"haiku": {"cost_per_1k_usd": 4.0}}, answers,
                     metrics, details)
    deferred = sum(r["abstain"] for r in served) / 3
    entry = metrics["router+llm:haiku"]
    assert entry["deferred_share"] == round(deferred, 4) and entry["cost_per_1k_usd"] == round(4.0 * deferred, 4)
    assert details["router+llm:haiku"]["llm_alone"]["oos_recall"] == 1.0
    assert not any(isinstance(value, dict) for value in entry.values())  # metrics.json stays flat for dvc
