"""The checkdata stage as a user runs it: `python -m stages.checkdata` in a folder with its own
params.yaml and dataset; one line per problem, exit 1 when a check fails, 2 when nothing can be checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ROUTES = ["alarm", "music", "weather"]
CARD, AWS = "4111 1111 1111 1111", "AKIAIOSFODNN7EXAMPLE"


def rows(labels=ROUTES, n=10, start=0):
    return [{"text": f"{label} request number {i}", "label": label}
            for label in labels for i in range(start, start + n)]


def write(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))


def dataset(work, train=None, test=None, routes=ROUTES, name="ds", reject=None):
    folder = work / "data" / name
    write(folder / "train.jsonl", rows() if train is None else train)
    write(folder / "test.jsonl", rows(n=3, start=100) if test is None else test)
    (folder / "taxonomy.yaml").write_text(yaml.safe_dump({"reject": reject, "routes": [{"name": r} for r in routes]}))
    return folder


def checkdata(work, **data):
    (work / "params.yaml").write_text(yaml.safe_dump({"data": {"dir": "data/ds", **data}}))
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "stages.checkdata"], cwd=work, capture_output=True, text=True,
                          env=os.environ | {"PYTHONPATH": path}, timeout=120)


def report(work, name="checkdata.json"):
    return json.loads((work / "report" / name).read_text())


def failed(result, *parts):
    """Exit 1, no traceback, and each part on a `checkdata:` line of stderr."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    for part in parts:
        assert any(line.startswith("checkdata: ") and part in line for line in result.stderr.splitlines()), part


