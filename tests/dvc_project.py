"""A tiny git + DVC project with a real three-stage pipeline, for the remote and pr-report tests, and
routelet's own pipeline on a tiny dataset, for the end-to-end tests.

    from dvc_project import make_project, run, commit
    repo = make_project(tmp_path / "repo", shards=20)   # git init, dvc init, dvc repro, one commit
    params = routelet_workspace(work, 25, 10, {"wire money": "transfer"})   # then adjust, write_params

prepare writes a folder of shards, train a model folder, evaluate the metrics, a plot, a PNG figure
and a cached details file. The stages are a few lines of stdlib Python each, so `dvc repro` takes
seconds, not the minutes the routelet pipeline needs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml
from routers import ROUTES, synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]

GIT_IDENTITY = {f"GIT_{who}_{what}": value for who in ("AUTHOR", "COMMITTER")
                for what, value in (("NAME", "routelet tests"), ("EMAIL", "tests@routelet.invalid"))}

DVC_YAML = {
    "stages": {
        "prepare": {"cmd": "python prepare.py", "deps": ["prepare.py"], "params": ["prepare"],
                    "outs": ["data/shards"]},
        "train": {"cmd": "python train.py", "deps": ["train.py", "data/shards"], "params": ["train"],
                  "outs": ["model"]},
        "evaluate": {"cmd": "python evaluate.py", "deps": ["evaluate.py", "model"],
                     "metrics": [{"metrics.json": {"cache": False}}],
                     "plots": [{"plots/curve.json": {"cache": False, "x": "step", "y": "accuracy"}}],
                     "outs": ["report/details.json", {"report/figures/curve.png": {"cache": False}}]},
    },
}

SCRIPTS = {
    # Deterministic bytes from the params: the same params give the same hashes on every run.
    "prepare.py": """
        import hashlib, pathlib, yaml
        p = yaml.safe_load(open("params.yaml"))["prepare"]
        out = pathlib.Path("data/shards"); out.mkdir(parents=True, exist_ok=True)
        for i in range(p["shards"]):
            seed = hashlib.sha256(f"{p['seed']}-{i}".encode()).digest()
            (out / f"shard-{i:04d}.bin").write_bytes(seed * (p["shard_kib"] * 32))
        """,
    "train.py": """
        import hashlib, json, pathlib, yaml
        p = yaml.safe_load(open("params.yaml"))["train"]
        digest = hashlib.sha256()
        for shard in sorted(pathlib.Path("data/shards").iterdir()):
            digest.update(shard.read_bytes())
        out = pathlib.Path("model"); out.mkdir(exist_ok=True)
        (out / "weights.bin").write_bytes(digest.digest() * 64)
        (out / "meta.json").write_text(json.dumps({"lr": p["lr"], "steps": p["steps"]}))
        """,
    "evaluate.py": """
        import json, pathlib, struct, zlib
        meta = json.loads(pathlib.Path("model/meta.json").read_text())
        accuracy = round(min(0.99, 0.5 + meta["lr"] * meta["steps"] / 10), 4)
        pathlib.Path("metrics.json").write_text(json.dumps({"accuracy": accuracy, "steps": meta["steps"]}))
        curve = [{"step": s, "accuracy": round(accuracy * s / meta["steps"], 4)} for s in range(1, meta["steps"] + 1)]
        pathlib.Path("plots").mkdir(exist_ok=True)
        pathlib.Path("plots/curve.json").write_text(json.dumps(curve))
        pathlib.Path("report/figures").mkdir(parents=True, exist_ok=True)
        pathlib.Path("report/details.json").write_text(json.dumps({"per_step": curve}))
        def chunk(kind, data):
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        shade = int(accuracy * 255)  # a 16x16 grey square whose shade is the accuracy
        raw = b"".join(b"\\x00" + bytes([shade] * 16) for _ in range(16))
        png = (b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 0, 0, 0, 0))
               + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
        pathlib.Path("report/figures/curve.png").write_bytes(png)
        """,
}


def env(**extra) -> dict:
    """The environment for dvc and git: this venv's bin first (the stages run `python`)."""
    return os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"} | GIT_IDENTITY | extra


def run(args, cwd, check=True, environ=None, timeout=300) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=environ or env(), capture_output=True, text=True, timeout=timeout,
                            check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def commit(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", message], repo)


def set_params(repo: Path, **sections) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in sections.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))


def make_project(repo: Path, shards: int = 8, shard_kib: int = 4, steps: int = 5) -> Path:
    """git init + dvc init, the pipeline written, reproduced and committed on branch main."""
    repo.mkdir(parents=True)
    run(["git", "init", "-q", "-b", "main"], repo)
    run(["dvc", "init", "-q"], repo)
    (repo / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    (repo / "params.yaml").write_text(yaml.safe_dump({
        "prepare": {"seed": 0, "shards": shards, "shard_kib": shard_kib},
        "train": {"lr": 0.05, "steps": steps},
    }))
    for name, source in SCRIPTS.items():
        (repo / name).write_text(textwrap.dedent(source).lstrip())
    run(["dvc", "repro", "-q"], repo)
    commit(repo, "pipeline")
    return repo


def write_jsonl(path: Path, texts, labels) -> None:
    path.write_text("".join(json.dumps({"text": t, "label": l}) + "\n" for t, l in zip(texts, labels)))


def copy_pipeline(work: Path, *folders: str) -> None:
    """routelet's dvc.yaml, params.yaml, stages/ and src/ (and `folders`) into `work`."""
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, work / name)
    (work / "report").mkdir()
    shutil.copy(ROOT / "report" / "baselines.json", work / "report")  # scored on another holdout: ignored
    for folder in ("stages", "src", *folders):
        shutil.copytree(ROOT / folder, work / folder, ignore=shutil.ignore_patterns("__pycache__"))


def routelet_workspace(work: Path, train_per_label: int, holdout_per_label: int, guard: dict[str, str]) -> dict:
    """routelet's own pipeline (dvc.yaml, params.yaml, stages/, src/) copied into `work`, with a tiny
    keyword dataset in data/tiny (its test.jsonl links to evals/holdout.jsonl) and the guard set
    evals/guard_short.jsonl (`guard`: text -> label). Returns params.yaml pointed at the dataset, for
    the caller to adjust and write back with write_params."""
    copy_pipeline(work)
    data = work / "data" / "tiny"
    data.mkdir(parents=True)
    write_jsonl(data / "train.jsonl", *synthetic_dataset(n_per_label=train_per_label, seed=0))
    (work / "evals").mkdir()
    write_jsonl(work / "evals" / "holdout.jsonl", *synthetic_dataset(n_per_label=holdout_per_label, seed=1))
    write_jsonl(work / "evals" / "guard_short.jsonl", list(guard), list(guard.values()))
    (data / "test.jsonl").symlink_to(Path("..", "..", "evals", "holdout.jsonl"))
    (data / "taxonomy.yaml").write_text(yaml.safe_dump({"reject": "oos", "routes": ROUTES}))
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["data"]["dir"] = "data/tiny"
    params["promote"]["guards"] = {"evals/guard_short.jsonl": 0.5}
    params["report"]["latency_queries"] = 20
    return params


def write_params(work: Path, params: dict) -> None:
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def stages_run(stdout: str) -> set[str]:
    """The stages a `dvc repro` or `dvc exp run` printed as run."""
    return {line.split("'")[1] for line in stdout.splitlines() if line.startswith("Running stage")}
