"""pull_samples for real: a local folder and moto's S3 server on 127.0.0.1, the same tests for both;
a pull killed with SIGKILL; hostile objects; credential errors; the stage module."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from routelet.data import samples
from routelet.data.sample_sources import open_source
from routelet.data.samples import Limits, pull
from routelet.serving.sample_log import StorageError, sample_record
from s3_server import CREDENTIALS, free_port, s3_server  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]
SECRET = "sk-ant-api03-" + "Zx9" * 12  # a key shape redact knows


def record(i: int, **label) -> dict:
    decision = {"route": "weather", "target": "weather-api", "confidence": 0.5 + (i % 50) / 100,
                "abstain": False, "model_version": "tfidf-1234", "top_k": []}
    return sample_record(f"request number {i}", decision, when="2026-12-01T10:00:00.000Z", **label)


def jsonl(records) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


class FolderInbox:
    def __init__(self, root: Path):
        self.root, self.url, self.options = root, str(root), {}

    def put(self, name: str, content: bytes) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


class BucketInbox:
    def __init__(self, server):
        # moto keeps one store per process, across server restarts: a fresh bucket per test.
        self.bucket = f"samples-{uuid.uuid4().hex[:12]}"
        self.client = server.client()
        self.client.create_bucket(Bucket=self.bucket)
        self.url, self.options = f"s3://{self.bucket}/logs", {"endpoint_url": server.url}

    def put(self, name: str, content: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=f"logs/{name}", Body=content)


@pytest.fixture(params=["folder", "s3"])
def inbox(request, tmp_path):
    if request.param == "folder":
        return FolderInbox(tmp_path / "inbox")
    return BucketInbox(request.getfixturevalue("s3_server"))


def snapshot(folder: Path) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def pulled(out: Path, name: str = "pulled.jsonl") -> list[dict]:
    return [json.loads(line) for line in (out / name).read_text().splitlines()]


def quarantined(out: Path) -> list[dict]:
    return pulled(out, "quarantine.jsonl")


def test_first_pull_then_a_second_pull_changes_no_byte(inbox, tmp_path):
    inbox.put("2026-12-01/b.jsonl", jsonl(record(i) for i in range(5, 8)))
    inbox.put("2026-12-01/a.jsonl", jsonl([record(0), record(1, label="weather", label_source="anthropic:claude")]))
    out = tmp_path / "samples"
    first = pull(inbox.url, out, **inbox.options)
    assert (first.new_objects, first.new_rows, first.new_quarantined) == (2, 5, 0)
    assert first.totals == {"objects": 2, "rows": 5, "labeled": 1, "quarantined": 0}
    rows = pulled(out)
    assert [r["text"] for r in rows] == [f"request number {i}" for i in (0, 1, 5, 6, 7)]  # key order
    assert rows[1]["label"] == "weather" and rows[1]["meta"]["label_source"] == "anthropic:claude"
    assert rows[0]["meta"] == {"route": "weather", "target": "weather-api", "confidence": 0.5, "abstain": False,
                               "model_version": "tfidf-1234", "time": "2026-12-01T10:00:00.000Z",
                               "pulled": {"file": f"{inbox.url}/2026-12-01/a.jsonl", "version": rows[0]["meta"]
                                          ["pulled"]["version"], "line": 1}}
    before = snapshot(out)
    second = pull(inbox.url, out, **inbox.options)
    assert (second.new_objects, second.new_rows, second.notes) == (0, 0, [])
    assert snapshot(out) == before  # bytes and modification times


def test_new_objects_are_appended_and_a_changed_one_is_taken_again(inbox, tmp_path):
    out = tmp_path / "samples"
    inbox.put("m.jsonl", jsonl([record(1)]))
    pull(inbox.url, out, **inbox.options)
    before = (out / "pulled.jsonl").read_bytes()
    inbox.put("a.jsonl", jsonl([record(2)]))  # sorts before the one already taken
    inbox.put("z.jsonl", jsonl([record(3)]))
    inbox.put("m.jsonl", jsonl([record(1), record(4)]))  # same key, new content: a new version
    summary = pull(inbox.url, out, **inbox.options)
    assert (summary.new_objects, summary.changed_objects, summary.new_rows) == (2, 1, 4)
    assert (out / "pulled.jsonl").read_bytes().startswith(before)
    rows = pulled(out)
    assert [r["text"][-1] for r in rows] == ["1", "2", "1", "4", "3"]
    versions = {r["meta"]["pulled"]["version"] for r in rows if r["meta"]["pulled"]["file"].endswith("/m.jsonl")}
    assert len(versions) == 2  # told apart by version; ingest deduplicates the texts
    assert summary.totals == {"objects": 3, "rows": 5, "labeled": 0, "quarantined": 0}  # rows: every version


def test_an_object_changed_or_deleted_after_the_listing_is_left_for_the_next_pull(inbox):
    inbox.put("a.jsonl", jsonl([record(1)]))
    [listed] = open_source(inbox.url, **inbox.options).objects()
    inbox.put("a.jsonl", jsonl([record(2)]))
    assert listed.load() is None  # pinned to the listed version (If-Match on S3)
    [relisted] = open_source(inbox.url, **inbox.options).objects()
    assert relisted.version != listed.version and b"request number 2" in relisted.load()


HOSTILE = [
    b'\xef\xbb\xbf{"text": "bom first line"}\r',                                   # 1 kept: BOM, CRLF
    b'{"text": "caf\xe9"}',                                                        # 2 invalid UTF-8
    b'{"text": "cut off", "meta": {',                                              # 3 malformed JSON
    b'["a", "list"]',                                                              # 4 not an object
    b'{"text": "' + b"x" * 300 + b'"}',                                            # 5 over max_chars
    b'{"text": "' + b"y" * 2000 + b'"}',                                           # 6 over max_line_bytes
    b'{"text": "free label", "label": "weather"}',                                 # 7 label without source
    b'{"text": "extra", "meta": {"user_email": "a@b.co"}}',                        # 8 unknown meta field
    b'{"text": "nan", "meta": {"confidence": NaN}}',                               # 9 NaN
    b'{"text": "str conf", "meta": {"confidence": "0.9"}}',                        # 10 strict types
    b'{"text": "naive", "meta": {"time": "2026-12-01T10:00:00"}}',                 # 11 no timezone
    b'{"text": "   "}',                                                            # 12 empty text
    b'{"text": "leak ' + SECRET.encode() + b'", "meta": "not a dict"}',            # 13 secret in a bad line
    b'',                                                                           # 14 blank: skipped
    b'{"text": "my key is ' + SECRET.encode() + b'", "id": 7}',                    # 15 kept, redacted
    b'{"text": "route", "meta": {"route": "\\udc00"}}',                         # 16 lone surrogate
    b'{"text": "key", "\\ud800": 1}',                                            # 17 surrogate field name
    b'{"text": "labeled", "label": "weather", "meta": {"label_source": "app"}}',   # 18 kept, no newline
]


def test_hostile_objects_are_quarantined_with_file_line_and_reason(inbox, tmp_path):
    inbox.put("gz.jsonl.gz", gzip.compress(jsonl([record(1)])))
    inbox.put("utf16.jsonl", '{"text": "hi"}\n'.encode("utf-16"))
    inbox.put("binary.bin", bytes(range(256)) * 4)
    inbox.put("mixed.jsonl", b"\n".join(HOSTILE))
    inbox.put("huge.jsonl", jsonl(record(i) for i in range(200)))
    out = tmp_path / "samples"
    summary = pull(inbox.url, out, limits=Limits(max_object_bytes=5000, max_line_bytes=1000, max_chars=200),
                   **inbox.options)
    reasons = {(q["file"].rsplit("/", 1)[1], q["line"]): q["reason"] for q in quarantined(out)}
    assert reasons.pop(("gz.jsonl.gz", None)).startswith("gzip-compressed")
    assert reasons.pop(("utf16.jsonl", None)).startswith("UTF-16")
    assert reasons.pop(("binary.bin", None)).startswith("binary content")
    assert "over max_object_bytes=5000: not read; raise the limit" in reasons.pop(("huge.jsonl", None))
    mixed = {line: reason for (_, line), reason in reasons.items()}
    assert sorted(mixed) == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 16, 17]
    assert mixed[2].startswith("invalid UTF-8") and mixed[3].startswith("malformed JSON")
    assert mixed[4] == "expected a JSON object, got list" and "over the limit of 200" in mixed[5]
    assert mixed[6] == "line has 2012 bytes, over max_line_bytes=1000"
    assert mixed[7].startswith("label and meta.label_source go together")
    assert mixed[8] == "meta.user_email: Extra inputs are not permitted" and "NaN" in mixed[9]
    assert mixed[10] == "meta.confidence: Input should be a valid number"
    assert mixed[11].startswith("meta.time: an ISO 8601 time needs a timezone")
    assert mixed[12] == "text: text is empty" and mixed[13].startswith("meta:")
    assert mixed[16] == "lone surrogate U+DC00 in a field: not valid Unicode"
    assert mixed[17].startswith("row: Input should be a valid string")  # rows.py's reason
    rows = pulled(out)
    assert [(r["text"], r["meta"]["pulled"]["line"]) for r in rows] == [
        ("bom first line", 1), ("my key is <key>", 15), ("labeled", 18)]
    assert rows[1]["id"] == 7 and rows[2]["meta"] == {"label_source": "app", "pulled": rows[2]["meta"]["pulled"]}
    assert summary.totals == {"objects": 5, "rows": 3, "labeled": 1, "quarantined": 18}
    everything = b"".join(p.read_bytes() for p in out.iterdir())
    assert SECRET.encode() not in everything and b"a@b.co" not in everything
    assert all(len(q["raw"]) <= samples.RAW_CHARS for q in quarantined(out))
    assert pull(inbox.url, out, limits=Limits(5000, 1000, 200), **inbox.options).new_objects == 0
    retaken = pull(inbox.url, out, limits=Limits(1 << 20, 1000, 200), **inbox.options)  # the limit raised
    assert (retaken.changed_objects, retaken.new_rows) == (1, 200)


def _kill_mid_pull(inbox, out: Path, objects: int) -> None:
    code = ("import sys; from routelet.data.samples import pull; "
            "pull(sys.argv[1], sys.argv[2], endpoint_url=sys.argv[3] or None, commit_seconds=0)")
    args = [sys.executable, "-c", code, inbox.url, str(out), inbox.options.get("endpoint_url", "")]
    process = subprocess.Popen(args, stderr=subprocess.PIPE)
    manifest = out / "manifest.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(OSError, ValueError):
            if len(json.loads(manifest.read_text())["objects"]) >= objects // 4:
                break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    taken = len(json.loads(manifest.read_text())["objects"])
    assert 0 < taken < objects, f"the pull was not interrupted mid-way ({taken} of {objects} objects)"


def test_a_pull_killed_mid_way_then_rerun_gives_the_full_set_once(inbox, tmp_path):
    objects = 240
    for n in range(objects):
        rows = [record(n * 10 + i) for i in range(10)]
        inbox.put(f"2026-12-01/{n:04d}.jsonl", jsonl(rows) + (b"not json\n" if n % 7 == 0 else b""))
    out, clean = tmp_path / "killed", tmp_path / "clean"
    _kill_mid_pull(inbox, out, objects)
    pull(inbox.url, out, **inbox.options)
    pull(inbox.url, clean, **inbox.options)
    for name in ("pulled.jsonl", "quarantine.jsonl", "manifest.json"):
        assert (out / name).read_bytes() == (clean / name).read_bytes(), name
    origins = [(r["meta"]["pulled"]["file"], r["meta"]["pulled"]["line"]) for r in pulled(out)]
    assert len(origins) == len(set(origins)) == objects * 10
    assert len(quarantined(out)) == len(range(0, objects, 7))


def test_an_uncommitted_tail_is_cut_and_taken_again(inbox, tmp_path, monkeypatch):
    for n in range(3):
        inbox.put(f"{n}.jsonl", jsonl([record(n), {"text": ""}]))
    out, clean = tmp_path / "crashed", tmp_path / "clean"
    pull(inbox.url, out, **inbox.options)
    inbox.put("3.jsonl", jsonl([record(3), record(4)]) + b"oops\n")

    def killed_before_rename(*args):
        raise KeyboardInterrupt  # the state a SIGKILL leaves between fsync and rename

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(samples.os, "replace", killed_before_rename)
        pull(inbox.url, out, **inbox.options)
    committed = json.loads((out / "manifest.json").read_text())["sizes"]
    assert (out / "pulled.jsonl").stat().st_size > committed["pulled.jsonl"]  # rows written, not committed
    summary = pull(inbox.url, out, **inbox.options)
    assert summary.new_objects == 1 and len(summary.notes) == 2 and "dropped" in summary.notes[0]
    pull(inbox.url, clean, **inbox.options)
    for name in ("pulled.jsonl", "quarantine.jsonl", "manifest.json"):
        assert (out / name).read_bytes() == (clean / name).read_bytes(), name


def test_damaged_outputs_give_a_clear_error_and_change_nothing(tmp_path):
    inbox = FolderInbox(tmp_path / "inbox")
    inbox.put("a.jsonl", jsonl([record(1), record(2)]))
    out = tmp_path / "samples"
    pull(inbox.url, out)
    pulled_file = out / "pulled.jsonl"
    pulled_file.write_bytes(pulled_file.read_bytes()[:-5])
    with pytest.raises(StorageError, match=r"pulled.jsonl has \d+ bytes but manifest.json committed .*dvc checkout"):
        pull(inbox.url, out)
    (out / "manifest.json").unlink()
    with pytest.raises(StorageError, match="rows but no manifest.json: restore it"):
        pull(inbox.url, out)
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(StorageError, match="manifest.json is not valid JSON"):
        pull(inbox.url, out)


def test_a_file_shared_with_the_dvc_cache_is_never_written_through(tmp_path):
    inbox = FolderInbox(tmp_path / "inbox")
    inbox.put("a.jsonl", jsonl([record(1)]))
    out = tmp_path / "samples"
    pull(inbox.url, out)
    cached = tmp_path / "cache-object"
    os.link(out / "pulled.jsonl", cached)  # what DVC's hardlink cache type leaves
    before = cached.read_bytes()
    inbox.put("b.jsonl", jsonl([record(2)]))
    pull(inbox.url, out)
    assert cached.read_bytes() == before and len(pulled(out)) == 2


def test_folder_source_missing_empty_hidden_and_not_a_folder(tmp_path):
    out = tmp_path / "samples"
    summary = pull(str(tmp_path / "nowhere"), out)
    assert summary.notes == [f"source folder {tmp_path / 'nowhere'} does not exist: nothing to pull"]
    assert [(p.name, p.stat().st_size) for p in sorted(out.iterdir()) if p.suffix == ".jsonl"] == [
        ("pulled.jsonl", 0), ("quarantine.jsonl", 0)]
    inbox = FolderInbox(tmp_path / "inbox")
    inbox.put(".tmp-batch.jsonl", b'{"text": "torn')  # SampleLog's temp file of a killed server
    inbox.put(".git/config", b"[core]")
    assert pull(inbox.url, out).new_objects == 0
    (inbox.root / os.fsdecode(b"caf\xe9.jsonl")).write_bytes(jsonl([record(1)]))  # a Latin-1 file name
    assert pull(inbox.url, out).new_rows == 1
    assert pulled(out)[0]["meta"]["pulled"]["file"] == f"{inbox.url}/caf\\xe9.jsonl"
    with pytest.raises(StorageError, match="is a file: give a folder or an s3:// URL"):
        pull(str(tmp_path / "inbox" / ".git" / "config"), out)


# --------------------------------------------------------------------------------------------
# S3 errors a user can act on


def _moto_auth(server, count: str) -> None:
    urllib.request.urlopen(urllib.request.Request(f"{server.url}/moto-api/reset-auth", data=count.encode(),
                                                  headers={"Content-Type": "text/plain"})).read()


@contextlib.contextmanager
def enforced_credentials(server):
    """Make moto check signatures against an IAM user; yields that user's (key id, secret)."""
    import boto3

    iam = boto3.client("iam", endpoint_url=server.url, region_name="us-east-1")
    user = f"puller-{uuid.uuid4().hex[:12]}"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(policy))
    _moto_auth(server, "0")
    try:
        yield key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        _moto_auth(server, "inf")  # a process-wide moto setting: never leak it into other tests