def one_line_error(result, *parts):
    """Exit 2 and the last stderr line says it all; nothing else but rejected lines before it."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    *before, last = result.stderr.splitlines()
    assert last.startswith("checkdata: ") and all(line.startswith("checkdata: rejected ") for line in before)
    for part in parts:
        assert part in last, last


def test_a_clean_dataset_passes_with_small_metrics_and_full_counts(tmp_path):
    dataset(tmp_path)
    result = checkdata(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "{'train': 24, 'calib': 6, 'test': 9}, 0 rejected, 0 leaks, 0 conflicts, 0 dropped" in result.stdout
    assert report(tmp_path, "checkdata_summary.json") == {
        "rows": {"train": 24, "calib": 6, "test": 9}, "rejected": 0, "leaks": 0, "conflicts": 0, "dropped": 0,
        "routes": 3, "empty_routes": 0, "thin_routes": 0}
    full = report(tmp_path)
    assert full["ok"] and full["counts"]["train"] == {"alarm": 8, "music": 8, "weather": 8}
    assert full["evals"] == ["data/ds/test.jsonl"]


def test_a_nul_byte_in_a_text_is_quarantined_not_trained_on(tmp_path):
    dataset(tmp_path, train=rows() + [{"text": "play\u0000 jazz", "label": "music"}])
    result = checkdata(tmp_path)
    failed(result, "rejected data/ds/train.jsonl:31: text: control character U+0000 at character 5",
           "data/ds/train.jsonl: 1 of 31 lines rejected")
    [quarantined] = [json.loads(x) for x in (tmp_path / "data/prepared/quarantine.jsonl").read_text().splitlines()]
    assert quarantined["line"] == 31
    assert "\\u0000" not in (tmp_path / "data/prepared/train.jsonl").read_text()


def test_the_rejected_share_gate_is_per_file(tmp_path):
    train = rows(n=20) + rows(["alarm"], 1, start=50) + [{"text": "x", "label": "nope"}] * 22  # 83 lines
    dataset(tmp_path, train=train, test=rows(n=1834, start=100)[:5500])  # 5,500 good holdout lines
    result = checkdata(tmp_path, max_rejected_share=0.05)
    failed(result, "data/ds/train.jsonl: 22 of 83 lines rejected (26.51%), over data.max_rejected_share=0.05")
    assert report(tmp_path)["files"]["data/ds/test.jsonl"] == {"lines": 5500, "rejected": 0}
    assert checkdata(tmp_path, max_rejected_share=0.3).returncode == 0


def test_many_rejected_lines_are_all_quarantined_but_printed_and_listed_in_part(tmp_path):
    dataset(tmp_path, train=rows() + [{"text": f"x{i}", "label": "nope"} for i in range(250)])
    result = checkdata(tmp_path, max_rejected_share=0.9)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("checkdata: rejected ") == 20
    assert "checkdata: ... and 230 more in data/prepared/quarantine.jsonl" in result.stderr
    full = report(tmp_path)
    assert full["rejected_lines"] == 250 and len(full["rejected"]) == 200
    assert report(tmp_path, "checkdata_summary.json")["rejected"] == 250
    assert len((tmp_path / "data/prepared/quarantine.jsonl").read_text().splitlines()) == 250


def test_an_empty_train_file_fails_here_not_in_sklearn(tmp_path):
    dataset(tmp_path, train=[])
    one_line_error(checkdata(tmp_path),
                   "data/ds/train.jsonl: no rows (the file is empty): a router needs training rows")


def test_a_train_file_with_every_row_rejected_is_quarantined_and_one_line(tmp_path):
    dataset(tmp_path, train=[{"text": "x", "label": "nope"}] * 4)
    one_line_error(checkdata(tmp_path), "data/ds/train.jsonl: no valid rows: all 4 lines rejected (first, line 1:")
    assert len((tmp_path / "data/prepared/quarantine.jsonl").read_text().splitlines()) == 4


def test_a_route_with_no_training_rows_fails_or_warns_by_params(tmp_path):
    dataset(tmp_path, train=rows(["alarm", "music"]) + rows(["weather"], 3), routes=ROUTES + ["timer", "oos"],
            reject="oos")
    never = "1 route(s) with no training rows, which the router can never predict: 'timer'"
    failed(checkdata(tmp_path), never, "or set data.on_empty_route=warn")
    warned = checkdata(tmp_path, on_empty_route="warn")
    assert warned.returncode == 0, warned.stderr
    assert f"checkdata: warning: {never}" in warned.stderr  # the reject route oos may be empty: not named
    assert ("checkdata: warning: 1 route(s) with fewer than data.min_route_rows=5 training rows, so their "
            "figures are noisy: weather (2)") in warned.stderr
    assert report(tmp_path)["empty_routes"] == ["timer"] and report(tmp_path)["thin_routes"] == {"weather": 2}


def test_one_route_with_rows_is_not_a_router(tmp_path):
    dataset(tmp_path, train=rows(["alarm"]), routes=["alarm", "music"])
    failed(checkdata(tmp_path, on_empty_route="warn"), "a router needs at least two routes with training rows")


def missing(name):
    def make(work):
        (dataset(work) / name).unlink()
    return make


def taxonomy_text(text):
    def make(work):
        (dataset(work) / "taxonomy.yaml").write_text(text)
    return make


def utf16_train(work):
    path = dataset(work) / "train.jsonl"
    path.write_bytes(path.read_text().encode("utf-16"))


@pytest.mark.parametrize("make, params, parts", [
    (lambda w: None, {}, ["data/ds: no such dataset folder: set data.dir in params.yaml"]),
    (missing("train.jsonl"), {}, ["data/ds/train.jsonl: missing: a dataset folder needs train.jsonl"]),
    (missing("test.jsonl"), {}, ["data/ds/test.jsonl: missing: a dataset folder needs test.jsonl"]),
    (taxonomy_text("routes: [name: a\n - b: ["), {}, ["data/ds/taxonomy.yaml: not valid YAML"]),
    (taxonomy_text("routes:\n  - {name: alarm, target: 'rm -rf /'}\n"), {},
     ["data/ds/taxonomy.yaml:", "is neither a handler name", "fix the taxonomy file"]),
    (utf16_train, {}, ["data/ds/train.jsonl: the file is UTF-16LE, not UTF-8: convert it, e.g. iconv -f UTF-16LE"]),
    (dataset, {"dir": "data/ds/train.jsonl"}, ["data/ds/train.jsonl: a file, not a folder"]),
    (dataset, {"evals": "evals"}, ["params.yaml: data.evals: removed: a dataset folder's evaluation sets are its "
                                   "test.jsonl and its evals/ subfolder"]),
    (dataset, {"on_leak": "ignore"}, ["params.yaml: data.on_leak: Input should be 'fail' or 'drop'"]),
    (dataset, {"max_rejected_share": "lots"}, ["params.yaml: data.max_rejected_share:"]),
    (dataset, {"on_leaks": "drop"}, ["params.yaml: data.on_leaks: unknown key: data takes dir, taxonomy,"]),
], ids=["no-folder", "no-train", "no-test", "taxonomy-yaml", "taxonomy-target", "utf16", "dir-is-a-file",
        "data.evals-gone", "bad-choice", "bad-number", "unknown-key"])
def test_dataset_level_errors_are_one_line_and_exit_2(tmp_path, make, params, parts):
    make(tmp_path)
    one_line_error(checkdata(tmp_path, **params), *parts)


def test_a_utf8_bom_is_accepted_and_duplicate_keys_are_named(tmp_path):
    folder = dataset(tmp_path, train=rows() + ['{"text": "wake me", "label": "alarm", "label": "music"}'])
    (folder / "train.jsonl").write_bytes(b"\xef\xbb\xbf" + (folder / "train.jsonl").read_bytes())
    failed(checkdata(tmp_path), "rejected data/ds/train.jsonl:31: duplicate key 'label': name each field once",
           "1 of 31 lines rejected")


def project_with_frozen_holdout(work):
    """The repository's layout: evals/holdout.jsonl frozen in git, data/clinc/test.jsonl linking to it."""
    write(work / "evals" / "holdout.jsonl", [{"text": "i need an alarm", "label": "alarm"}] + rows(n=2, start=100))
    clinc = dataset(work, name="clinc", test=[])
    (clinc / "test.jsonl").unlink()
    (clinc / "test.jsonl").symlink_to(Path("..", "..", "evals", "holdout.jsonl"))
    return clinc


