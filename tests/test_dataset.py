import json

from routelet.data.rows import Sourced, Row
from routelet.data.dataset import check_pool, load_dataset, stratified_split


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def rows_for(labels, n):
    return [{"text": f"{label} request number {i}", "label": label} for label in labels for i in range(n)]


def test_folder_without_valid_or_taxonomy_splits_train_by_label(tmp_path):
    write(tmp_path / "train.jsonl", rows_for(["a", "b", "c"], 10))
    write(tmp_path / "test.jsonl", rows_for(["a", "b"], 2))
    dataset = load_dataset(tmp_path, valid_fraction=0.2, seed=1)
    assert dataset.taxonomy.route_names == ["a", "b", "c"]
    assert len(dataset.calib) == 6 and len(dataset.train) == 24
    assert {s.row.label for s in dataset.calib} == {"a", "b", "c"}
    again = load_dataset(tmp_path, valid_fraction=0.2, seed=1)
    assert [s.line for s in again.calib] == [s.line for s in dataset.calib]


def test_unknown_labels_in_any_split_are_rejected(tmp_path):
    write(tmp_path / "train.jsonl", rows_for(["a", "b"], 3))
    write(tmp_path / "valid.jsonl", rows_for(["a"], 1) + [{"text": "x", "label": "zzz"}])
    write(tmp_path / "test.jsonl", rows_for(["b"], 1))
    dataset = load_dataset(tmp_path)
    assert [str(r) for r in dataset.rejected] == [f"{tmp_path / 'valid.jsonl'}:2: unknown label 'zzz': not in the taxonomy"]
    assert dataset.lines_read == 9


def test_stratified_split_keeps_singletons_in_train():
    rows = [Sourced(Row(text=f"t{i}", label="a" if i else "solo"), "f", i) for i in range(5)]
    kept, held = stratified_split(rows, 0.5, 0)
    assert "solo" in {s.row.label for s in kept} and len(held) == 2


def sourced(text, label, where):
    return Sourced(Row(text=text, label=label), "pool.jsonl" if where < 100 else "test.jsonl", where)


def test_leakage_exact_and_after_normalisation_and_conflicts():
    pool = {"train": [sourced("Book a flight", "flight", 1), sourced("book  a FLIGHT", "travel", 2),
                      sourced("fresh text", "a", 3)],
            "calib": [sourced("what is my balance", "balance", 4)]}
    evals = {"test": [sourced("what is my balance", "balance", 101), sourced("FRESH   text", "a", 102)]}
    report = check_pool(pool, evals)
    assert [(leak["kind"], leak["pool"], leak["eval"]) for leak in report.leaks] == [
        ("normalised", "pool.jsonl:3", "test.jsonl:102"), ("exact", "pool.jsonl:4", "test.jsonl:101")]
    assert report.conflicts == [{"text": "book a flight", "labels": ["flight", "travel"],
                                 "where": ["pool.jsonl:1", "pool.jsonl:2"]}]
    assert len(report.problems) == 3 and not report.as_dict()["ok"]
