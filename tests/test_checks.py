import json

import pytest

from routelet.data.checks import (DataParams, check_dataset, check_pool, data_params, drop_rows, over_share,
                                  route_coverage, size_problems, summary)
from routelet.data.dataset import load_dataset
from routelet.data.rows import DataError, Row, Sourced
from test_dataset import folder_with, rows_for, write

CARD, AWS = "4111 1111 1111 1111", "AKIAIOSFODNN7EXAMPLE"


def test_the_rejected_share_is_judged_per_file(tmp_path):
    # 22 bad of 83 train lines must not hide behind 5,500 good holdout lines (0.39 % overall).
    train = rows_for(["a", "b"], 30) + rows_for(["c"], 1) + [{"text": "bad", "label": "nope"}] * 22
    taxonomy = {"routes": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}
    folder = folder_with(tmp_path, train, rows_for(["a", "b"], 2750, start=100), taxonomy)
    dataset = load_dataset(folder)
    assert over_share(dataset, 0.05) == [
        f"{folder / 'train.jsonl'}: 22 of 83 lines rejected (26.51%), over data.max_rejected_share=0.05: fix them "
        "(see data/prepared/quarantine.jsonl) or raise the threshold"]
    assert over_share(dataset, 0.3) == []


def sourced(text, label, where):
    return Sourced(Row(text=text, label=label), "pool.jsonl" if where < 100 else "test.jsonl", where)


def test_leakage_exact_and_after_normalisation_and_conflicts():
    pool = {"train": [sourced("Book a flight", "flight", 1), sourced("book  a FLIGHT", "travel", 2),
                      sourced("fresh text", "a", 3)],
            "calib": [sourced("what is my balance", "balance", 4)]}
    evals = {"test": [sourced("what is my balance", "balance", 101), sourced("FRESH   text", "a", 102)]}
    report = check_pool(pool, evals)
    assert [leak.as_dict() for leak in report.leaks] == [
        {"kind": "normalised", "pool": "pool.jsonl:3", "eval": "test.jsonl:102", "text": "fresh text"},
        {"kind": "exact", "pool": "pool.jsonl:4", "eval": "test.jsonl:101", "text": "what is my balance"}]
    assert [c.as_dict() for c in report.conflicts] == [
        {"text": "book a flight", "labels": ["flight", "travel"], "where": ["pool.jsonl:1", "pool.jsonl:2"]}]
    assert str(report.conflicts[0]) == ("conflict: 'book a flight' has labels ['flight', 'travel'] "
                                        "at pool.jsonl:1, pool.jsonl:2")


def test_findings_show_and_store_texts_redacted():
    secret = f"charge {CARD} with {AWS}"
    pool = {"train": [sourced(secret, "a", 1), sourced(secret, "b", 2)], "calib": [sourced(f"x {CARD}", "a", 3)]}
    report = check_pool(pool, {"test": [sourced(f"x {CARD}", "a", 101)]})
    shown = [str(item) for item in report.leaks + report.conflicts] + [json.dumps(report.as_dict())]
    assert len(report.leaks) == 1 and len(report.conflicts) == 1
    assert all("1111" not in text and AWS not in text and "<card>" in text for text in shown)


def pool_dataset(tmp_path, train, test, taxonomy=None, valid=None):
    folder = folder_with(tmp_path, train, test, taxonomy)
    if valid is not None:
        write(folder / "valid.jsonl", valid)
    return load_dataset(folder)


def test_drop_removes_leaks_from_the_pool_and_every_row_of_a_conflict(tmp_path):
    train = rows_for(["a", "b"], 4) + [{"text": "Shared text", "label": "a"}, {"text": "shared  TEXT", "label": "b"}]
    test = [{"text": "a request number 0", "label": "a"}]
    dataset = pool_dataset(tmp_path, train, test, valid=rows_for(["a", "b"], 1, start=7))
    report = check_pool({"train": dataset.train, "calib": dataset.calib}, dataset.evals)
    dropped = drop_rows(dataset, report, leaks=True, conflicts=True)
    train_file = str(tmp_path / "train.jsonl")
    assert [(d["where"], d["reason"]) for d in dropped] == [
        (f"{train_file}:1", f"leakage (exact): repeats {tmp_path / 'test.jsonl'}:1"),
        (f"{train_file}:9", "conflict: the same text has labels ['a', 'b']"),
        (f"{train_file}:10", "conflict: the same text has labels ['a', 'b']")]
    assert [s.line for s in dataset.train] == [2, 3, 4, 5, 6, 7, 8] and len(dataset.test) == 1


