"""DVC remotes for real, over the repository's own .dvc/config: every artifact of a small three-stage
pipeline (tests/dvc_project.py) pushed, the cache and outputs wiped, pulled back byte-identical with
nothing left to re-run; once through the default `local` remote and through the `r2` remote pointed
at an S3 server on 127.0.0.1 (moto), set up as the README's Remotes section says.

Also against that server: a push cut midway (connections reset, or the server stopped) fails, and
the next push completes with every stored object intact; wrong or missing credentials and a missing
bucket fail with the message a user gets; the checksum settings R2 needs reach boto3 through DVC.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from dvc_project import commit, env, make_project, run
from s3_server import s3_server  # noqa: F401  (fixture)
from tcp_proxy import CuttableProxy

ROOT = Path(__file__).resolve().parents[1]
CACHED_OUTS = ("data/shards", "model", "report/details.json")  # the pipeline's pushed outputs
# What the README tells R2 users to set: boto3 >= 1.36 adds CRC32 checksums that R2 rejects.
R2_CHECKSUMS = {"AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
                "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required"}
CHECKSUM_HEADERS = (b"x-amz-checksum-", b"x-amz-sdk-checksum-algorithm", b"aws-chunked")


@pytest.fixture
def bucket(s3_server):
    """The server, emptied (moto keeps one store per process, shared by every server in it), with
    the bucket the committed r2 remote names."""
    urllib.request.urlopen(urllib.request.Request(f"{s3_server.url}/moto-api/reset", method="POST"))
    s3_server.client().create_bucket(Bucket="routelet")
    return s3_server


def project_on_r2(path: Path, endpoint: str, **sizes) -> Path:
    """The tiny pipeline, reproduced, with this repository's .dvc/config and the r2 remote's
    endpoint and credentials in .dvc/config.local, r2 the default for this clone only."""
    repo = make_project(path, **sizes)
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    commit(repo, "the repository's remotes")
    configure_r2(repo, endpoint)
    return repo


def configure_r2(repo: Path, endpoint: str, key_id: str | None = "testing", secret: str | None = "testing") -> None:
    """What the README's commands write (the round-trip test runs the commands themselves), as a file:
    four `dvc` processes cost seconds each on a loaded machine."""
    keys = f"    access_key_id = {key_id}\n    secret_access_key = {secret}\n" if key_id else ""
    (repo / ".dvc" / "config.local").write_text(
        f"[core]\n    remote = r2\n['remote \"r2\"']\n    endpointurl = {endpoint}\n{keys}")


def configure_r2_as_the_readme_says(repo: Path, endpoint: str) -> None:
    for option, value in (("endpointurl", endpoint), ("access_key_id", "testing"), ("secret_access_key", "testing")):
        run(["dvc", "remote", "modify", "--local", "r2", option, value], repo)
    run(["dvc", "remote", "default", "--local", "r2"], repo)


def digests(repo: Path) -> dict[str, str]:
    files = []
    for out in CACHED_OUTS:
        path = repo / out
        files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] * path.exists()
    return {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def wipe_cache_and_outputs(repo: Path) -> None:
    shutil.rmtree(repo / ".dvc" / "cache")
    for out in CACHED_OUTS:
        path = repo / out
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def stored_objects(server) -> dict[str, bytes]:
    client, objects = server.client(), {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="routelet"):
        for obj in page.get("Contents", []):
            objects[obj["Key"]] = client.get_object(Bucket="routelet", Key=obj["Key"])["Body"].read()
    return objects


def assert_every_object_matches_its_name(server) -> int:
    """DVC stores content under its md5 (dvc/files/md5/ab/cdef..., .dir for a folder's listing):
    a truncated or mixed-up object shows as a name its bytes do not hash to."""
    objects = stored_objects(server)
    for key, body in objects.items():
        *_, prefix, rest = key.split("/")
        assert hashlib.md5(body).hexdigest() == prefix + rest.removesuffix(".dir"), f"corrupt object {key}"
    return len(objects)


def fresh_clone(origin: Path, tmp_path: Path, endpoint: str, configure=configure_r2) -> Path:
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(origin), str(clone)], tmp_path)
    configure(clone, endpoint)  # config.local is not in git: each clone sets it up
    return clone


@pytest.mark.slow
def test_default_remote_is_a_local_folder_and_round_trips(tmp_path):
    origin = make_project(tmp_path / "origin")
    shutil.copy(ROOT / ".dvc" / "config", origin / ".dvc" / "config")
    commit(origin, "the repository's remotes")
    assert run(["dvc", "config", "core.remote"], origin).stdout.strip() == "local"
    run(["dvc", "remote", "modify", "--local", "local", "url", str(tmp_path / "store")], origin)
    run(["dvc", "push"], origin)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(origin), str(clone)], tmp_path)
    run(["dvc", "remote", "modify", "--local", "local", "url", str(tmp_path / "store")], clone)
    run(["dvc", "pull"], clone)
    assert digests(clone) == digests(origin)


@pytest.mark.slow
def test_every_artifact_round_trips_through_r2_and_nothing_reruns(tmp_path, bucket):
    repo = project_on_r2(tmp_path / "origin", bucket.url)
    before = digests(repo)
    r2 = env(**R2_CHECKSUMS)

    assert "files pushed" in run(["dvc", "push"], repo, environ=r2).stdout
    assert assert_every_object_matches_its_name(bucket) == len(before) + 2  # + the two folder listings
    wipe_cache_and_outputs(repo)
    run(["dvc", "pull"], repo, environ=r2)

    assert digests(repo) == before
    assert run(["dvc", "status"], repo).stdout.strip() == "Data and pipelines are up to date."
    repro = run(["dvc", "repro"], repo).stdout
    assert "Running stage" not in repro and "Data and pipelines are up to date." in repro
    assert "Cache and remote 'r2' are in sync." in run(["dvc", "status", "-c"], repo, environ=r2).stdout

    # A fresh clone gets the shipped artifact without running anything (as `dvc pull data/router`).
    clone = fresh_clone(repo, tmp_path, bucket.url, configure=configure_r2_as_the_readme_says)
    assert run(["dvc", "config", "core.remote"], clone).stdout.strip() == "r2"
    run(["dvc", "pull", "model"], clone, environ=r2)
    model = {str(p.relative_to(clone)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in (clone / "model").iterdir()}
    assert model == {path: digest for path, digest in before.items() if path.startswith("model/")}
    assert not (clone / "data" / "shards").exists()


@pytest.fixture
def proxy(bucket):
    proxy = CuttableProxy(bucket.port)
    proxy.start()
    yield proxy
    proxy.cut()


@pytest.mark.slow
@pytest.mark.parametrize("where", ["environment", "aws config file", "nowhere (boto3's default)"])
def test_the_checksum_settings_reach_boto3_through_dvc(tmp_path, bucket, proxy, where):
    repo = project_on_r2(tmp_path / "repo", proxy.url)
    if where == "environment":
        environ = env(**R2_CHECKSUMS)
    elif where == "aws config file":  # what ~/.aws/config holds for the default profile
        config = tmp_path / "aws-config"
        config.write_text("[default]\nrequest_checksum_calculation = when_required\n"
                          "response_checksum_validation = when_required\n")
        environ = env(AWS_CONFIG_FILE=str(config))
    else:
        environ = env()
    run(["dvc", "push"], repo, environ=environ)
    sent = proxy.sent().lower()  # the requests as they went out (the bodies are hashes: no text in them)

    uploads = sent.count(b"put /routelet/dvc/files/md5/")
    assert uploads == len(stored_objects(bucket)) == len(digests(repo)) + 2  # + the two folder listings
    if where.startswith("nowhere"):
        # boto3 >= 1.36: a CRC32 checksum on every upload, which R2 has answered with errors
        assert sent.count(b"x-amz-sdk-checksum-algorithm: crc32") == uploads
    else:
        assert not [header for header in CHECKSUM_HEADERS if header in sent]


def start_push(repo: Path, environ: dict) -> subprocess.Popen:
    return subprocess.Popen(["dvc", "push", "-j", "16"], cwd=repo, env=environ, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_objects(server, push: subprocess.Popen, count: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and push.poll() is None:
        stored = len(server.client().list_objects_v2(Bucket="routelet").get("Contents", []))
        if stored >= count:
            return stored
        time.sleep(0.05)
    push.kill()
    pytest.fail(f"the push {'ended' if push.returncode is not None else 'stalled'} before {count} objects were stored")


@pytest.mark.slow
@pytest.mark.parametrize("crash", ["connections reset", "server stopped"])
def test_a_push_cut_midway_fails_then_the_next_push_completes_uncorrupted(tmp_path, bucket, proxy, crash):
    # "connections reset": the proxy resets every open connection mid-request and refuses new ones.
    # "server stopped": moto's stop() refuses new connections, but requests already on a keep-alive
    # connection finish. Either way moto's store lives on (in this process), as a real store's disk.
    endpoint = proxy.url if crash == "connections reset" else bucket.url
    repo = project_on_r2(tmp_path / "origin", endpoint, shards=200, shard_kib=32)
    before = digests(repo)
    # botocore's own retries off: with them, each of the ~150 unsent files waits out its backoff and
    # the failed push took 4.5 minutes here; s3fs still retries each file 5 times (about 2 s).
    environ = env(AWS_MAX_ATTEMPTS="1", **R2_CHECKSUMS)

    push = start_push(repo, environ)
    wait_for_objects(bucket, push, 40)
    proxy.cut() if crash == "connections reset" else bucket.stop()
    out, err = push.communicate(timeout=180)
    assert push.returncode != 0, out
    assert "ERROR: failed to transfer" in err or "ERROR: failed to push" in err or "ERROR: unexpected error" in err
    assert "Could not connect to the endpoint URL" in err, err[-2000:]
    proxy.start() if crash == "connections reset" else bucket.start()

    stored = assert_every_object_matches_its_name(bucket)
    assert stored < len(before) + 2, "the cut came after the push had finished"
    result = run(["dvc", "push"], repo, environ=environ)
    assert f"{len(before) + 2 - stored} files pushed" in result.stdout
    assert "Cache and remote 'r2' are in sync." in run(["dvc", "status", "-c"], repo, environ=environ).stdout
    assert assert_every_object_matches_its_name(bucket) == len(before) + 2
    clone = fresh_clone(repo, tmp_path, endpoint)
    run(["dvc", "pull"], clone, environ=environ)
    assert digests(clone) == before


@pytest.mark.slow
def test_a_corrupted_object_on_the_remote_is_refused_on_pull_only_with_verify(tmp_path, bucket):
    # With R2's checksums off nothing end to end checks what comes back, unless DVC re-hashes it.
    repo = project_on_r2(tmp_path / "repo", bucket.url)
    run(["dvc", "push"], repo)
    before = digests(repo)
    client = bucket.client()
    key = next(k for k in sorted(stored_objects(bucket)) if not k.endswith(".dir"))
    body = client.get_object(Bucket="routelet", Key=key)["Body"].read()
    client.put_object(Bucket="routelet", Key=key, Body=bytes([body[0] ^ 1]) + body[1:])

    wipe_cache_and_outputs(repo)
    run(["dvc", "pull"], repo)  # verify = false, DVC's default: the bad bytes land in the workspace
    assert len([path for path, digest in digests(repo).items() if digest != before[path]]) == 1

    wipe_cache_and_outputs(repo)
    run(["dvc", "remote", "modify", "--local", "r2", "verify", "true"], repo)
    result = run(["dvc", "pull"], repo, check=False)
    assert result.returncode != 0
    assert "ERROR: failed to pull data from the cloud - Checkout failed for following targets:" in result.stderr
    assert all(before[path] == digest for path, digest in digests(repo).items())  # the rest, intact
    assert not (repo / "data" / "shards").exists()  # the folder holding the bad file: not checked out


@pytest.fixture
def iam_key(bucket, monkeypatch):
    """A real access key of an IAM user allowed s3:*, then moto told to check every signature."""
    import boto3
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    iam = boto3.client("iam", endpoint_url=bucket.url, region_name="us-east-1")
    iam.create_user(UserName="ci")
    iam.put_user_policy(UserName="ci", PolicyName="s3", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="ci")["AccessKey"]
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    monkeypatch.setattr(ActionAuthenticatorMixin, "request_count", 0)
    return key["AccessKeyId"], key["SecretAccessKey"]


@pytest.mark.slow
def test_wrong_credentials_are_refused_and_nothing_is_stored(tmp_path, bucket, iam_key):
    repo = project_on_r2(tmp_path / "repo", bucket.url)
    key_id, secret = iam_key
    environ = env(AWS_MAX_ATTEMPTS="1", **R2_CHECKSUMS)
    for wrong in ((key_id, "not-the-secret"), ("AKIAUNKNOWNKEY000000", secret)):
        configure_r2(repo, bucket.url, *wrong)
        result = run(["dvc", "push"], repo, check=False, environ=environ)
        # All a user sees: the HEAD request's 403 carries no body, so no word about the key or the
        # signature. The README's Remotes section says what to check.
        assert result.returncode != 0
        assert ("ERROR: unexpected error - Forbidden: An error occurred (403) when calling the HeadObject "
                "operation: Forbidden") in result.stderr
    assert stored_objects_with(bucket, iam_key) == 0
    configure_r2(repo, bucket.url, key_id, secret)
    assert "13 files pushed" in run(["dvc", "push"], repo, environ=environ).stdout


def stored_objects_with(server, key) -> int:
    import boto3

    client = boto3.client("s3", endpoint_url=server.url, region_name="us-east-1",
                          aws_access_key_id=key[0], aws_secret_access_key=key[1])
    return client.list_objects_v2(Bucket="routelet")["KeyCount"]


@pytest.mark.slow
def test_missing_credentials_say_so(tmp_path, bucket):
    repo = project_on_r2(tmp_path / "repo", bucket.url)
    configure_r2(repo, bucket.url, key_id=None, secret=None)
    environ = {k: v for k, v in env().items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    environ |= {"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none")}
    result = run(["dvc", "push"], repo, check=False, environ=environ)
    assert result.returncode != 0
    assert "ERROR: unexpected error - Unable to locate credentials" in result.stderr


@pytest.mark.slow
def test_a_missing_bucket_is_named(tmp_path, bucket):
    repo = project_on_r2(tmp_path / "repo", bucket.url)
    run(["dvc", "remote", "modify", "--local", "r2", "url", "s3://no-such-bucket/dvc"], repo)
    result = run(["dvc", "push"], repo, check=False, environ=env(**R2_CHECKSUMS))
    assert result.returncode != 0
    assert "The specified bucket does not exist" in result.stderr and "NoSuchBucket" in result.stderr
    assert stored_objects(bucket) == {}


def test_the_served_router_and_every_trained_artifact_are_pushed_outputs():
    """`dvc pull data/router` on a fresh clone gets the served router: it is a cached output of the
    real dvc.yaml (cache: false outputs are in git instead and never pushed)."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        outs = {str(out.def_path): (stage.addressing, out.use_cache) for stage in repo.index.stages
                for out in stage.outs}
    assert outs["data/router"] == ("export_onnx", True)
    for path in ("data/prepared", "data/models/tfidf", "data/models/setfit"):
        assert outs[path][1], f"{path} is not pushed"
