"""`routelet llm-baseline` end to end against local stand-ins of Claude and of an
OpenAI-compatible endpoint: metrics, the file the report reads, resume, sample, malformed output,
and image holdouts (screenshots sent as images; bad image rows rejected, never sent)."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
from fake_anthropic import FakeAnthropic, FakeOpenAI, image_bytes
from PIL import Image

from routelet.cli import main
from routelet.data.rows import sha256_file
from routelet.data.taxonomy import Taxonomy
from routelet.evaluation.report import llm_baselines
from routelet.llm.baseline import sample_rows
from routelet.llm.prompt import IMAGE_NOTE

TAXONOMY = Taxonomy.model_validate({"reject": "oos", "routes": [
    {"name": "banking", "description": "Bank accounts.", "labels": ["balance", "transfer", "pay_bill"]},
    {"name": "travel", "description": "Trips.", "labels": ["book_flight", "book_hotel"]},
    {"name": "oos", "description": "Anything else."},
]})
FAST_PARAMS = "ingest:\n  teacher:\n    backoff_s: 0.01\n    max_backoff_s: 0.05\n"
KEYWORDS = {"balance": "banking", "transfer": "banking", "flight": "travel", "hotel": "travel"}
# (text, label, what the stand-in answers): 4 of 6 in scope right, 3 of 4 out of scope turned away.
ROWS = [
    ("what is my balance", "balance", "banking"),
    ("transfer 20 dollars", "transfer", "banking"),
    ("pay my bill", "pay_bill", "oos"),
    ("book a flight to rome", "book_flight", "travel"),
    ("find a hotel", "book_hotel", "travel"),
    ("a hotel transfer please", "book_hotel", "banking"),
    ("tell me a joke", "oos", "oos"),
    ("sing a song", "oos", "oos"),
    ("balance a broom on my nose", "oos", "banking"),
    ("what is the weather", "oos", "oos"),
]


def keyword_route(text: str, enum: list[str] | None = None) -> str:
    return next((route for word, route in KEYWORDS.items() if word in text), "oos")


@pytest.fixture
def data(tmp_path):
    holdout = tmp_path / "test.jsonl"
    holdout.write_text("".join(json.dumps({"text": t, "label": label}) + "\n" for t, label, _ in ROWS))
    TAXONOMY.save(tmp_path / "taxonomy.json")
    (tmp_path / "params.yaml").write_text(FAST_PARAMS)
    return tmp_path


def run(data, *flags: str) -> int:
    return main(["llm-baseline", "--holdout", str(data / "test.jsonl"), "--taxonomy", str(data / "taxonomy.json"),
                 "--out", str(data / "baselines.json"), "--cache", str(data / "cache.jsonl"),
                 "--params", str(data / "params.yaml"), "--timeout", "2", *flags])


def stored(data) -> dict:
    return json.loads((data / "baselines.json").read_text())["holdout"]


@pytest.fixture
def claude(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    with FakeAnthropic(answer=keyword_route) as server:
        yield server


def test_claude_baseline_writes_what_the_report_reads(data, claude):
    assert run(data, "--base-url", claude.url, "--model", "claude-test") == 0
    [metrics] = llm_baselines(data / "baselines.json", sha256_file(data / "test.jsonl")).values()
    assert metrics["accuracy"] == 0.7 and metrics["in_scope_accuracy"] == 0.6667 and metrics["oos_recall"] == 0.75
    assert metrics["n"] == 10 and metrics["pending"] == 0 and metrics["malformed"] == 0
    assert metrics["p95_ms"] >= metrics["p50_ms"] > 0 and metrics["cost_per_1k_usd"] > 0
    assert metrics["input_tokens_per_request"] > 0 and metrics["output_tokens_per_request"] == 20
    entry = stored(data)
    assert entry["details"]["claude-test"]["per_class_recall"] == {"banking": 0.6667, "travel": 0.6667, "oos": 0.75}
    assert entry["answers"]["claude-test"] == {str(i): answer for i, (_, _, answer) in enumerate(ROWS)}
    body = json.loads(claude.requests[0]["raw"])
    assert body["tools"][0]["input_schema"]["properties"]["route"]["enum"] == ["banking", "travel", "oos"]


def test_a_budget_cut_run_resumes_and_pays_only_for_the_rest(data, claude, capsys):
    assert run(data, "--base-url", claude.url, "--model", "claude-test", "--max-calls", "4") == 0
    assert "6 rows still pending" in capsys.readouterr().err
    assert stored(data)["models"]["claude-test"]["n"] == 4 and len(stored(data)["answers"]["claude-test"]) == 4
    assert run(data, "--base-url", claude.url, "--model", "claude-test") == 0
    assert len(claude.requests) == 10 and set(claude.answered.values()) == {1}
    assert stored(data)["models"]["claude-test"]["accuracy"] == 0.7
    assert run(data, "--base-url", claude.url, "--model", "claude-test") == 0
    assert len(claude.requests) == 10  # a third run is free


def test_limit_scores_a_seeded_sample(data, claude):
    assert run(data, "--base-url", claude.url, "--model", "claude-test", "--limit", "4", "--seed", "3") == 0
    rows = sample_rows(len(ROWS), 4, 3)
    assert rows == sample_rows(len(ROWS), 4, 3) and rows != sample_rows(len(ROWS), 4, 4)
    assert sorted(map(int, stored(data)["answers"]["claude-test"])) == rows
    assert stored(data)["details"]["claude-test"]["limit"] == 4 and len(claude.requests) == 4


def test_models_accumulate_for_one_holdout_and_reset_for_another(data, claude, capsys):
    assert run(data, "--base-url", claude.url, "--model", "claude-a") == 0
    assert run(data, "--base-url", claude.url, "--model", "claude-b", "--name", "b") == 0
    assert set(stored(data)["models"]) == {"claude-a", "b"}
    with (data / "test.jsonl").open("a") as handle:
        handle.write(json.dumps({"text": "check my balance", "label": "balance"}) + "\n")
    assert run(data, "--base-url", claude.url, "--model", "claude-a") == 0
    assert set(stored(data)["models"]) == {"claude-a"} and stored(data)["sha256"] == sha256_file(data / "test.jsonl")
    assert "measured on another holdout" in capsys.readouterr().err


def test_defaults_come_from_params_ingest_teacher(data, claude):
    (data / "params.yaml").write_text(FAST_PARAMS + "    model: claude-from-params\n    max_tokens: 99\n"
                                      "    prices: {input: 3.0, output: 15.0, cache_write: 3.75, cache_read: 0.3}\n")
    assert run(data, "--base-url", claude.url) == 0
    assert "claude-from-params" in stored(data)["models"]
    assert json.loads(claude.requests[0]["raw"])["max_tokens"] == 99
    (data / "params.yaml").write_text("ingest:\n  teacher:\n    max_tokns: 99\n")
    assert run(data, "--base-url", claude.url) == 2


def test_no_api_key_writes_nothing(data, monkeypatch, capsys):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with FakeAnthropic() as server:
        assert run(data, "--base-url", server.url, "--model", "claude-test") == 2
        assert server.requests == []
    assert "ANTHROPIC_API_KEY" in capsys.readouterr().err and not (data / "baselines.json").exists()


@pytest.mark.parametrize("line", ["{not json", '{"text": "x", "label": "nope"}', '{"text": 5, "label": "oos"}'])
def test_a_bad_holdout_line_is_named(data, claude, capsys, line):
    lines = (data / "test.jsonl").read_text().splitlines()
    (data / "test.jsonl").write_text("\n".join(lines[:2] + [line] + lines[2:]) + "\n")
    assert run(data, "--base-url", claude.url, "--model", "claude-test") == 2
    assert "test.jsonl:3" in capsys.readouterr().err and claude.requests == []


# An OpenAI-compatible endpoint (a local router LLM): every way to break the JSON contract.
OPENAI_CONTENT = {
    "what is my balance": '{"route": "banking", "reason": "balance"}',
    "transfer 20 dollars": '```json\n{"route": "banking", "reason": "money"}\n```',  # a fence is tolerated
    "pay my bill": "The route is banking.",  # prose: malformed
    "book a flight to rome": '{"reason": "no route field"}',  # malformed
    "find a hotel": '{"route": "hotels"}',  # off the taxonomy
    "a hotel transfer please": '["travel"]',  # not an object: malformed
    "tell me a joke": '{"route": "oos"}',
    "sing a song": '{"route": "oos", "reason": "x"} and more text',  # trailing text: malformed
    "balance a broom on my nose": '{"route": 7}',  # malformed
    "what is the weather": '{"route": "oos", "reason": "weather"}',
}


def test_openai_compatible_endpoint_counts_malformed_answers(data, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeOpenAI(content=OPENAI_CONTENT.__getitem__) as server:
        server.script("rate_limit:0.2", "server_error")
        assert run(data, "--provider", "openai", "--base-url", f"{server.url}/v1", "--model", "arch-router") == 0
        body = json.loads(server.requests[0]["raw"])
        assert "authorization" not in {k.lower() for k in server.requests[0]["headers"]}
    metrics = stored(data)["models"]["arch-router"]
    assert metrics["malformed"] == 6 and metrics["n"] == 10 and metrics["pending"] == 0
    assert metrics["accuracy"] == 0.4 and metrics["oos_recall"] == 0.5 and metrics["cost_per_1k_usd"] == 0
    assert stored(data)["details"]["arch-router"]["review"] == {"malformed": 5, "off_taxonomy": 1}
    answers = stored(data)["answers"]["arch-router"]
    assert answers["0"] == answers["1"] == "banking" and answers["2"] is None and answers["4"] is None
    assert body["model"] == "arch-router" and '{"route": "<one of the routes above>"' in body["messages"][0]["content"]
    assert len(server.requests) == 12  # ten rows, one 429 and one 500 retried


def test_openai_endpoint_down_leaves_rows_pending(data, capsys):
    with FakeOpenAI(content=OPENAI_CONTENT.__getitem__, behaviour=lambda text: "server_error") as server:
        assert run(data, "--provider", "openai", "--base-url", f"{server.url}/v1", "--model", "m") == 2
    assert "HTTP 500" in capsys.readouterr().err and not (data / "baselines.json").exists()


def test_openai_needs_a_base_url_and_a_model(data, capsys):
    assert run(data, "--provider", "openai", "--model", "m") == 2
    assert run(data, "--provider", "openai", "--base-url", "http://127.0.0.1:9/v1") == 2
    err = capsys.readouterr().err
    assert "needs a base URL" in err and "needs --model" in err


# Screenshots: the prompt-based alternative to a trained image router ("just ask the VLM").
SCREENS = Taxonomy.model_validate({"reject": "other", "routes": [
    {"name": "calendar", "description": "A month or week calendar grid.", "labels": ["month", "week"]},
    {"name": "claim", "description": "A form editing an insurance claim."},
    {"name": "other", "description": "Any other screen."},
]})
# (file, label, what the stand-in answers): 3 of 4 in scope right, 1 of 2 others turned away.
SHOTS = [("a.png", "month", "calendar"), ("b.png", "week", "claim"), ("c.png", "claim", "claim"),
         ("d.png", "calendar", "calendar"), ("e.png", "other", "other"), ("f.png", "other", "calendar")]


def shot(seed: int) -> bytes:
    """A small distinct picture per seed: blocks of colour on a background."""
    rng = np.random.default_rng(seed)
    array = np.full((48, 64, 3), rng.integers(0, 255, 3), np.uint8)
    for _ in range(6):
        x, y = rng.integers(0, 54), rng.integers(0, 38)
        array[y:y + 10, x:x + 10] = rng.integers(0, 255, 3)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def screens(tmp_path):
    """An image holdout: six good rows (one with a prepared row's extra fields), a truncated PNG
    (line 3), a missing file (line 6), then an absolute path, one leaving the folder and a text file."""
    folder = tmp_path / "screens"
    (folder / "images").mkdir(parents=True)
    answers, lines = {}, []
    for seed, (name, label, answer) in enumerate(SHOTS):
        data = shot(seed)
        (folder / "images" / name).write_bytes(data)
        answers["image:" + hashlib.sha256(data).hexdigest()] = answer
        lines.append({"image": f"images/{name}", "label": label})
    lines[0] |= {"source": "data/screens/test.jsonl:1", "id": 7}
    cut = shot(99)
    (folder / "images" / "cut.png").write_bytes(cut[: len(cut) // 2])
    lines.insert(2, {"image": "images/cut.png", "label": "claim"})
    lines.insert(5, {"image": "images/gone.png", "label": "claim"})
    (folder / "images" / "notes.png").write_text("not a picture\n")
    lines += [{"image": "/etc/hostname", "label": "other"}, {"image": "../screens/images/a.png", "label": "other"},
              {"image": "images/notes.png", "label": "other"}]
    (folder / "test.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    SCREENS.save(folder / "taxonomy.json")
    (folder / "params.yaml").write_text(FAST_PARAMS)
    return folder, answers, hashlib.sha256(cut[: len(cut) // 2]).hexdigest()


def test_an_image_holdout_is_scored_and_its_bad_rows_never_sent(screens, monkeypatch, capsys):
    folder, answers, cut_sha = screens
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    with FakeAnthropic(answer=lambda text, enum: answers[text]) as server:
        assert run(folder, "--base-url", server.url, "--model", "claude-test") == 0
        bodies = [json.loads(r["raw"]) for r in server.requests]
        assert len(bodies) == 6 and set(server.answered.values()) == {1}
        assert run(folder, "--base-url", server.url, "--model", "claude-test") == 0
        assert len(server.requests) == 6  # the re-run is answered from the cache
    err = capsys.readouterr().err
    assert "test.jsonl:3: not sent: image 'images/cut.png': truncated or corrupt PNG data" in err
    assert "test.jsonl:6: not sent" in err and "5 image rows rejected" in err
    assert "test.jsonl:9: not sent: image '/etc/hostname': '/etc/hostname' is absolute" in err
    assert "test.jsonl:10: not sent: image '../screens/images/a.png': '../screens/images/a.png' leaves" in err
    assert "test.jsonl:11: not sent: image 'images/notes.png': not an image Pillow can read" in err
    assert f"image:{cut_sha}" not in server.answered
    image, note = bodies[0]["messages"][0]["content"]
    assert image["type"] == "image" and image["source"]["media_type"] == "image/png"
    assert image_bytes(image) == (folder / "images" / "a.png").read_bytes() and note["text"] == IMAGE_NOTE
    assert "screenshots" in bodies[0]["system"][0]["text"] and "A form editing an insurance claim." in (
        bodies[0]["system"][0]["text"])
    assert bodies[0]["tools"][0]["input_schema"]["properties"]["route"]["enum"] == ["calendar", "claim", "other"]
    [metrics] = llm_baselines(folder / "baselines.json", sha256_file(folder / "test.jsonl")).values()
    assert metrics["n"] == 6 and metrics["pending"] == 0 and metrics["malformed"] == 0
    assert metrics["accuracy"] == 0.6667 and metrics["in_scope_accuracy"] == 0.75 and metrics["oos_recall"] == 0.5
    assert metrics["input_tokens_per_request"] > 0 and metrics["cost_per_1k_usd"] > 0
    entry = stored(folder)
    # Keyed by row of test.jsonl (0-based; rows 2, 5 and 8-10 were rejected), each with its image's hash.
    assert entry["answers"]["claude-test"] == {"0": "calendar", "1": "claim", "3": "claim", "4": "calendar",
                                               "6": "other", "7": "calendar"}
    details = entry["details"]["claude-test"]
    assert details["rejected"] == 5 and [r["row"] for r in details["rejected_rows"]] == [2, 5, 8, 9, 10]
    assert "no such file" in details["rejected_rows"][1]["reason"]
    assert details["image_sha256"]["0"] == hashlib.sha256((folder / "images" / "a.png").read_bytes()).hexdigest()


@pytest.mark.parametrize(("line", "problem"), [
    ('{"image": "images/a.png", "label": "banking"}', "label 'banking' is neither a label nor a route"),
    ('{"image": "images/a.png"', 'expected a JSON object with "image" and "label"'),
    ('{"image": ["images/a.png"], "label": "claim"}', '"image" must be a path'),
])
def test_a_bad_image_holdout_line_stops_before_anything_is_sent(screens, monkeypatch, capsys, line, problem):
    folder, answers, _ = screens
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    with (folder / "test.jsonl").open("a") as handle:
        handle.write(line + "\n")
    with FakeAnthropic(answer=lambda text, enum: answers[text]) as server:
        assert run(folder, "--base-url", server.url, "--model", "claude-test") == 2
        assert server.requests == []
    assert f"test.jsonl:12: {problem}" in capsys.readouterr().err


def test_an_image_holdout_through_an_openai_compatible_endpoint(screens, monkeypatch):
    folder, answers, cut_sha = screens
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeOpenAI(content=lambda text: json.dumps({"route": answers[text]})) as server:
        assert run(folder, "--provider", "openai", "--base-url", f"{server.url}/v1", "--model", "qwen-vl") == 0
        bodies = [json.loads(r["raw"]) for r in server.requests]
    assert len(bodies) == 6 and f"image:{cut_sha}" not in server.answered
    part, note = bodies[0]["messages"][1]["content"]
    assert part["type"] == "image_url" and part["image_url"]["url"].startswith("data:image/png;base64,")
    assert image_bytes(part) == (folder / "images" / "a.png").read_bytes() and note["text"] == IMAGE_NOTE
    assert "screenshots" in bodies[0]["messages"][0]["content"]
    assert stored(folder)["models"]["qwen-vl"]["accuracy"] == 0.6667


def test_an_image_holdout_with_nothing_sendable_writes_nothing(screens, monkeypatch, capsys):
    folder, answers, _ = screens
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    (folder / "test.jsonl").write_text(json.dumps({"image": "images/cut.png", "label": "claim"}) + "\n")
    with FakeAnthropic(answer=lambda text, enum: answers[text]) as server:
        assert run(folder, "--base-url", server.url, "--model", "claude-test") == 2
        assert server.requests == []
    assert "no image row can be sent (line 1: image 'images/cut.png': truncated" in capsys.readouterr().err
    assert not (folder / "baselines.json").exists()
