"""DVC remotes for real: push, then pull into a fresh clone, over the repository's own config;
once through a local folder (the default remote) and once through an S3 server (moto) on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from s3_server import s3_server  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(args, cwd, env=None):
    env = (env or os.environ) | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{args}:\n{result.stdout}\n{result.stderr}"
    return result


def project_with_tracked_data(tmp_path: Path) -> Path:
    origin = tmp_path / "origin"
    (origin / ".dvc").mkdir(parents=True)
    run(["git", "init", "-q"], origin)
    run(["dvc", "init", "-q", "--force"], origin)
    shutil.copy(ROOT / ".dvc" / "config", origin / ".dvc" / "config")
    (origin / "data").mkdir()
    (origin / "data" / "pool.jsonl").write_text('{"text": "book a flight", "label": "travel"}\n')
    run(["dvc", "add", "data/pool.jsonl"], origin)
    run(["git", "add", "-A"], origin)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "data"], origin)
    return origin


def push_then_pull_in_clone(origin: Path, remote: str, tmp_path: Path, env=None, configure=()) -> Path:
    for args in configure:
        run(["dvc", "remote", "modify", "--local", remote, *args], origin)
    run(["dvc", "push", "-r", remote], origin, env)
    clone = tmp_path / f"clone-{remote}"
    run(["git", "clone", "-q", str(origin), str(clone)], tmp_path)
    shutil.copy(origin / ".dvc" / "config.local", clone / ".dvc" / "config.local")
    run(["dvc", "pull", "-r", remote], clone, env)
    return clone / "data" / "pool.jsonl"


def test_default_remote_is_a_local_folder_and_round_trips(tmp_path):
    origin = project_with_tracked_data(tmp_path)
    assert "local" in run(["dvc", "config", "core.remote"], origin).stdout
    pulled = push_then_pull_in_clone(origin, "local", tmp_path, configure=[("url", str(tmp_path / "store"))])
    assert pulled.read_text() == (origin / "data" / "pool.jsonl").read_text()


def test_r2_remote_round_trips_through_an_s3_server(tmp_path, s3_server):
    import boto3

    boto3.client("s3", endpoint_url=s3_server.url, region_name="us-east-1").create_bucket(Bucket="routelet")
    origin = project_with_tracked_data(tmp_path)
    # The committed r2 remote, with its endpoint and credentials put where the README says: config.local.
    pulled = push_then_pull_in_clone(
        origin, "r2", tmp_path, env=dict(os.environ),
        configure=[("endpointurl", s3_server.url), ("access_key_id", "testing"), ("secret_access_key", "testing"),
                   ("region", "us-east-1")],
    )
    assert pulled.read_text() == (origin / "data" / "pool.jsonl").read_text()
    keys = boto3.client("s3", endpoint_url=s3_server.url, region_name="us-east-1").list_objects_v2(Bucket="routelet")
    assert any(obj["Key"].startswith("dvc/") for obj in keys.get("Contents", []))
