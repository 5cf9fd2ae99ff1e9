"""The data loop end to end: samples in a local S3 server (moto), the teacher a local stand-in of
the Messages API reached by the real anthropic SDK, and the real `dvc repro` in a copy of the
repository. New objects are pulled, labeled and retrained on; with nothing new only the two
always_changed stages run, no byte changes and the teacher gets no request."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import yaml
from dvc_project import env, routelet_workspace, run, stages_run, write_params
from fake_anthropic import FakeAnthropic
from s3_server import CREDENTIALS, s3_server  # noqa: F401  (fixture)

from routelet.serving.sample_log import sample_record

pytestmark = pytest.mark.slow

ALWAYS = {"pull_samples", "ingest"}  # always_changed: DVC runs them on every repro
AFTER_INGEST = {"augment", "checkdata", "train@tfidf", "calibrate", "learning_curve", "export_onnx", "report"}
OFF_TAXONOMY = "zebra"  # the stand-in answers a label outside the taxonomy for texts with this word
DECISION = {"route": "banking", "confidence": 0.42, "abstain": False, "model_version": "tfidf-0001"}
# Words outside the synthetic dataset's vocabulary, so no sample repeats a pool or holdout text.
FIRST = ["show the balance of my checking account today", "please transfer forty dollars to sam"]
ASKED = ["could you transfer the rent to our landlord", "is the flight to lisbon delayed tonight",
         f"{OFF_TAXONOMY} crossing near the harbour"]
FREE = ("remind me of the balance before payday", "balance")  # a label the user gave, with its source


def off_taxonomy(text: str) -> str | None:
    return "off_taxonomy" if OFF_TAXONOMY in text else None


def jsonl(records) -> bytes:
    return b"".join(json.dumps(record).encode() + b"\n" for record in records)


def make_workspace(work: Path, bucket_url: str, endpoint: str, teacher_url: str) -> None:
    """The pipeline files, a tiny keyword dataset and cheap params: TF-IDF is the only family."""
    params = routelet_workspace(work, 20, 8, {"wire money": "transfer", "boarding now": "flight"})
    params["pull_samples"] |= {"source": bucket_url, "endpoint_url": endpoint, "region": "us-east-1", "workers": 2}
    params["ingest"]["base_url"] = teacher_url
    params["ingest"]["teacher"] |= {"model": "claude-test", "timeout_s": 10.0, "backoff_s": 0.01}
    params["train"] = {"tfidf": params["train"]["tfidf"]}
    params["learning_curve"] = {"families": ["tfidf"], "per_label": [8, "all"]}
    params["export_onnx"]["ship"] = "tfidf"
    write_params(work, params)
    run(["git", "init", "-q"], work)
    run(["dvc", "init", "-q"], work)


def repro(work: Path) -> tuple[set[str], str]:
    """`dvc repro`: the stages it ran and everything it printed (the stages' own lines too)."""
    environ = env(**CREDENTIALS, ANTHROPIC_API_KEY="test-key", PYTHONPATH=str(work / "src"),
                  ROUTELET_CACHE=str(work / ".cache"), OMP_WAIT_POLICY="PASSIVE")
    result = run(["dvc", "repro"], work, environ=environ, timeout=600)
    return stages_run(result.stdout), result.stdout + result.stderr


def snapshot(work: Path) -> dict[str, bytes]:
    """Every file the pipeline owns: outputs, reports, dvc.lock (not git's or DVC's own folders)."""
    return {str(p.relative_to(work)): p.read_bytes() for p in sorted(work.rglob("*"))
            if p.is_file() and p.relative_to(work).parts[0] not in (".git", ".dvc")}


def lock_outs(work: Path) -> dict[str, str]:
    """Each stage's output hashes from dvc.lock: what it last wrote."""
    stages = yaml.safe_load((work / "dvc.lock").read_text())["stages"]
    return {name: json.dumps(stage.get("outs"), sort_keys=True) for name, stage in stages.items()}


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_new_samples_are_pulled_labeled_and_trained_on_then_nothing_runs(s3_server, tmp_path):
    s3 = s3_server.client()
    s3.create_bucket(Bucket="samples")
    work = tmp_path / "repo"
    work.mkdir()
    with FakeAnthropic(behaviour=off_taxonomy) as teacher:
        make_workspace(work, "s3://samples/logs", s3_server.url, teacher.url)
        s3.put_object(Bucket="samples", Key="logs/2026-12-01/a.jsonl",
                      Body=jsonl(sample_record(text, DECISION) for text in FIRST))

        # (1) the first repro: every stage, the two first samples labeled into the pool.
        ran, said = repro(work)
        assert ran == ALWAYS | AFTER_INGEST | {"encoder"}
        assert json.loads((work / "report" / "pull_samples.json").read_text()) == {
            "source": "s3://samples/logs", "objects": 1, "rows": 2, "labeled": 0, "quarantined": 0}
        first = json.loads((work / "report" / "ingest.json").read_text())
        assert (first["pulled"], first["labeled"], first["queued"], first["review"], first["calls"]) == (2, 2, 0, 0, 2)
        assert len(teacher.requests) == 2 and len(lines(work / "data" / "collected.jsonl")) == 2
        before = lock_outs(work)

        # (2) new objects arrive: good rows, a user's label, a broken line, an answer off the
        # taxonomy, and an object that is not JSONL at all.
        s3.put_object(Bucket="samples", Key="logs/2026-12-02/b.jsonl", Body=(
            jsonl([sample_record(text, DECISION) for text in ASKED[:2]]) + b'{"text": "half a line\n'
            + jsonl([sample_record(ASKED[2], DECISION), sample_record(FREE[0], DECISION, FREE[1], "feedback")])))
        s3.put_object(Bucket="samples", Key="logs/2026-12-02/c.jsonl.gz", Body=gzip.compress(jsonl(
            [sample_record("never read", DECISION)])))
        ran, said = repro(work)
        assert ran == ALWAYS | AFTER_INGEST  # the encoder did not change: not run
        after = lock_outs(work)
        assert {name for name in after if after[name] != before[name]} >= {
            "pull_samples", "ingest", "checkdata", "train@tfidf", "export_onnx"}

        pulled = json.loads((work / "report" / "pull_samples.json").read_text())
        assert pulled == {"source": "s3://samples/logs", "objects": 3, "rows": 6, "labeled": 1, "quarantined": 2}
        quarantine = lines(work / "data" / "samples" / "quarantine.jsonl")
        assert [(q["file"], q["line"]) for q in quarantine] == [
            ("s3://samples/logs/2026-12-02/b.jsonl", 3), ("s3://samples/logs/2026-12-02/c.jsonl.gz", None)]
        assert "gzip-compressed" in quarantine[1]["reason"]
        assert "2 new and 0 changed objects from s3://samples/logs: 4 rows, 2 quarantined" in said

        report = json.loads((work / "report" / "ingest.json").read_text())
        counts = {key: report[key] for key in ("pulled", "already_collected", "labeled", "free_labeled", "queued",
                                               "review", "calls", "pool_rows")}
        assert counts == {"pulled": 6, "already_collected": 2, "labeled": 2, "free_labeled": 1, "queued": 0,
                          "review": 1, "calls": 3, "pool_rows": 5}
        assert report["new_labels"] == {"balance": 1, "flight": 1, "transfer": 1}
        assert "6 pulled: 2 already in the pool" in said  # the stage's note says what the report says
        assert (f"2 labeled by the teacher, 1 free labels, 0 queued, 1 for review; 3 calls, ${report['cost_usd']:.4f} "
                "-> data/collected.jsonl (5 rows)") in said
        assert sorted(teacher.answered) == sorted(FIRST + ASKED)  # each text sent once, the user's label never
        assert teacher.count("/v1/messages") == len(teacher.requests) == 5

        pool = lines(work / "data" / "collected.jsonl")
        assert [row["text"] for row in pool] == FIRST + ASKED[:2] + [FREE[0]]
        assert [row["meta"]["provenance"]["labeler"] for row in pool] == ["claude"] * 4 + ["trusted"]
        [review] = lines(work / "data" / "ingest" / "review.jsonl")
        assert review["text"] == ASKED[2] and review["reason"].startswith("off_taxonomy")
        assert lines(work / "data" / "ingest" / "queue.jsonl") == []
        # The cost is the sum of what each answer of this run cost, the one for review included.
        paid = [row["meta"]["provenance"]["cost_usd"] for row in pool[2:4]] + [review["provenance"]["cost_usd"]]
        assert report["cost_usd"] == pytest.approx(sum(paid), abs=1e-6) and report["cost_usd"] > 0
        prepared = (work / "data" / "prepared").rglob("*.jsonl")
        assert any(ASKED[0] in path.read_text() for path in prepared)  # the new label reached checkdata's splits

        # (3) nothing new: DVC still lists the two always_changed stages as run; they write no
        # byte, so nothing after them runs and the teacher is not asked.
        files, requests = snapshot(work), len(teacher.requests)
        ran, said = repro(work)
        assert ran == ALWAYS
        now = snapshot(work)
        assert [name for name in files.keys() | now.keys() if files.get(name) != now.get(name)] == []
        assert len(teacher.requests) == requests
        assert "ingest: nothing new: no file changed" in said
