"""SampleLog for real: files in a folder and objects in moto's S3 server on 127.0.0.1; rotation by
size and by age; many writer threads; a writer killed with SIGKILL; a store that goes down and
comes back; pull_samples reading it all back."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from routelet.data.samples import pull
from routelet.serving.sample_log import SampleLog, StorageError, sample_record
from s3_server import s3_server  # noqa: F401  (fixture)
from test_samples import BucketInbox, enforced_credentials

DECISION = {"route": "weather", "target": "weather-api", "confidence": 0.91, "abstain": False,
            "model_version": "tfidf-1234", "top_k": [{"route": "weather", "p": 0.91}]}


def batches(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.jsonl") if not p.name.startswith("."))


def lines(folder: Path) -> list[dict]:
    return [json.loads(line) for path in batches(folder) for line in path.read_text().splitlines()]


def test_a_record_is_a_redacted_row_with_its_decision_and_optional_trusted_label():
    record = sample_record("mail me at bob@example.com", DECISION, when="2026-12-01T10:00:00.000Z")
    assert record == {"text": "mail me at <email>", "meta": {
        "route": "weather", "target": "weather-api", "confidence": 0.91, "abstain": False,
        "model_version": "tfidf-1234", "time": "2026-12-01T10:00:00.000Z"}}
    labeled = sample_record("rain?", label="weather", label_source="anthropic:claude-sonnet-4-5")
    assert labeled["label"] == "weather" and labeled["meta"]["label_source"] == "anthropic:claude-sonnet-4-5"
    assert labeled["meta"]["time"].endswith("Z")
    with pytest.raises(ValueError, match="label and label_source go together"):
        sample_record("rain?", label="weather")


def test_batches_rotate_by_size_and_pull_reads_them_back(tmp_path):
    log = SampleLog(tmp_path / "log", max_bytes=1000)
    # A hand-built record is redacted too: the log never stores a secret, whoever called it.
    log.write([{"text": f"call 555 {i:03d} pin is 48x1", "meta": {"time": "2026-12-01T10:00:00Z"}}
               for i in range(100)])
    log.write(sample_record(f"hello {i}", DECISION) for i in range(20))
    log.close()
    files = batches(tmp_path / "log")
    assert len(files) > 5 and all(p.stat().st_size < 1000 + 200 for p in files)
    records = lines(tmp_path / "log")
    assert len(records) == 120 and records[0]["text"] == "call 555 000 pin is <secret>"
    assert log.written == 120 and log.dropped == 0
    summary = pull(str(tmp_path / "log"), tmp_path / "samples")
    assert (summary.new_rows, summary.new_quarantined) == (120, 0)


def test_a_quiet_log_still_writes_within_max_seconds(tmp_path):
    log = SampleLog(tmp_path / "log", max_seconds=0.2)
    log.write([sample_record("only one", DECISION)])
    deadline = time.monotonic() + 5
    while not batches(tmp_path / "log") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [r["text"] for r in lines(tmp_path / "log")] == ["only one"]
    log.close()


def test_many_writer_threads_lose_and_duplicate_nothing(tmp_path):
    log = SampleLog(tmp_path / "log", max_bytes=4000, max_seconds=0.05)

    def worker(n):
        for i in range(300):
            log.write([sample_record(f"thread {n} request {i}", DECISION)])

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert log.flush(timeout=10)
    log.close()
    texts = [r["text"] for r in lines(tmp_path / "log")]
    assert len(texts) == len(set(texts)) == 2400
    with pytest.raises(RuntimeError, match="is closed"):
        log.write([sample_record("late", DECISION)])


def test_bad_records_are_refused_at_the_call(tmp_path):
    log = SampleLog(tmp_path / "log")
    with pytest.raises(TypeError, match="a dict with a 'text' string"):
        log.write(["just a string"])
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        log.write([{"text": "x", "meta": {"confidence": float("nan")}}])
    log.close()
    assert log.written == 0 and batches(tmp_path / "log") == []


WRITER = """
import sys
from routelet.serving.sample_log import SampleLog, sample_record
log = SampleLog(sys.argv[1], max_bytes=600, max_seconds=0.01)
i = 0
while True:
    log.write([sample_record(f"request {i} " + "pad " * (i % 40), {"route": "weather", "confidence": 0.5})])
    i += 1
"""


def test_a_writer_killed_with_sigkill_leaves_only_whole_files(tmp_path):
    folder = tmp_path / "log"
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(folder)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while len(batches(folder)) < 40 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    files = batches(folder)
    assert len(files) >= 40
    for path in files:
        content = path.read_bytes()
        assert content.endswith(b"\n"), path
        assert all(json.loads(line)["text"].startswith("request ") for line in content.splitlines())
    summary = pull(str(folder), tmp_path / "samples")
    assert summary.new_quarantined == 0
    assert summary.new_rows == sum(len(p.read_bytes().splitlines()) for p in files)


def test_an_interpreter_exiting_without_close_still_writes_the_buffer(tmp_path):
    code = ("import sys; from routelet.serving.sample_log import SampleLog, sample_record; "
            "SampleLog(sys.argv[1], max_seconds=600).write([sample_record('last words', None)])")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "log")], check=True, timeout=60)
    assert [r["text"] for r in lines(tmp_path / "log")] == ["last words"]


def test_s3_batches_are_single_puts_and_pull_reads_them_back(s3_server, tmp_path):
    inbox = BucketInbox(s3_server)
    with SampleLog(inbox.url, max_bytes=500, **inbox.options) as log:
        log.write(sample_record(f"s3 request {i}", DECISION) for i in range(50))
    keys = [o["Key"] for o in inbox.client.list_objects_v2(Bucket=inbox.bucket)["Contents"]]
    assert len(keys) == log.batches > 1 and all(k.startswith("logs/") and k.endswith(".jsonl") for k in keys)
    summary = pull(inbox.url, tmp_path / "samples", **inbox.options)
    assert (summary.new_rows, summary.new_quarantined) == (50, 0)


def test_s3_down_then_back_keeps_batches_and_bounds_memory(s3_server, tmp_path):
    inbox = BucketInbox(s3_server)
    log = SampleLog(inbox.url, max_bytes=200, max_pending_bytes=2000, **inbox.options)
    s3_server.stop()
    log.write(sample_record(f"while down {i}", DECISION) for i in range(3))
    assert not log.flush(timeout=1.0)  # waiting, not lost
    s3_server.start()
    assert log.flush(timeout=20)
    assert log.written == 3 and log.dropped == 0
    s3_server.stop()
    for i in range(40):  # far more than max_pending_bytes while the store is down
        log.write([sample_record(f"flood {i} " + "x" * 150, DECISION)])
    s3_server.start()
    assert log.flush(timeout=30)
    log.close()
    assert log.dropped > 0 and log.written + log.dropped == 43
    summary = pull(inbox.url, tmp_path / "samples", **inbox.options)
    assert summary.new_rows == log.written


def test_s3_destination_problems_fail_at_start(s3_server, monkeypatch):
    inbox = BucketInbox(s3_server)
    with pytest.raises(StorageError, match="bucket does not exist"):
        SampleLog("s3://no-such-bucket/logs", endpoint_url=s3_server.url)
    with enforced_credentials(s3_server):
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
        with pytest.raises(StorageError, match="check AWS_ACCESS_KEY_ID"):
            SampleLog(inbox.url, **inbox.options)
