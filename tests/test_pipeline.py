"""End to end: the real `dvc repro` in a copy of the repository, on a tiny dataset."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dvc_project import copy_pipeline, routelet_workspace, stages_run, write_params
from tiny_encoder import build_tiny_encoder

ROOT = Path(__file__).resolve().parents[1]
GIT_IDENTITY = {f"GIT_{who}_{what}": value for who in ("AUTHOR", "COMMITTER")
                for what, value in (("NAME", "routelet tests"), ("EMAIL", "tests@routelet.invalid"))}
# train@image_embed runs too (it uses the encoder) and writes that it skipped: the dataset is text.
ENCODER_STAGES = ("encoder", "train@embed", "train@embed_routes", "train@centroid", "train@setfit", "train@image_embed",
                  "calibrate", "learning_curve", "export_onnx", "report")
ALWAYS = {"pull_samples", "ingest"}  # always_changed: they run on every repro and write nothing new


def ran_stages(stdout: str) -> set[str]:
    """The stages a dvc command ran, less the always-changed ones."""
    return stages_run(stdout) - ALWAYS


TOY_FAMILY = '''"""A toy family, added the way the README says: this module, ending in its registry line."""

import pickle
from pathlib import Path

from routelet.families.base import Family


class ToyFamily(Family):
    """Word counts and multinomial naive Bayes."""

    def __init__(self, alpha: float = 1.0, seed: int = 0) -> None:
        self.alpha, self.seed = alpha, seed

    def fit(self, texts, labels):
        from sklearn.feature_extraction.text import CountVectorizer
        from sklearn.naive_bayes import MultinomialNB
        from sklearn.pipeline import make_pipeline

        self.pipeline_ = make_pipeline(CountVectorizer(), MultinomialNB(alpha=self.alpha)).fit(texts, labels)
        self.labels_ = [str(c) for c in self.pipeline_.classes_]
        return self

    def logits(self, texts):
        return self.pipeline_.predict_log_proba(texts)

    def save(self, folder):
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "model.pkl").write_bytes(pickle.dumps(self))

    @classmethod
    def load(cls, folder):
        return pickle.loads((Path(folder) / "model.pkl").read_bytes())

    def export(self, folder, out, temperature, options):
        raise NotImplementedError("the toy family does not ship")


FAMILY = ToyFamily
'''
pytestmark = pytest.mark.slow


def run(args, cwd, check=True):
    # PYTHONPATH: the stages import the workspace's own copy of routelet, not the installed one.
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": str(Path(cwd) / "src"),
                        "ROUTELET_CACHE": str(Path(cwd) / ".cache"), "OMP_WAIT_POLICY": "PASSIVE"} | GIT_IDENTITY
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The repository's pipeline files and a tiny dataset, git and DVC initialised."""
    work = tmp_path_factory.mktemp("repo")
    params = routelet_workspace(work, 25, 10, {"wire money": "transfer", "my funds": "balance",
                                               "boarding now": "flight", "tell a joke": "oos"})
    params["model"] = "tiny"
    # Two encoders to switch between with -S model=...: a tiny BERT, and its first layer alone.
    tiny = str(build_tiny_encoder(work / ".enc" / "tiny"))
    params["encoders"]["tiny"] = {"modality": "text", "source": tiny, "max_length": 32}
    params["encoders"]["tiny2"] = {**params["encoders"]["tiny"], "layers": 1}
    params["train"]["setfit"] |= {"max_steps": 4, "batch_size": 4, "max_seq_length": 16, "embed_batch_size": 16}
    params["export_onnx"]["ship"] = "setfit"  # the int8 ONNX path end to end (auto is tested in test_ship.py)
    write_params(work, params)
    run(["git", "init", "-q"], work)
    run(["dvc", "init", "-q"], work)
    return work


