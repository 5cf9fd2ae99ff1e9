"""ingest against the real `anthropic` SDK and a local stand-in of the Messages API
(tests/fake_anthropic.py): provenance, a free re-run, the budget and uncertainty order, no key,
answers for review, dedup against the evaluation sets, redaction of everything stored or sent."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from fake_anthropic import FakeAnthropic, request_text
from secrets_corpus import json_strings, leaks, make_corpus

from routelet import paths
from routelet.data.dataset import load_dataset
from routelet.data.ingest import CACHE, QUEUE, REVIEW, IngestConfig, IngestFiles, ingest
from routelet.data.rows import DataError

ROOT = Path(__file__).resolve().parents[1]
FAST = {"backoff_s": 0.01, "max_backoff_s": 0.05, "timeout_s": 5.0, "max_usd": None}
TAXONOMY = {"reject": "oos", "routes": [
    {"name": "banking", "description": "Bank accounts.", "labels": ["balance", "transfer"]},
    {"name": "travel", "description": "Trips.", "labels": ["book_flight", "book_hotel"]},
    {"name": "oos", "description": "Anything else."},
]}
TRAIN = {
    "balance": ["what is my balance", "how much money do i have", "show my account balance",
                "balance in checking please", "tell me my savings balance"],
    "transfer": ["transfer money to my mom", "send fifty dollars to alex", "move funds to savings",
                 "wire cash to john", "make a transfer to my landlord"],
    "book_flight": ["book a flight to rome", "get me a plane ticket to paris", "i need a flight home",
                    "reserve a seat on a flight to tokyo", "fly me to berlin"],
    "book_hotel": ["book a hotel in paris", "find me a room in london", "reserve a hotel for two nights",
                   "i need a hotel near the airport", "get a room in madrid"],
    "oos": ["tell me a joke", "what is the meaning of life", "sing a song", "who won the game",
            "how tall is everest"],
}
VALID = [("balance", "balance of my card"), ("transfer", "transfer rent"), ("book_flight", "flight to oslo"),
         ("book_hotel", "hotel in rome"), ("oos", "what's the weather")]
TEST = [("oos", "What's the Spanish word for pasta?"), ("balance", "balance please"),
        ("book_hotel", "a hotel in lima")]
FROZEN = [("book_flight", "please book me a flight to cairo")]
KEYWORDS = {"balance": "balance", "transfer": "transfer", "send": "transfer", "flight": "book_flight",
            "hotel": "book_hotel"}


def keyword_answer(text: str, enum: list[str]) -> str:
    return next((label for word, label in KEYWORDS.items() if word in text.lower()), "oos")


def jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def sample(n: int, text: str, label: str | None = None, source: str | None = None) -> dict:
    meta = {"route": "banking", "confidence": 0.41, "abstain": False, "model_version": "tfidf-1",
            "time": "2026-12-01T10:00:00+00:00", "pulled": {"file": "logs/a.jsonl", "version": "v1", "line": n}}
    row = {"text": text, "meta": meta}
    if label is not None:
        row["label"], meta["label_source"] = label, source
    return row


class Project:
    """A dataset folder, the frozen evals/, pulled samples and ingest's outputs in tmp_path."""

    def __init__(self, root: Path, server: FakeAnthropic | None, **teacher):
        self.root = root
        self.dataset_dir = root / "ds"
        (self.dataset_dir / "taxonomy.yaml").parent.mkdir(parents=True, exist_ok=True)
        (self.dataset_dir / "taxonomy.yaml").write_text(yaml.safe_dump(TAXONOMY))
        jsonl(self.dataset_dir / "train.jsonl", [{"text": t, "label": label} for label, ts in TRAIN.items()
                                                 for t in ts])
        jsonl(self.dataset_dir / "valid.jsonl", [{"text": t, "label": label} for label, t in VALID])
        jsonl(self.dataset_dir / "test.jsonl", [{"text": t, "label": label} for label, t in TEST])
        jsonl(root / "evals" / "holdout.jsonl", [{"text": t, "label": label} for label, t in FROZEN])
        self.files = IngestFiles(root / "samples" / "pulled.jsonl", root / "collected.jsonl", root / "ingest",
                                 root / "evals")
        self.server = server
        self.teacher = FAST | teacher

    def pull(self, rows: list[dict]) -> None:
        jsonl(self.files.samples, rows)

    def run(self, api_key: str | None = "test-key", **teacher):
        config = IngestConfig(base_url=self.server.url if self.server else None,
                              teacher=self.teacher | teacher, uncertainty={"max_per_label": None})
        return ingest(load_dataset(self.dataset_dir), self.files, config, seed=0, api_key=api_key)

    def read(self, path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    @property
    def collected(self) -> list[dict]:
        return self.read(self.files.collected)

    @property
    def queue(self) -> list[dict]:
        return self.read(self.files.state / QUEUE)

    @property
    def review(self) -> list[dict]:
        return self.read(self.files.state / REVIEW)

    def snapshot(self) -> dict[str, bytes]:
        return {str(p): p.read_bytes() for p in sorted(self.root.rglob("*")) if p.is_file()}


@pytest.fixture
def server():
    with FakeAnthropic(answer=keyword_answer) as fake:
        yield fake


@pytest.fixture
def project(tmp_path, server):
    return Project(tmp_path, server)


def accounted(report: dict) -> int:
    """Every pulled row ends in exactly one place."""
    return (report["unreadable"] + report["already_collected"] + sum(report["duplicates"].values())
            + report["labeled"] + report["free_labeled"] + report["queued"] + report["review"])


NEW = ["is my balance low", "send money to my brother", "book a flight to lima", "find a hotel in oslo",
       "play some jazz"]


def test_labels_land_in_the_pool_with_provenance(project, server):
    project.pull([sample(i, text) for i, text in enumerate(NEW)])
    outcome = project.run(model="claude-test")
    rows = project.collected
    assert [(r["text"], r["label"]) for r in rows] == [
        ("is my balance low", "balance"), ("send money to my brother", "transfer"),
        ("book a flight to lima", "book_flight"), ("find a hotel in oslo", "book_hotel"), ("play some jazz", "oos")]
    provenance = rows[0]["meta"]["provenance"]
    assert provenance["labeler"] == "claude" and provenance["model"] == "claude-test"
    assert len(provenance["prompt_hash"]) == 16 and provenance["time"].endswith("+00:00")
    assert json.loads(provenance["raw"])["label"] == "balance"
    assert rows[0]["meta"]["sample"] == {"file": "logs/a.jsonl", "version": "v1", "line": 0}
    assert rows[0]["meta"]["decision"]["model_version"] == "tfidf-1"
    report = outcome.report()
    assert report["labeled"] == 5 and report["calls"] == 5 and report["cost_usd"] > 0
    assert report["queued"] == report["review"] == 0 and accounted(report) == report["pulled"] == 5
    assert report["new_labels"] == {"balance": 1, "book_flight": 1, "book_hotel": 1, "oos": 1, "transfer": 1}
    # The pool is a dataset file like any other: it passes the row contract against the taxonomy.
    assert load_dataset(project.dataset_dir).taxonomy.labels == ["balance", "transfer", "book_flight", "book_hotel",
                                                                 "oos"]


def test_a_rerun_costs_no_call_and_changes_no_byte(project, server):
    project.pull([sample(i, text) for i, text in enumerate(NEW)] + [sample(9, "x", "balance", "app:claude")])
    server.behaviour = lambda text: "off_taxonomy" if "jazz" in text else None
    project.run(max_calls=3)  # some labeled, one for review, the rest queued
    project.run()  # the rest labeled
    before, sent = project.snapshot(), len(server.requests)
    outcome = project.run()
    assert len(server.requests) == sent and not outcome.changed
    assert project.snapshot() == before
    assert outcome.report()["already_collected"] == 5 and outcome.report()["review"] == 1
    # Without the API key too: every answer comes from the cache.
    assert not project.run(api_key=None).changed and project.snapshot() == before


def test_new_samples_are_appended_after_the_old_ones(project, server):
    project.pull([sample(0, NEW[0])])
    project.run()
    first = project.files.collected.read_bytes()
    project.pull([sample(0, NEW[0]), sample(1, NEW[1])])
    outcome = project.run()
    assert project.files.collected.read_bytes().startswith(first)
    assert [r["text"] for r in project.collected] == NEW[:2] and outcome.report()["already_collected"] == 1
    assert sum(server.answered.values()) == 2


def test_a_run_killed_mid_way_loses_no_label_and_pays_for_none_twice(project, server):
    project.pull([sample(i, text) for i, text in enumerate(NEW)])
    server.behaviour = lambda text: "hang" if text == NEW[3] else None
    files = project.files
    script = textwrap.dedent(f"""
        from pathlib import Path
        from routelet.data.dataset import load_dataset
        from routelet.data.ingest import IngestConfig, IngestFiles, ingest
        files = IngestFiles(*map(Path, {[str(files.samples), str(files.collected), str(files.state),
                                         str(files.frozen_evals)]!r}))
        config = IngestConfig(base_url={server.url!r}, teacher={project.teacher!r})
        ingest(load_dataset({str(project.dataset_dir)!r}), files, config, api_key="test-key")
    """)
    process = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while server.count("/v1/messages") < 4 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        assert server.count("/v1/messages") == 4  # three answered, the fourth in flight
    finally:
        process.kill()
        process.wait()
    assert not project.collected  # killed before the pool was written
    server.behaviour = lambda text: None
    outcome = project.run()
    assert [r["text"] for r in project.collected] == NEW and outcome.report()["calls"] == 2
    assert sorted(server.answered.values()) == [1] * 5  # the three answered before the kill were not paid again


def test_budget_short_labels_the_least_certain_first_and_queues_the_rest(project, server):
    certain = ["what is my balance now", "book a flight to rome today", "book a hotel in paris tonight"]
    unsure = ["zq vx", "kw jj"]  # nothing the pool has seen: a model trained on it cannot tell
    project.pull([sample(i, text) for i, text in enumerate(certain + unsure)])
    outcome = project.run(max_calls=2)
    assert set(server.answered) == set(unsure)
    assert [r["text"] for r in project.queue] == certain
    assert all(r["reason"].startswith("budget reached") for r in project.queue)
    report = outcome.report()
    assert report["queued"] == 3 and report["labeled"] == 2 and report["ranked_by"].startswith("uncertainty (margin)")
    # The next run asks the rest; nothing is asked twice.
    assert project.run(max_calls=10).report()["labeled"] == 3
    assert sorted(server.answered.values()) == [1] * 5 and not project.queue
    assert len(project.collected) == 5


def test_no_api_key_queues_everything_and_sends_nothing(project, server, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    project.pull([sample(i, text) for i, text in enumerate(NEW)] + [sample(7, "hi", "oos", "app:claude")])
    outcome = project.run(api_key=None)
    assert not server.requests
    assert [r["text"] for r in project.queue] == NEW and all("no API key" in r["reason"] for r in project.queue)
    assert [r["label"] for r in project.collected] == ["oos"]  # a free label needs no key
    assert "no API key" in outcome.report()["teacher"]["stopped"]
    assert outcome.report()["ranked_by"].startswith("not needed: no API key")


@pytest.mark.parametrize(("behaviour", "reason"), [("off_taxonomy", "off_taxonomy"), ("malformed", "malformed"),
                                                   ("refusal", "refusal")])
def test_an_unusable_answer_goes_to_review_never_to_the_pool(project, server, behaviour, reason):
    server.behaviour = lambda text: behaviour if "jazz" in text else None
    project.pull([sample(i, text) for i, text in enumerate(NEW)])
    project.run()
    assert "play some jazz" not in [r["text"] for r in project.collected]
    [row] = project.review
    assert row["text"] == "play some jazz" and row["reason"].startswith(reason) and row["sample"]["line"] == 4
    assert row["provenance"]["prompt_hash"] and "answer" in row


def test_trusted_labels_skip_the_teacher_and_keep_their_provenance(project, server):
    project.pull([sample(0, "how much is in savings", "balance", "anthropic:claude-sonnet-4-5"),
                  sample(1, "wire money to bob", "payroll", "app:rules"),  # not a label of the taxonomy
                  sample(2, "book me a cab", "oos", "app:a"), sample(3, "Book me a cab", "book_flight", "app:b"),
                  sample(4, "how much is in savings"),  # the same text again: a duplicate
                  {"text": "book a hotel in oslo", "label": "balance"}])  # a label with no source is not trusted
    outcome = project.run()
    assert list(server.answered) == ["book a hotel in oslo"]
    assert project.collected[-1]["label"] == "book_hotel" and project.collected[-1]["meta"]["sample"] == {
        "file": str(project.files.samples), "line": 6}
    assert project.collected[-1]["meta"]["provenance"]["labeler"] == "claude"
    row = project.collected[0]
    assert row["label"] == "balance" and row["meta"]["provenance"] == {
        "labeler": "trusted", "label_source": "anthropic:claude-sonnet-4-5", "time": "2026-12-01T10:00:00+00:00"}
    reasons = {r["text"]: r["reason"] for r in project.review}
    assert reasons["wire money to bob"].startswith("off_taxonomy: the trusted label 'payroll'")
    assert reasons["book me a cab"].startswith("trusted labels disagree")
    report = outcome.report()
    assert report["free_labeled"] == 1 and report["review"] == 2 and report["duplicates"]["pool"] == 2
    assert report["labeled"] == 1 and accounted(report) == report["pulled"] == 6


def test_duplicates_of_evaluation_texts_and_of_the_pool_are_dropped_and_reported(project, server):
    project.pull([sample(0, "  what's the SPANISH word for pasta?"),  # the dataset's test.jsonl, normalised
                  sample(1, "please book me a flight to cairo"),  # the frozen evals/ folder, exact
                  sample(2, "Transfer money to my mom"),  # the dataset's train.jsonl
                  sample(3, "hotel in rome"),  # the dataset's valid.jsonl
                  sample(4, "book a flight to lima"), sample(5, "BOOK A FLIGHT TO LIMA")])  # each other
    outcome = project.run()
    assert list(server.answered) == ["book a flight to lima"]
    report = outcome.report()
    assert report["duplicates"] == {"eval": 2, "dataset": 2, "pool": 1} and accounted(report) == 6
    assert report["eval_duplicates"] == [
        {"sample": f"{project.files.samples}:1", "match": "normalised", "eval": f"{project.dataset_dir}/test.jsonl:1"},
        {"sample": f"{project.files.samples}:2", "match": "exact", "eval": f"{project.root}/evals/holdout.jsonl:1"}]
    texts = [r["text"] for r in project.collected + project.queue + project.review]
    assert texts == ["book a flight to lima"]
    # Pooled once, a text pulled again later is a duplicate of the pool.
    project.pull([sample(4, "book a flight to lima"), sample(9, "Book a flight to  LIMA")])
    report = project.run().report()
    assert report["already_collected"] == 1 and report["duplicates"]["pool"] == 1


def test_broken_input_is_named_and_nothing_is_lost(project, server):
    project.files.samples.parent.mkdir(parents=True)
    good = json.dumps(sample(0, "is my balance low"))
    project.files.samples.write_bytes(f"{good}\n{{not json\n".encode() + b'{"text": "\xff"}\n'
                                      + json.dumps({"text": "y" * 3000}).encode() + b"\n")
    outcome = project.run()
    report = outcome.report()
    assert report["pulled"] == 4 and report["unreadable"] == 3 and report["labeled"] == 1
    assert report["unreadable_lines"][0].startswith(f"{project.files.samples}:2: malformed JSON")
    # A pool broken by hand stops the run with the file and line, instead of labeling twice.
    with project.files.collected.open("a") as out:
        out.write("{oops\n")
    with pytest.raises(DataError, match=r"collected\.jsonl:2: .*dvc checkout"):
        project.run()


def test_no_secret_reaches_the_server_the_pool_the_review_file_or_the_logs(tmp_path, server, monkeypatch, capsys):
    corpus = make_corpus(per_kind=4)
    assert len(corpus) >= 100 and len({s.kind for s in corpus}) >= 10
    rows = []
    for i, secret in enumerate(corpus):
        label = ("balance", "app:claude") if i % 7 == 0 else (None, None)
        rows.append(sample(i, secret.text, *label))
    server.behaviour = lambda text: "off_taxonomy" if len(text) % 5 == 0 else None
    project = Project(tmp_path / "project", server, max_calls=40)
    project.pull(rows)
    monkeypatch.chdir(tmp_path)
    outcome = run_stage(project, monkeypatch, api_key="test-key")
    assert outcome == 0
    logs = capsys.readouterr()
    report = json.loads((tmp_path / "report" / "ingest.json").read_text())
    assert accounted(report) == report["pulled"] == len(corpus)
    assert report["labeled"] and report["queued"] and report["review"] and report["free_labeled"]
    texts = [request_text(json.loads(r["raw"])) for r in server.requests]  # what was sent about each sample
    for path in (project.files.collected, project.files.state / QUEUE, project.files.state / REVIEW,
                 project.files.state / CACHE):
        texts += [value for line in path.read_text().splitlines() for value in json_strings(json.loads(line))]
    texts += json_strings(report)
    logs = logs.out + logs.err
    assert "ingest: " in logs and "<secret>" in "".join(texts)
    # A PIN is 3 or 4 digits: any token count or dollar figure in the logs would contain one.
    found = {s.kind: leaks(s, "\n".join(texts)) + (leaks(s, logs) if min(map(len, s.parts)) >= 6 else [])
             for s in corpus}
    found = {kind: pieces for kind, pieces in found.items() if pieces}
    assert not found


def run_stage(project: Project, monkeypatch, api_key: str | None) -> int:
    """stages.ingest.main() in `project`'s parent folder, with params.yaml and the paths there."""
    from stages import ingest as stage

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"] = {"dir": str(project.dataset_dir), "taxonomy": "taxonomy.yaml"}
    params["ingest"] = {"base_url": project.server.url, "teacher": project.teacher,
                        "uncertainty": {"max_per_label": 10}}
    (Path.cwd() / "params.yaml").write_text(yaml.safe_dump(params))
    for name, value in (("SAMPLES", project.files.samples.parent), ("COLLECTED", project.files.collected),
                        ("INGEST_STATE", project.files.state), ("EVALS", project.files.frozen_evals),
                        ("INGEST", Path("report/ingest.json"))):
        monkeypatch.setattr(paths, name, value, raising=False)
    if api_key:
        monkeypatch.setenv("ANTHROPIC_API_KEY", api_key)
    else:
        monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    return stage.main()


def test_the_stage_succeeds_without_a_key_and_says_so(tmp_path, server, monkeypatch, capsys):
    project = Project(tmp_path / "project", server)
    project.pull([sample(i, text) for i, text in enumerate(NEW)])
    monkeypatch.chdir(tmp_path)
    assert run_stage(project, monkeypatch, api_key=None) == 0
    err = capsys.readouterr().err
    assert "no API key" in err and "5 samples wait in" in err and not server.requests
    report_path = tmp_path / "report" / "ingest.json"
    assert json.loads(report_path.read_text())["queued"] == 5 and project.files.collected.read_bytes() == b""
    before = project.snapshot() | {"report": report_path.read_bytes()}
    assert run_stage(project, monkeypatch, api_key=None) == 0
    assert "nothing new: no file changed" in capsys.readouterr().out
    assert project.snapshot() | {"report": report_path.read_bytes()} == before
    # With a key, the queue empties into the pool and the report says so.
    assert run_stage(project, monkeypatch, api_key="test-key") == 0
    assert json.loads(report_path.read_text())["labeled"] == 5 and not project.queue


def test_the_stage_names_a_bad_setting(tmp_path, server, monkeypatch, capsys):
    project = Project(tmp_path / "project", server, max_calls=-1)
    monkeypatch.chdir(tmp_path)
    assert run_stage(project, monkeypatch, api_key=None) == 2
    assert "ingest.teacher.max_calls" in capsys.readouterr().err
    shutil.rmtree(project.dataset_dir)
    project.teacher["max_calls"] = 1
    assert run_stage(project, monkeypatch, api_key=None) == 2
    assert "no such dataset folder" in capsys.readouterr().err


def test_a_run_with_nothing_to_ask_never_loads_the_sdk(tmp_path, server):
    """Every repro runs ingest: with nothing new it must not pay the SDK's imports (~1.5 s)."""
    project = Project(tmp_path, server)
    project.pull([sample(0, "x", "balance", "app:claude")])  # a trusted label: nothing to ask
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from routelet.data.dataset import load_dataset
        from routelet.data.ingest import IngestConfig, IngestFiles, ingest
        files = IngestFiles(*map(Path, {[str(p) for p in vars(project.files).values()]!r}))
        outcome = ingest(load_dataset({str(project.dataset_dir)!r}), files, IngestConfig(base_url={server.url!r}),
                         api_key="test-key")
        print(outcome.report()["free_labeled"], "anthropic" in sys.modules)
        """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["1", "False"] and not server.requests
    project.pull([sample(1, "book a flight to lima")])  # something to ask: the SDK loads and is called
    assert project.run().report()["labeled"] == 1 and len(server.requests) == 1
