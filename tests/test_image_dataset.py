"""Image datasets through checkdata's code: modality from the first train row, leaks confirmed by
colour thumbnails (distinct screens of one layout are not leaks, a re-encoded copy is), the prepared
folder records the modality, and a family of the other modality is skipped and passed by.

    .venv/bin/pytest -q tests/test_image_dataset.py
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from screens_data import screens  # noqa: F401  (fixture)

from routelet.data.checks import DataParams, check_dataset
from routelet.data.dataset import load_dataset, load_prepared, write_prepared
from routelet.families import load_trained, save_skipped, trained_names



@pytest.fixture
def copy(screens: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(screens, tmp_path / "screens"))


def check(folder: Path, **params):
    dataset = load_dataset(folder)
    return dataset, *check_dataset(dataset, DataParams(dir=str(folder), **params))


def test_a_generated_screen_set_is_an_image_dataset_with_no_leak(copy: Path, tmp_path: Path):
    dataset, report, details = check(copy)
    assert dataset.modality == "image" and report["modality"] == "image"
    # Distinct screenshots of one layout share a 64-bit hash; the colour thumbnails tell them apart.
    assert report["ok"] and report["leaks"] == [] and details == [], report["failures"]
    write_prepared(dataset, tmp_path / "prepared")
    prepared = load_prepared(tmp_path / "prepared")
    assert prepared.modality == "image"
    paths = prepared.inputs("test")
    assert len(paths) == len(dataset.test) and all(Path(p).is_file() for p in paths)
    assert not (tmp_path / "prepared" / "test.jsonl").read_text().count('"text"')


def test_a_reencoded_resized_test_image_in_train_is_a_leak_and_drop_removes_it(copy: Path):
    held = json.loads((copy / "test.jsonl").read_text().splitlines()[0])
    image = Image.open(copy / held["image"]).convert("RGB")
    image.resize((image.width * 9 // 10, image.height * 9 // 10)).save(copy / "images" / "leaked.jpg", quality=70)
    with (copy / "train.jsonl").open("a") as train:
        train.write(json.dumps({"image": "images/leaked.jpg", "label": held["label"]}) + "\n")
    dataset, report, details = check(copy)
    assert not report["ok"] and [leak["image"] for leak in report["leaks"]] == ["images/leaked.jpg"]
    assert "near duplicate" in details[0] and "data.on_leak=drop" in report["failures"][0]
    dataset, report, _ = check(copy, on_leak="drop")
    assert report["ok"] and [row["text"] for row in report["dropped"]] == ["images/leaked.jpg"]
    assert all(row.row.image != "images/leaked.jpg" for row in dataset.train)


def test_the_same_bytes_under_two_labels_is_a_conflict(copy: Path):
    lines = (copy / "train.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    other = next(json.loads(line)["label"] for line in lines if json.loads(line)["label"] != first["label"])
    (copy / "train.jsonl").write_text("\n".join(lines + [json.dumps({"image": first["image"], "label": other})]) + "\n")
    _, report, details = check(copy)
    assert report["conflicts"][0]["labels"] == sorted({first["label"], other})
    assert details[0].startswith("conflict: image") and not report["ok"]


def test_a_text_row_in_an_image_dataset_is_quarantined_not_read_as_text(copy: Path):
    with (copy / "train.jsonl").open("a") as train:
        train.write(json.dumps({"text": "book a flight", "label": "login"}) + "\n")
    dataset, report, _ = check(copy, max_rejected_share=0.5)
    assert dataset.modality == "image" and "same modality" in str(dataset.rejected[0])


def test_a_skipped_family_says_why_and_the_later_stages_pass_it_by(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # data/models/<name>, as the stages see it
    (tmp_path / "data" / "models" / "pixels").mkdir(parents=True)
    (tmp_path / "data" / "models" / "pixels" / "pixels.npz").write_bytes(b"a model from another dataset")
    folder = save_skipped("pixels", "pixels", "family 'pixels' takes image input; the dataset is text")
    assert json.loads((folder / "family.json").read_text())["skipped"].startswith("family 'pixels'")
    assert [p.name for p in folder.iterdir()] == ["family.json"]  # nothing stale left to be read
    assert trained_names(["tfidf", "pixels"]) == ["tfidf"]  # tfidf has not run here: not skipped
    with pytest.raises(FileNotFoundError, match="skipped this family"):
        load_trained("pixels")
