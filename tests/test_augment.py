"""augment: voice-like variants that keep the label, stay out of the calibration split and the
evaluation sets, are seeded and counted; voice_copy (the evaluation copy) and scripts/augment_eval."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from routelet import paths
from routelet.data.augment import AugmentConfig, Blocked, PoolRow, augment, training_pool, variants_of
from routelet.data.dataset import load_dataset, write_prepared
from routelet.data.dedup import TextIndex
from routelet.data.voice import FILLERS, HEDGES, KINDS, LEAD_INS, number_words, numbers, voice_copy
from routelet.families import build_family, save_trained
from routelet.serving.preprocess import preprocess

ROOT = Path(__file__).resolve().parents[1]
TAXONOMY = {"reject": "oos", "routes": [
    {"name": "banking", "labels": ["balance", "transfer"]}, {"name": "travel", "labels": ["book_flight"]},
    {"name": "oos"}]}
TRAIN = [("balance", "What's my balance?"), ("balance", "how much money do I have"),
         ("balance", "show my account balance"), ("balance", "balance in checking please"),
         ("transfer", "send $20 to alex at 7:30"), ("transfer", "transfer money to my mom"),
         ("transfer", "move 2 hundred to savings"), ("transfer", "wire cash to john"),
         ("book_flight", "book a flight to rome"), ("book_flight", "I need a flight home, asap!"),
         ("book_flight", "get me a plane ticket to paris"), ("book_flight", "fly me to berlin on the 3rd"),
         ("oos", "tell me a joke"), ("oos", "sing a song"), ("oos", "who won the game"), ("oos", "how tall is everest")]
VALID = [("balance", "balance of my card"), ("transfer", "transfer rent"), ("book_flight", "flight to oslo"),
         ("oos", "what's the weather")]
TEST = [("balance", "what is my balance"), ("transfer", "i want to send twenty five dollars to my mom"),
        ("book_flight", "book a flight to lima for two"), ("oos", "what is the meaning of life")]


def jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


@pytest.fixture
def dataset_dir(tmp_path) -> Path:
    folder = tmp_path / "ds"
    jsonl(folder / "train.jsonl", [{"text": t, "label": label} for label, t in TRAIN])
    jsonl(folder / "valid.jsonl", [{"text": t, "label": label} for label, t in VALID])
    jsonl(folder / "test.jsonl", [{"text": t, "label": label} for label, t in TEST])
    (folder / "taxonomy.yaml").write_text(yaml.safe_dump(TAXONOMY))
    jsonl(tmp_path / "evals" / "holdout.jsonl", [{"text": "show my account balance um", "label": "balance"}])
    return folder


def run(dataset_dir: Path, **settings):
    pool, blocked, _ = training_pool(load_dataset(dataset_dir), dataset_dir.parent / "collected.jsonl",
                                     dataset_dir.parent / "evals", 2000)
    return augment(pool, blocked, AugmentConfig(**settings))


def test_variants_keep_the_label_name_their_kind_and_original(dataset_dir):
    rows, report = run(dataset_dir, per_row=3)
    originals = {f"{dataset_dir}/train.jsonl:{i}": (label, text) for i, (label, text) in enumerate(TRAIN, start=1)}
    assert rows and report.variants == len(rows)
    for row in rows:
        label, text = originals[row["of"]]
        assert row["label"] == label and row["source"].removeprefix("augment:") in KINDS
        assert preprocess(row["text"]) != preprocess(text) and set(row) == {"text", "label", "source", "of"}
    assert sum(report.by_label.values()) == sum(report.by_kind.values()) == len(rows)
    assert report.as_dict()["by_label"] == {label: sum(r["label"] == label for r in rows)
                                            for label in sorted({r["label"] for r in rows})}
    assert {r["source"] for r in rows} == {f"augment:{kind}" for kind in KINDS}


def test_the_same_seed_gives_the_same_variants_and_a_growing_pool_keeps_them(dataset_dir):
    first, _ = run(dataset_dir, per_row=2, seed=7)
    assert run(dataset_dir, per_row=2, seed=7)[0] == first
    assert run(dataset_dir, per_row=2, seed=8)[0] != first
    jsonl(dataset_dir.parent / "collected.jsonl", [{"text": "pay my balance now", "label": "balance",
                                                    "meta": {"provenance": {"labeler": "claude"}}}])
    grown, report = run(dataset_dir, per_row=2, seed=7)
    assert grown[:len(first)] == first and report.pool_rows == len(TRAIN) + 1
    assert grown[-1]["of"] == f"{dataset_dir.parent / 'collected.jsonl'}:1"


def test_no_variant_repeats_an_evaluation_or_calibration_text(dataset_dir):
    # "show my account balance" + the filler "um" at the end is a text of the frozen evals/ folder.
    row = PoolRow("show my account balance", "balance", "train.jsonl:3")
    blocked = Blocked(TextIndex(), TextIndex(), TextIndex())
    config = AugmentConfig(kinds=["filler"], per_row=20)
    made = {text for _, text in variants_of(row, config)}
    assert "show my account balance um" in made  # what would be written without the block
    blocked.evals.add("Show my account balance UM", "evals/holdout.jsonl:1")
    rows, report = augment([row], blocked, config)
    assert "show my account balance um" not in {r["text"] for r in rows} and report.skipped["evals"] >= 1
    blocked.calib.add("um show my account balance", "valid.jsonl:1")
    rows, report = augment([row], blocked, config)
    assert report.skipped["calib"] >= 1 and "um show my account balance" not in {r["text"] for r in rows}
    # Through the whole pool reader too: the frozen evals/ folder and valid.jsonl are blocked.
    rows, _ = run(dataset_dir, per_row=20, kinds=["filler"])
    evals = {preprocess("show my account balance um")} | {preprocess(t) for _, t in VALID + TEST}
    assert rows and not {preprocess(r["text"]) for r in rows} & evals


def test_calibration_rows_are_never_augmented(dataset_dir):
    rows, _ = run(dataset_dir, per_row=3)
    assert all(r["of"].startswith(f"{dataset_dir}/train.jsonl:") for r in rows)
    (dataset_dir / "valid.jsonl").unlink()  # now the calibration split is carved from train.jsonl
    dataset = load_dataset(dataset_dir)
    calib = {s.where for s in dataset.calib}
    rows, _ = run(dataset_dir, per_row=3)
    assert calib and rows and not calib & {r["of"] for r in rows}


def test_variants_are_redacted_and_never_spell_out_a_secret():
    row = PoolRow("my pin is 7731 and my card 4111 1111 1111 1111", "balance", "x:1")
    rows, _ = augment([row], Blocked(TextIndex(), TextIndex(), TextIndex()), AugmentConfig(per_row=20))
    assert rows
    for r in rows:
        assert "7731" not in r["text"] and "seven" not in r["text"] and "4111" not in r["text"]
        assert "<secret>" in r["text"] and "<card>" in r["text"]


def test_share_and_off(dataset_dir):
    assert run(dataset_dir, share=0.0)[0] == []
    half, report = run(dataset_dir, share=0.5, per_row=1)
    assert 0 < report.augmented_rows < len(TRAIN)
    rows, report = run(dataset_dir, enabled=False)
    assert rows == [] and report.as_dict()["enabled"] is False


@pytest.mark.parametrize(("text", "spoken"), [
    ("send $20000 at 7:30", "send twenty thousand dollars at seven thirty"),
    ("wake me at 7:05am", "wake me at seven oh five am"),
    ("10% off on the 21st", "ten percent off on the twenty first"),
    ("1,200 or 2.5", "one thousand two hundred or two point five"),
    ("play mp3 <num> on 3rd", "play mp3 <num> on third"),
])
def test_numbers_are_spoken(text, spoken):
    assert numbers(text, random.Random(0)) == spoken


def test_number_words():
    assert [number_words(n) for n in (0, 13, 40, 99, 105, 2015, 1_000_000)] == [
        "zero", "thirteen", "forty", "ninety nine", "one hundred five", "two thousand fifteen", "one million"]


def test_each_kind_changes_the_text_as_its_name_says():
    rng = random.Random(3)
    text = "I'd like to book a flight, please."
    assert any(f in KINDS["filler"](text, rng).split() for f in ("um", "uh", "like", "er", "hmm")) or "you know" in \
        KINDS["filler"](text, rng)
    assert any(KINDS["hedge"](text, rng).startswith(h) for h in LEAD_INS)
    assert any(KINDS["hedge"]("book a flight", rng).startswith(h) for h in HEDGES)
    assert KINDS["asr"](text, rng) == "id like to book a flight please"
    stuttered = KINDS["stutter"](text, rng).split()
    assert len(stuttered) == len(text.split()) + 1


def test_voice_copy_uses_other_perturbations_than_training():
    texts = [t for _, t in TEST] + ["let me know if i have to pay my bill", "hi"]
    copies = voice_copy(texts, seed=0)
    assert copies == voice_copy(texts, seed=0) and copies != voice_copy(texts, seed=1)
    assert all(copy != text for copy, text in zip(copies, texts))
    def says(phrase: str, text: str) -> bool:
        return f" {phrase} " in f" {text} "

    for copy, text in zip(copies, texts):  # no filler, hedge or lead-in the original did not have
        assert not [p for p in FILLERS + HEDGES + LEAD_INS if says(p, copy) and not says(p, text)]
    assert voice_copy(["pay twenty five dollars"], per_text=5)[0].startswith("pay $25")


def test_the_stage_writes_the_same_bytes_twice_and_an_empty_file_when_off(tmp_path, dataset_dir, monkeypatch, capsys):
    from stages import augment as stage

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"] = {"dir": str(dataset_dir), "taxonomy": "taxonomy.yaml"}
    params["augment"] = {"enabled": True, "seed": 0, "per_row": 2}
    monkeypatch.chdir(tmp_path)
    for name, value in (("COLLECTED", Path("collected.jsonl")), ("AUGMENTED", Path("augmented.jsonl")),
                        ("EVALS", Path("evals")), ("AUGMENT", Path("report/augment.json"))):
        monkeypatch.setattr(paths, name, value, raising=False)
    Path("params.yaml").write_text(yaml.safe_dump(params))
    assert stage.main() == 0
    first = Path("augmented.jsonl").read_bytes(), Path("report/augment.json").read_bytes()
    assert first[0] and json.loads(first[1])["variants"] == first[0].count(b"\n")
    assert stage.main() == 0
    assert (Path("augmented.jsonl").read_bytes(), Path("report/augment.json").read_bytes()) == first
    assert "augment: on:" in capsys.readouterr().out
    params["augment"]["enabled"] = False
    Path("params.yaml").write_text(yaml.safe_dump(params))
    assert stage.main() == 0 and Path("augmented.jsonl").read_bytes() == b""
    assert json.loads(Path("report/augment.json").read_text())["enabled"] is False
    params["augment"] = {"kinds": ["filler", "yodel"]}
    Path("params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit) as stop:
        stage.run(stage.main)
    assert stop.value.code == 2 and "augment.kinds: unknown kind(s) ['yodel']" in capsys.readouterr().err


def test_augment_eval_scores_the_holdout_and_its_voice_copy(tmp_path, dataset_dir, capsys):
    from scripts import augment_eval

    dataset = load_dataset(dataset_dir)
    write_prepared(dataset, tmp_path / "prepared")
    texts, labels = [s.row.text for s in dataset.train], [s.row.label for s in dataset.train]
    rows, _ = run(dataset_dir, per_row=3)
    for name, extra in (("without", []), ("with", rows)):
        family, level = build_family("tfidf", {"family": "tfidf", "C": 10.0}, seed=0)
        family.fit(texts + [r["text"] for r in extra], labels + [r["label"] for r in extra])
        save_trained("tfidf", family, level, tmp_path / name / "tfidf")
    out = tmp_path / "augment_eval.json"
    assert augment_eval.main(["--model", f"without={tmp_path / 'without' / 'tfidf'}",
                              "--model", f"with={tmp_path / 'with' / 'tfidf'}", "--prepared",
                              str(tmp_path / "prepared"), "--params", str(ROOT / "params.yaml"),
                              "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["models"]) == {"without", "with"} and result["voice_changed_rows"] == len(TEST)
    for scores in result["models"].values():
        assert set(scores["holdout"]) == set(scores["voice"]) == {"accuracy", "in_scope_accuracy", "oos_recall"}
    assert "| with |" in capsys.readouterr().out
    assert augment_eval.main(["--model", "nonsense", "--out", str(out)]) == 2