def test_repro_trains_checks_reports_then_runs_nothing(workspace):
    first = run(["dvc", "repro"], workspace)
    for stage in ("checkdata", "train@tfidf") + ENCODER_STAGES:
        assert f"Running stage '{stage}'" in first.stdout
    metrics = json.loads((workspace / "report" / "metrics.json").read_text())["holdout"]
    assert set(metrics) == {"tfidf", "embed", "embed_routes", "centroid", "setfit", "router"}
    guards = json.loads((workspace / "report" / "metrics.json").read_text())["guards"]
    assert set(guards) == {"guard_short"} and 0 <= guards["guard_short"]["accuracy"] <= 1
    timings = json.loads((workspace / "report" / "timings.json").read_text())["holdout"]
    assert set(timings) == set(metrics) and all("p50_ms" in t and "p50_ms" not in metrics[n] for n, t in timings.items())
    router = json.loads((workspace / "data" / "router" / "router.json").read_text())
    assert router["format_version"] == 2 and router["reject_route"] == "oos" and router["hashes"]["taxonomy"]
    [tier] = router["tiers"]
    assert tier["family"] == "setfit" and tier["kind"] == "onnx" and tier["encoder"]["fine_tuned"]
    assert tier["quantization"] == {"int8": "dynamic", "outlier_channels": 4}  # ranges from the calib split
    export = json.loads((workspace / "report" / "export.json").read_text())
    assert export["dynamic"]["agreement"] >= 0.995 and export["choice"]["rule"] == "export_onnx.ship"
    assert metrics["tfidf"]["in_scope_accuracy"] > 0.8  # keyword data: TF-IDF should nail it
    for name in ("confusion.png", "reliability.png", "risk_coverage.png", "accuracy_vs_latency.png",
                 "learning_curve.png"):
        assert (workspace / "report" / "figures" / name).stat().st_size > 1000
    dag = run(["dvc", "dag", "--dot"], workspace).stdout
    for edge in ('"checkdata" -> "train@tfidf"', '"encoder" -> "train@embed"', '"encoder" -> "train@setfit"',
                 '"train@tfidf" -> "calibrate"', '"train@embed" -> "calibrate"', '"calibrate" -> "report"'):
        assert edge in dag
    assert '"encoder" -> "train@tfidf"' not in dag

    second = run(["dvc", "repro"], workspace)
    assert ran_stages(second.stdout) == set()
    shown = run(["dvc", "metrics", "show", "--json"], workspace).stdout
    assert "in_scope_accuracy" in shown


def test_experiments_rerun_only_what_the_encoder_touches(workspace):
    run(["dvc", "repro"], workspace)  # nothing to do after the test above; needed when run alone
    # Stages read only the chosen encoder's entry: registering another one re-runs nothing.
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["encoders"]["tiny-short"] = {**params["encoders"]["tiny"], "max_length": 16}
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = run(["dvc", "status"], workspace).stdout
    assert "up to date" in status or set(re.findall(r"^([\w@]+):", status, re.M)) <= ALWAYS, status
    (workspace / ".gitignore").write_text(".cache/\n.enc/\n")
    run(["git", "add", "-A"], workspace)
    run(["git", "commit", "-q", "-m", "pipeline"], workspace)
    same = run(["dvc", "exp", "run", "-S", "model=tiny"], workspace)
    assert ran_stages(same.stdout) == set()

    other = run(["dvc", "exp", "run", "-n", "tiny2", "-S", "model=tiny2"], workspace)
    assert ran_stages(other.stdout) == set(ENCODER_STAGES)  # checkdata and train@tfidf do not use the encoder

    experiments = json.loads(run(["dvc", "exp", "show", "--json"], workspace).stdout)
    names = [exp["revs"][0].get("name") for baseline in experiments for exp in baseline.get("experiments") or []]
    assert "tiny2" in names
    # The workspace holds the experiment's results: `dvc metrics diff` compares it with HEAD.
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], workspace).stdout)["report/metrics.json"]
    assert any(key.startswith("holdout.embed.") and not key.endswith("_ms") for key in diff)  # a new model's figures
    assert "holdout.tfidf.accuracy" not in diff  # TF-IDF was not retrained


