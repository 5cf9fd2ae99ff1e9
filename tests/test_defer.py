"""Serve-time deferral to the LLM teacher: the real `anthropic` SDK against the local stand-in
(tests/fake_anthropic.py), through the app over HTTP (TestClient). A stand-in that answers, one
slower than the timeout, one that rate-limits, the per-minute budget and the concurrency cap spent,
and serve refusing to start without ANTHROPIC_API_KEY."""

from __future__ import annotations

import json
import threading
import time

import pytest
from fake_anthropic import FakeAnthropic, FakeOpenAI
from fastapi.testclient import TestClient
from routers import tfidf_folder  # noqa: F401  (fixture)

from routelet.cli import main
from routelet.serving.defer import CallWindow, Deferrer, DeferSettings
from routelet.serving.runtime import Router
from routelet.serving.server import RouteResult, ServeError, create_app, serve

ABSTAINS = "tell me a joke"  # the tfidf test router sends it to the reject route, abstaining


@pytest.fixture(scope="module")
def router(tfidf_folder) -> Router:
    return Router.load(tfidf_folder)


def app_client(router, server, **settings) -> tuple[TestClient, Deferrer]:
    deferrer = Deferrer.teacher(DeferSettings(**settings), api_key="test-key", base_url=server.url)
    return TestClient(create_app(router, deferrer=deferrer)), deferrer


def route(client, *texts) -> list[dict]:
    response = client.post("/v1/route", json={"texts": list(texts)})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    for result in results:
        RouteResult.model_validate(result)  # the documented response model accepts the new fields
    return results


def test_the_test_router_abstains_on_the_probe(router):
    result = router.route_one(ABSTAINS)
    assert result["abstain"] and result["route"] == "oos" and result["abstain_reason"] != "no readable content"


def test_an_answering_llm_decides_the_abstentions_only(router):
    with FakeAnthropic(answer=lambda text, enum: "travel") as server:
        client, deferrer = app_client(router, server, timeout_s=5.0)
        confident, deferred = route(client, "what is my account balance", ABSTAINS)
        deferrer.close()
    assert confident["route"] == "banking" and confident["deferred"] is False and "deferred_reason" not in confident
    travel = next(r for r in router.info.routes if r.name == "travel")
    assert deferred["route"] == "travel" and deferred["target"] == travel.target and deferred["deferred"] is True
    assert deferred["abstain"] is True  # the router's own judgement stays visible
    assert server.count("/v1/messages") == 1  # the confident text never reached the LLM
    assert set(server.answered) == {ABSTAINS}


def test_an_answer_outside_the_routes_keeps_the_reject_route(router):
    with FakeAnthropic(behaviour=lambda text: "off_taxonomy") as server:
        client, deferrer = app_client(router, server, timeout_s=5.0)
        [result] = route(client, ABSTAINS)
        deferrer.close()
    assert result["route"] == "oos" and result["deferred"] is False and result["deferred_reason"]


def test_a_slow_llm_never_holds_the_request_past_the_timeout(router):
    delay = 3.0
    with FakeAnthropic(behaviour=lambda text: f"delay:{delay}") as server:
        client, deferrer = app_client(router, server, timeout_s=0.5)
        with client:
            health: list[float] = []
            # the event loop keeps answering while the deferral waits in its thread
            probe = threading.Thread(target=lambda: (time.sleep(0.1), client.get("/healthz"),
                                                     health.append(time.monotonic())))
            probe.start()
            [result] = route(client, ABSTAINS)
            returned = time.monotonic()
            probe.join()
        [sent] = [r["time"] for r in server.requests if r["path"] == "/v1/messages"]
        deferrer.close()
    assert returned < sent + delay  # answered before the stand-in would have
    assert health[0] < returned  # /healthz was not queued behind the deferral
    assert result["route"] == "oos" and result["deferred"] is False
    assert "timeout" in result["deferred_reason"]
    assert server.answered == {}  # nothing was answered (or paid for) in time