def test_s3_wrong_missing_and_unknown_credentials_are_clear_errors(s3_server, tmp_path, monkeypatch):
    inbox = BucketInbox(s3_server)
    inbox.put("a.jsonl", jsonl([record(1)]))
    out = tmp_path / "samples"
    with enforced_credentials(s3_server) as (key_id, secret):
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        assert pull(inbox.url, out, **inbox.options).new_rows == 1
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong" + secret[5:])
        with pytest.raises(StorageError, match="secret key does not match.*check AWS_SECRET_ACCESS_KEY") as error:
            pull(inbox.url, out, **inbox.options)
        assert secret[5:] not in str(error.value) and s3_server.url in str(error.value)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
        with pytest.raises(StorageError, match="access key id is not known there: check AWS_ACCESS_KEY_ID"):
            pull(inbox.url, out, **inbox.options)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    with pytest.raises(StorageError, match="no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        pull(inbox.url, out, **inbox.options)
    with pytest.raises(StorageError, match="AWS profile 'prod' is not in ~/.aws/config"):
        pull(inbox.url, out, profile="prod", **inbox.options)


def test_s3_missing_bucket_and_unreachable_endpoint_are_clear_errors(s3_server, tmp_path):
    with pytest.raises(StorageError, match=r"s3://no-such-bucket/x \(endpoint http://127.*bucket does not exist"):
        pull("s3://no-such-bucket/x", tmp_path / "out", endpoint_url=s3_server.url)
    with pytest.raises(StorageError, match="is not an s3://bucket"):
        pull("s3:///prefix", tmp_path / "out", endpoint_url=s3_server.url)
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(StorageError, match="cannot reach the endpoint .*check endpoint_url"):
        pull("s3://samples/x", tmp_path / "out", endpoint_url=closed)


@pytest.mark.slow
def test_throughput_of_a_few_thousand_rows_through_s3(s3_server, tmp_path):
    inbox = BucketInbox(s3_server)
    for n in range(40):
        inbox.put(f"{n:03d}.jsonl", jsonl(record(n * 100 + i) for i in range(100)))
    summary = pull(inbox.url, tmp_path / "samples", **inbox.options)
    assert summary.new_rows == 4000 and summary.totals["quarantined"] == 0
    print(f"\npull: {summary.new_rows} rows in {summary.new_objects} objects, {summary.seconds:.2f} s, "
          f"{summary.new_rows / summary.seconds:.0f} rows/s")


# --------------------------------------------------------------------------------------------
# the stage


def test_the_stage_pulls_reports_and_changes_nothing_on_a_rerun(tmp_path, monkeypatch, capsys):
    from routelet import paths
    from stages import pull_samples

    monkeypatch.chdir(tmp_path)
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    params = yaml.safe_load((ROOT / "params.yaml").read_text()) | {"pull_samples": {
        "source": "data/inbox", "endpoint_url": None, "region": None, "profile": None,
        "max_object_bytes": 1 << 20, "max_line_bytes": 1 << 16, "workers": 4}}
    Path("params.yaml").write_text(yaml.safe_dump(params))
    assert pull_samples.main() == 0
    assert "does not exist: nothing to pull" in capsys.readouterr().err
    FolderInbox(Path("data/inbox")).put("a.jsonl", jsonl([record(1), record(2)]) + b"junk\n")
    assert pull_samples.main() == 0
    assert "1 new and 0 changed objects from data/inbox: 2 rows, 1 quarantined" in capsys.readouterr().out
    assert json.loads(Path("report/pull_samples.json").read_text()) == {
        "source": "data/inbox", "objects": 1, "rows": 2, "labeled": 0, "quarantined": 1}
    before = snapshot(Path("data/samples")) | snapshot(Path("report"))
    assert pull_samples.main() == 0
    assert snapshot(Path("data/samples")) | snapshot(Path("report")) == before
    params["pull_samples"]["source"] = "s3://bucket-name/x"
    params["pull_samples"]["endpoint_url"] = f"http://127.0.0.1:{free_port()}"
    Path("params.yaml").write_text(yaml.safe_dump(params))
    assert pull_samples.main() == 2
    assert "pull_samples: error: s3://bucket-name/x (endpoint http" in capsys.readouterr().err