def test_a_new_family_is_one_module_and_one_registry_line(workspace):
    (workspace / "src/routelet/families/toy.py").write_text(TOY_FAMILY)  # the only file that changes
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["train"]["toy"] = {"family": "toy", "input": "data/prepared", "alpha": 0.5}
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        ran = run(["dvc", "repro"], workspace).stdout
        assert "Running stage 'train@toy'" in ran
        assert not any(f"Running stage 'train@{name}'" in ran for name in ("tfidf", "embed", "centroid", "setfit"))
        metrics = json.loads((workspace / "report" / "metrics.json").read_text())["holdout"]
        assert metrics["toy"]["in_scope_accuracy"] > 0.5
        assert "toy" in json.loads((workspace / "report" / "calibration.json").read_text())
    finally:  # leave the workspace as the other tests expect it
        del params["train"]["toy"]
        (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        run(["dvc", "repro"], workspace)


def test_bad_rows_are_named_quarantined_and_fail_the_run(workspace):
    train = workspace / "data" / "tiny" / "train.jsonl"
    good = train.read_text()
    lines = good.splitlines()
    lines[3] = '{"text": "broken json", "label": "flight"'
    lines[7] = '{"text": "what is the meaning of life", "label": "philosophy"}'
    lines[11] = '{"text": "", "label": "balance"}'
    train.write_text("\n".join(lines) + "\n")
    try:
        result = run(["dvc", "repro", "checkdata"], workspace, check=False)
    finally:
        train.write_text(good)
    assert result.returncode != 0
    for line, reason in ((4, "malformed JSON"), (8, "unknown label 'philosophy'"), (12, "text is empty")):
        assert f"data/tiny/train.jsonl:{line}: " in result.stderr and reason in result.stderr
    assert "over data.max_rejected_share=0.0" in result.stderr
    quarantine = [json.loads(x) for x in (workspace / "data/prepared/quarantine.jsonl").read_text().splitlines()]
    assert [q["line"] for q in quarantine] == [4, 8, 12]


@pytest.fixture(scope="module")
def image_workspace(tmp_path_factory):
    """The pipeline files and a small generated screenshot set (scripts/make_screens.py), the image
    encoder a tiny random-weight DINOv2 (tests/tiny_vision.py) in a local folder."""
    from tiny_vision import build_tiny_vision

    work = tmp_path_factory.mktemp("image_repo")
    copy_pipeline(work, "evals")
    screens = work / "data" / "screens"
    subprocess.run([sys.executable, "-m", "scripts.make_screens", "--out", str(screens), "--per-label", "12"],
                   cwd=ROOT, check=True, capture_output=True)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["data"]["dir"] = "data/screens"
    params["model"] = "tiny-dinov2"
    params["encoders"]["tiny-dinov2"] = {"modality": "image", "source": str(build_tiny_vision(work / ".enc", "dinov2"))}
    params["report"]["latency_queries"] = 10
    write_params(work, params)
    run(["git", "init", "-q"], work)
    run(["dvc", "init", "-q"], work)
    return work


def test_the_image_pipeline_runs_end_to_end_and_skips_the_text_families(image_workspace):
    work = image_workspace
    ran = run(["dvc", "repro"], work).stdout
    for name in ("tfidf", "embed", "embed_routes", "centroid", "setfit"):
        assert f"train: {name} skipped: family" in ran
        assert json.loads((work / "data" / "models" / name / "family.json").read_text())["skipped"]
    assert json.loads((work / "data" / "prepared" / "modality.json").read_text()) == {"modality": "image"}
    prepared = (work / "data" / "prepared" / "test.jsonl").read_text().splitlines()
    assert all(json.loads(line)["image"].startswith("images/") for line in prepared)
    assert set(json.loads((work / "report" / "calibration.json").read_text())) == {"pixels", "image_embed"}
    metrics = json.loads((work / "report" / "metrics.json").read_text())
    assert set(metrics["holdout"]) == {"pixels", "image_embed", "router"} and metrics["guards"] == {}
    assert 0 <= metrics["holdout"]["pixels"]["accuracy"] <= 1
    router = json.loads((work / "data" / "router" / "router.json").read_text())
    assert router["input"]["modality"] == "image" and router["tiers"][0]["kind"] in ("pixels", "image_onnx")
    assert json.loads((work / "report" / "export.json").read_text())["holdout"]
    # The learning curve lists text families: an image dataset measures its own families instead.
    assert "learning_curve: tfidf skipped" in ran
    curves = {path.stem for path in (work / "report" / "plots" / "learning_curve").glob("*.json")}
    assert curves == {"pixels", "image_embed"}
    assert ran_stages(run(["dvc", "repro"], work).stdout) == set()