def test_drop_only_what_the_params_say(tmp_path):
    train = rows_for(["a", "b"], 4) + [{"text": "same", "label": "a"}, {"text": "same", "label": "b"}]
    dataset = pool_dataset(tmp_path, train, [{"text": "a request number 0", "label": "a"}],
                           valid=rows_for(["a"], 1, start=7))
    report = check_pool({"train": dataset.train, "calib": dataset.calib}, dataset.evals)
    dropped = drop_rows(dataset, report, leaks=False, conflicts=True)
    assert [d["label"] for d in dropped] == ["a", "b"] and len(dataset.train) == 8


def test_routes_with_no_or_few_training_rows_are_found_and_the_reject_route_may_be_empty(tmp_path):
    taxonomy = {"reject": "oos", "routes": [{"name": "a"}, {"name": "b"}, {"name": "never"}, {"name": "oos"}]}
    dataset = pool_dataset(tmp_path, rows_for(["a"], 9) + rows_for(["b"], 2), rows_for(["a"], 1, start=20),
                           taxonomy, valid=rows_for(["a", "never"], 1, start=30))
    empty, thin = route_coverage(dataset, min_rows=5)
    assert empty == ["never"]  # a row in valid.jsonl does not train it
    assert thin == {"b": 2}


def test_splits_too_small_to_train_or_calibrate_are_named(tmp_path):
    dataset = pool_dataset(tmp_path, [{"text": "one", "label": "a"}], [{"text": "two", "label": "a"}])
    assert size_problems(dataset) == [
        "the train split has rows of 1 route(s) ['a']: a router needs at least two routes with training rows",
        "the calibration split is empty: add valid.jsonl, or at least two rows to some label so "
        "data.valid_fraction can carve one"]


@pytest.mark.parametrize("data, message", [
    ({"dir": "d", "evals": "evals"}, "params.yaml: data.evals: removed: a dataset folder's evaluation sets are its "
                                     "test.jsonl and its evals/ subfolder"),
    ({"dir": "d", "on_conflict": "keep"}, "params.yaml: data.on_conflict: Input should be 'fail' or 'drop'"),
    ({"dir": "d", "valid_fraction": 1.0}, "params.yaml: data.valid_fraction: Input should be less than 1"),
    ({"taxonomy": "t.yaml"}, "params.yaml: data.dir: Field required"),
    ({"dir": "d", "min_rows": 3}, "params.yaml: data.min_rows: unknown key: data takes dir, taxonomy, valid_fraction"),
])
def test_data_params_are_checked_with_one_line_naming_the_key(data, message):
    with pytest.raises(DataError) as error:
        data_params({"data": data})
    assert str(error.value).startswith(message)


def test_data_params_defaults_fail_on_leaks_conflicts_and_empty_routes():
    params = data_params({"data": {"dir": "d"}})
    assert (params.on_leak, params.on_conflict, params.on_empty_route) == ("fail", "fail", "fail")
    with pytest.raises(DataError, match="no `data:` section"):
        data_params({"seed": 0})


def test_check_dataset_reports_counts_but_summarises_in_a_few_figures(tmp_path):
    dataset = pool_dataset(tmp_path, rows_for(["a", "b"], 5) + [{"text": "a request number 0", "label": "b"}],
                           rows_for(["a"], 1, start=20))
    report, details = check_dataset(dataset, DataParams(dir=str(tmp_path), on_conflict="drop"))
    assert report["ok"] and details == []
    assert report["counts"]["train"] == {"a": 3, "b": 4} and report["routes"] == {"a": 3, "b": 4}
    assert summary(report) == {"rows": {"train": 7, "calib": 2, "test": 1}, "rejected": 0, "leaks": 0,
                               "conflicts": 1, "dropped": 2, "routes": 2, "empty_routes": 0, "thin_routes": 2}
