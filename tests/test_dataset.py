import json
from pathlib import Path

import pytest
import yaml

from routelet.data.checks import check_pool
from routelet.data.dataset import load_dataset, stratified_split
from routelet.data.rows import DataError, Row, Sourced


def write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def rows_for(labels, n, start=0):
    return [{"text": f"{label} request number {i}", "label": label}
            for label in labels for i in range(start, start + n)]


def folder_with(tmp_path, train, test, taxonomy=None):
    write(tmp_path / "train.jsonl", train)
    write(tmp_path / "test.jsonl", test)
    if taxonomy is not None:
        (tmp_path / "taxonomy.yaml").write_text(yaml.safe_dump(taxonomy))
    return tmp_path


def test_folder_without_valid_or_taxonomy_splits_train_by_label(tmp_path):
    write(tmp_path / "train.jsonl", rows_for(["a", "b", "c"], 10))
    write(tmp_path / "test.jsonl", rows_for(["a", "b"], 2, start=50))
    dataset = load_dataset(tmp_path, valid_fraction=0.2, seed=1)
    assert dataset.taxonomy.route_names == ["a", "b", "c"]
    assert dataset.taxonomy_source == "one route per label of train.jsonl"
    assert len(dataset.calib) == 6 and len(dataset.train) == 24
    assert {s.row.label for s in dataset.calib} == {"a", "b", "c"}
    again = load_dataset(tmp_path, valid_fraction=0.2, seed=1)
    assert [s.line for s in again.calib] == [s.line for s in dataset.calib]


def test_unknown_labels_in_any_split_are_rejected_and_counted_per_file(tmp_path):
    write(tmp_path / "train.jsonl", rows_for(["a", "b"], 3))
    write(tmp_path / "valid.jsonl", rows_for(["a"], 1) + [{"text": "x", "label": "zzz"}])
    write(tmp_path / "test.jsonl", rows_for(["b"], 1))
    dataset = load_dataset(tmp_path)
    assert [str(r) for r in dataset.rejected] == [
        f"{tmp_path / 'valid.jsonl'}:2: unknown label 'zzz': not in the taxonomy (add it there or fix the row)"]
    assert {Path(f).name: (c.lines, c.rejected) for f, c in dataset.files.items()} == {
        "train.jsonl": (6, 0), "valid.jsonl": (2, 1), "test.jsonl": (1, 0)}


@pytest.mark.parametrize("train, expected", [
    ([], "train.jsonl: no rows (the file is empty): a router needs training rows"),
    ([{"text": "x", "label": "nope"}] * 3, "train.jsonl: no valid rows: all 3 lines rejected (first, line 1: "
                                           "unknown label 'nope': not in the taxonomy (add it there or fix the row)): "
                                           "a router needs training rows"),
])
def test_a_train_file_with_no_valid_row_is_one_error(tmp_path, train, expected):
    folder = folder_with(tmp_path, train, rows_for(["a"], 1), taxonomy={"routes": [{"name": "a"}, {"name": "b"}]})
    with pytest.raises(DataError) as error:
        load_dataset(folder)
    assert str(error.value) == f"{folder}/{expected}"
    assert len(error.value.rejected) == len(train)  # still quarantined by the stage


def test_an_empty_test_file_is_one_error(tmp_path):
    folder = folder_with(tmp_path, rows_for(["a", "b"], 3), [])
    with pytest.raises(DataError, match="test.jsonl: no rows .*every figure is measured on the holdout"):
        load_dataset(folder)


def dataset_error(folder, **kwargs):
    with pytest.raises(DataError) as error:
        load_dataset(folder, **kwargs)
    assert "\n" not in str(error.value)
    return str(error.value)