def test_a_rate_limited_llm_drops_no_request(router):
    with FakeAnthropic(behaviour=lambda text: "rate_limit:30") as server:
        client, deferrer = app_client(router, server, timeout_s=2.0, concurrency=8)
        with client:
            out: list[list[dict]] = []
            threads = [threading.Thread(target=lambda i=i: out.append(route(client, f"{ABSTAINS} {i}", "balance")))
                       for i in range(6)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        deferrer.close()
    assert len(out) == 6
    for abstained, confident in out:
        assert abstained["route"] == "oos" and abstained["deferred"] is False
        assert "429" in abstained["deferred_reason"] and "rate" in abstained["deferred_reason"]
        assert confident["route"] == "banking" and confident["deferred"] is False
    assert server.count("/v1/messages") == 6  # one attempt each: the retry-after is past the timeout


def test_the_per_minute_budget_answers_at_once(router):
    with FakeAnthropic(answer=lambda text, enum: "travel") as server:
        client, deferrer = app_client(router, server, timeout_s=5.0, per_minute=2)
        results = [route(client, f"{ABSTAINS} {i}")[0] for i in range(3)]
        deferrer.close()
    assert [r["deferred"] for r in results] == [True, True, False]
    assert results[2]["route"] == "oos" and results[2]["deferred_reason"].startswith("budget")
    assert server.count("/v1/messages") == 2  # the third never reached the LLM


def test_the_concurrency_cap_answers_at_once(router):
    with FakeAnthropic(answer=lambda text, enum: "travel", behaviour=lambda text: "delay:1") as server:
        client, deferrer = app_client(router, server, timeout_s=5.0, concurrency=1)
        results = route(client, *(f"{ABSTAINS} {i}" for i in range(3)))
        deferrer.close()
    assert [r["deferred"] for r in results] == [True, False, False]
    assert all(r["deferred_reason"].startswith("concurrency") for r in results[1:])
    assert server.count("/v1/messages") == 1


def test_unreadable_text_is_not_deferred(router):
    with FakeAnthropic() as server:
        client, deferrer = app_client(router, server)
        results = route(client, "\u200b\u200b", "!!!!", "\udcff\udcfe".encode("utf-8", "surrogatepass").decode(
            "utf-8", "replace"))
        deferrer.close()
    unreadable = [r for r in results if r["abstain_reason"] == "no readable content"]
    assert unreadable and all(r["deferred"] is False and "deferred_reason" not in r for r in unreadable)
    assert server.count("/v1/messages") == len(results) - len(unreadable)


def test_an_openai_compatible_endpoint_decides_the_abstentions(router, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeOpenAI(content=lambda text: json.dumps({"route": "travel", "reason": "trip words"})) as server:
        settings = DeferSettings(timeout_s=5.0, provider="openai", base_url=f"{server.url}/v1", model="arch-router")
        deferrer = Deferrer.teacher(settings)  # no key needed: a local endpoint
        client = TestClient(create_app(router, deferrer=deferrer))
        confident, deferred = route(client, "what is my account balance", ABSTAINS)
        deferrer.close()
        body = json.loads(server.requests[0]["raw"])
    assert body["model"] == "arch-router" and len(server.requests) == 1
    assert confident["deferred"] is False and deferred["route"] == "travel" and deferred["deferred"] is True


def test_an_openai_answer_off_the_routes_falls_back(router):
    with FakeOpenAI(content=lambda text: json.dumps({"route": "weather"})) as server:
        deferrer = Deferrer.teacher(DeferSettings(provider="openai", base_url=f"{server.url}/v1"), api_key="k")
        [result] = route(TestClient(create_app(router, deferrer=deferrer)), ABSTAINS)
        deferrer.close()
    assert result["route"] == "oos" and result["deferred"] is False and result["deferred_reason"]


def test_defer_openai_needs_a_base_url(tfidf_folder, capsys):
    assert main(["serve", "--router", str(tfidf_folder), "--defer", "openai"]) == 2
    assert "--defer-base-url" in capsys.readouterr().err
    with pytest.raises(ValueError, match="provider"):
        DeferSettings(provider="gemini")


def test_the_call_window_slides():
    now = [0.0]
    window = CallWindow(2, period_s=60, clock=lambda: now[0])
    assert window.take() and window.take() and not window.take()
    now[0] = 60.0
    assert window.take()


def test_serve_refuses_deferral_without_a_key(tfidf_folder, monkeypatch, capsys):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ServeError, match="ANTHROPIC_API_KEY"):
        serve(tfidf_folder, defer=DeferSettings())
    assert main(["serve", "--router", str(tfidf_folder), "--defer", "teacher"]) == 2
    assert "ANTHROPIC_API_KEY" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--defer-timeout", "0"), ("--defer-timeout", "nan"),
                                         ("--defer-concurrency", "0"), ("--defer-per-minute", "-3"),
                                         ("--defer", "gpt")])
def test_bad_defer_flags_are_refused(flag, value, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["serve", flag, value])
    assert exit.value.code == 2 and flag in capsys.readouterr().err