def test_leakage_is_checked_against_the_trained_datasets_own_evaluation_sets(tmp_path):
    clinc = project_with_frozen_holdout(tmp_path)
    other = dataset(tmp_path, train=rows() + [{"text": "i need an alarm", "label": "alarm"}], name="other")
    # Another dataset sharing an everyday phrase with CLINC's holdout: not a leak into data it does not use.
    assert checkdata(tmp_path, dir="data/other").returncode == 0
    # The bundled dataset is still checked against the frozen holdout (through its test.jsonl link).
    write(clinc / "train.jsonl", rows() + [{"text": "I need an  alarm", "label": "alarm"}])
    failed(checkdata(tmp_path, dir="data/clinc"),
           "leakage (normalised): data/clinc/train.jsonl:31 repeats data/clinc/test.jsonl:1",
           "1 pool row(s) repeat an evaluation text: remove them or set data.on_leak=drop")
    # A dataset folder's evals/ subfolder adds evaluation sets of its own.
    write(other / "evals" / "regressions.jsonl", [{"text": "i need an alarm"}])
    failed(checkdata(tmp_path, dir="data/other"), "repeats data/other/evals/regressions.jsonl:1")


def test_leaks_and_conflicts_fail_by_default_and_drop_by_params(tmp_path):
    train = rows() + [{"text": "alarm request number 100", "label": "alarm"},
                      {"text": "play it loud", "label": "music"}, {"text": "Play it  loud", "label": "alarm"}]
    dataset(tmp_path, train=train, test=rows(n=3, start=100))
    failed(checkdata(tmp_path), "1 pool row(s) repeat an evaluation text", "1 text(s) have two labels")
    result = checkdata(tmp_path, on_leak="drop", on_conflict="drop")
    assert result.returncode == 0, result.stderr
    dropped = report(tmp_path)["dropped"]
    assert [(d["where"], d["reason"]) for d in dropped] == [
        ("data/ds/train.jsonl:31", "leakage (exact): repeats data/ds/test.jsonl:1"),
        ("data/ds/train.jsonl:32", "conflict: the same text has labels ['alarm', 'music']"),
        ("data/ds/train.jsonl:33", "conflict: the same text has labels ['alarm', 'music']")]
    for d in dropped:
        assert f"checkdata: dropped {d['where']} ({d['reason']}): " in result.stderr
    assert report(tmp_path, "checkdata_summary.json")["dropped"] == 3
    sources = {json.loads(x)["source"] for split in ("train", "calib")
               for x in (tmp_path / f"data/prepared/{split}.jsonl").read_text().splitlines()}
    assert sources.isdisjoint(d["where"] for d in dropped) and len(sources) == 30


@pytest.mark.parametrize("policy", ["fail", "drop"])
def test_secrets_in_findings_never_leave_in_clear(tmp_path, policy):
    secret = f"charge {CARD} with key {AWS}"
    train = rows() + [{"text": secret, "label": "alarm"}, {"text": secret, "label": "music"},  # a conflict
                      {"text": f"leak {CARD} {AWS}", "label": "alarm"},  # a leak
                      {"text": f"rejected {CARD} {AWS}", "label": f"{CARD}"}]  # unknown label, rejected
    dataset(tmp_path, train=train, test=rows(n=3, start=100) + [{"text": f"leak {CARD} {AWS}", "label": "alarm"}])
    result = checkdata(tmp_path, on_leak=policy, on_conflict=policy, max_rejected_share=0.5)
    assert result.returncode == (1 if policy == "fail" else 0), result.stderr
    assert "conflict" in result.stderr + json.dumps(report(tmp_path)) and "<card>" in result.stderr
    written = [p.read_text() for p in (tmp_path / "report").rglob("*") if p.is_file()]
    written += [p.read_text() for p in (tmp_path / "data" / "prepared").rglob("*") if p.is_file()]
    for text in [result.stdout, result.stderr, *written]:
        assert "4111" not in text and AWS not in text