def test_folder_level_problems_are_one_line_naming_the_path(tmp_path):
    assert dataset_error(tmp_path / "nope") == (f"{tmp_path / 'nope'}: no such dataset folder: set data.dir in "
                                                "params.yaml to a folder with train.jsonl and test.jsonl")
    (tmp_path / "file").write_text("x")
    assert dataset_error(tmp_path / "file").startswith(f"{tmp_path / 'file'}: a file, not a folder")
    write(tmp_path / "d" / "train.jsonl", rows_for(["a", "b"], 2))
    assert dataset_error(tmp_path / "d") == (f"{tmp_path / 'd' / 'test.jsonl'}: missing: a dataset folder needs "
                                             "test.jsonl (a held-out test set, never trained on)")
    (tmp_path / "d" / "test.jsonl").symlink_to("../../evals/holdout.jsonl")
    assert dataset_error(tmp_path / "d") == (f"{tmp_path / 'd' / 'test.jsonl'}: a broken symlink to "
                                             "../../evals/holdout.jsonl: restore its target")


@pytest.mark.parametrize("text, expected", [
    ("routes: [name: a\n  - b: [", "not valid YAML"),
    ("routes:\n  - name: a\n    target: 'not a target!'\n", "neither a handler name"),
    ("", "invalid taxonomy"),
    ("routes:\n  - name: a\n  - name: a\n", "route names repeat"),
])
def test_a_broken_taxonomy_is_one_line_naming_the_file(tmp_path, text, expected):
    folder = folder_with(tmp_path, rows_for(["a"], 2), rows_for(["a"], 1))
    (folder / "taxonomy.yaml").write_text(text)
    message = dataset_error(folder)
    assert message.startswith(f"{folder / 'taxonomy.yaml'}: ") and expected in message
    assert message.endswith("(fix the taxonomy file: its format is in routelet/data/taxonomy.py)")


def test_a_misnamed_taxonomy_does_not_fall_back_to_labels(tmp_path):
    folder = folder_with(tmp_path, rows_for(["a", "b"], 2), rows_for(["a"], 1), taxonomy={"routes": [{"name": "a"}]})
    assert dataset_error(folder, taxonomy_file="taxonmy.yaml") == (
        f"{folder / 'taxonmy.yaml'}: missing; the folder has taxonomy.yaml: set data.taxonomy to one of them")


def test_evaluation_sets_are_the_folders_own(tmp_path):
    folder = folder_with(tmp_path / "ds", rows_for(["a", "b"], 5), rows_for(["a"], 1, start=9))
    write(folder / "evals" / "extra.jsonl", [{"text": "a request number 0"}])  # no label needed
    write(tmp_path / "evals" / "holdout.jsonl", [{"text": "b request number 1", "label": "b"}])  # another dataset's
    dataset = load_dataset(folder)
    assert list(dataset.evals) == [str(folder / "test.jsonl"), str(folder / "evals" / "extra.jsonl")]
    report = check_pool({"train": dataset.train, "calib": dataset.calib}, dataset.evals)
    assert [(leak.row.row.text, leak.eval.where) for leak in report.leaks] == [
        ("a request number 0", f"{folder / 'evals' / 'extra.jsonl'}:1")]


def test_an_evals_folder_that_is_a_link_is_refused(tmp_path):
    write(tmp_path / "shared" / "regressions.jsonl", [{"text": "hello"}])
    folder = folder_with(tmp_path / "ds", rows_for(["a", "b"], 2), rows_for(["a"], 1, start=5))
    (folder / "evals").symlink_to(tmp_path / "shared")
    assert dataset_error(folder).startswith(f"{folder / 'evals'}: a link to a folder, which DVC would not track")


def test_a_test_file_linked_to_a_frozen_holdout_is_checked(tmp_path):
    write(tmp_path / "evals" / "holdout.jsonl", rows_for(["a"], 2))
    folder = tmp_path / "data" / "ds"
    write(folder / "train.jsonl", rows_for(["a", "b"], 4))
    (folder / "test.jsonl").symlink_to(Path("..", "..", "evals", "holdout.jsonl"))
    dataset = load_dataset(folder)
    report = check_pool({"train": dataset.train, "calib": dataset.calib}, dataset.evals)
    assert sorted(leak.row.row.text for leak in report.leaks) == ["a request number 0", "a request number 1"]


def test_stratified_split_keeps_singletons_in_train():
    rows = [Sourced(Row(text=f"t{i}", label="a" if i else "solo"), "f", i) for i in range(5)]
    kept, held = stratified_split(rows, 0.5, 0)
    assert "solo" in {s.row.label for s in kept} and len(held) == 2
