"""Image rows and images: every bad line or file is rejected with file, line and reason; decoding
guards (empty, oversized, non-image, truncated, unsupported mode, decompression bomb); the
perceptual hash and the leakage check; the check outcomes cached by content; prepared
content-addressed copies; the torch-free pixel recipe (resize, crop, normalise)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from routelet.data import images
from routelet.data.images import (CHECKS, NEAR, checks_key, dhash, image_conflicts, image_leaks, read_image_rows,
                                  write_prepared_images)
from routelet.data.rows import write_quarantine
from routelet.serving.image_input import ImageRejected, open_image, pixel_values, resized_size, to_rgb
from routelet.serving.router_format import ImageInput

SPEC = ImageInput(height=16, width=16)


def png(size=(40, 30), color=(10, 120, 200), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, "PNG")
    return buffer.getvalue()


def screen(seed: int, size=(120, 200)) -> Image.Image:
    """A busy, distinct picture per seed: random blocks on a random background."""
    rng = np.random.default_rng(seed)
    array = np.full((size[1], size[0], 3), rng.integers(0, 255, 3), np.uint8)
    for _ in range(12):
        x, y = rng.integers(0, size[0] - 10), rng.integers(0, size[1] - 10)
        array[y:y + rng.integers(5, 60), x:x + rng.integers(5, 60)] = rng.integers(0, 255, 3)
    return Image.fromarray(array)


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch) -> Path:
    """Each test's own cache root: no test sees another's cached checks."""
    monkeypatch.setattr(images, "CACHE_ROOT", tmp_path / "cache")
    return tmp_path / "cache"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    (images / "good.png").write_bytes(png())
    (images / "empty.png").write_bytes(b"")
    (images / "text.png").write_bytes(b"hello, I am not a picture\n")
    (images / "noise.png").write_bytes(os.urandom(3000))
    (images / "cut.png").write_bytes(_truncated())
    buffer = io.BytesIO()
    Image.new("I;16", (20, 20)).save(buffer, "PNG")
    (images / "deep.png").write_bytes(buffer.getvalue())
    buffer = io.BytesIO()
    Image.new("CMYK", (20, 20)).save(buffer, "JPEG")
    (images / "cmyk.jpg").write_bytes(buffer.getvalue())
    buffer = io.BytesIO()
    Image.new("RGB", (20, 20)).save(buffer, "TIFF")
    (images / "scan.tiff").write_bytes(buffer.getvalue())
    (images / "bomb.png").write_bytes(_bomb())
    (tmp_path.parent / "outside.png").write_bytes(png())
    (images / "link.png").symlink_to(tmp_path.parent / "outside.png")
    return tmp_path


def _truncated() -> bytes:
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300, 3), np.uint8))
    buffer = io.BytesIO()
    noisy.save(buffer, "PNG")
    data = buffer.getvalue()
    return data[: len(data) // 2]


def _bomb() -> bytes:
    """12000 x 12000 one-bit pixels: a few KB of PNG, 144 million pixels once decoded."""
    buffer = io.BytesIO()
    Image.new("1", (12000, 12000), 0).save(buffer, "PNG")
    return buffer.getvalue()


LINES = [
    {"image": "images/good.png", "label": "a"},  # 1 ok
    {"image": "images/empty.png", "label": "a"},  # 2
    {"image": "images/text.png", "label": "a"},  # 3
    {"image": "images/noise.png", "label": "a"},  # 4
    {"image": "images/cut.png", "label": "a"},  # 5
    {"image": "images/deep.png", "label": "a"},  # 6
    {"image": "images/cmyk.jpg", "label": "a"},  # 7
    {"image": "images/scan.tiff", "label": "a"},  # 8
    {"image": "images/bomb.png", "label": "a"},  # 9
    {"image": "images/link.png", "label": "a"},  # 10
    {"image": "../outside.png", "label": "a"},  # 11
    {"image": "/etc/passwd", "label": "a"},  # 12
    {"image": "images/missing.png", "label": "a"},  # 13
    {"image": "images/good.png", "label": "zzz"},  # 14
    {"text": "a text row", "label": "a"},  # 15
    {"image": "images/good.png"},  # 16
]


def test_every_bad_line_and_image_is_rejected_with_file_line_and_reason(folder: Path):
    path = folder / "train.jsonl"
    text = "".join(json.dumps(line) + "\n" for line in LINES)
    text += '{"image": "images/good.png", "image": "images/x.png", "label": "a"}\n'  # 17
    text += '{"image": "images/good.png", "label": \n'  # 18
    text += "\n"  # blank: nothing to lose
    path.write_text(text)
    rows, rejected = read_image_rows(path, known_labels=["a"])
    assert [r.line for r in rows] == [1]
    reasons = {r.line: r.reason for r in rejected}
    assert all(r.file == str(path) for r in rejected)
    expected = {2: "empty file", 3: "not an image Pillow can read (starts with 'hello, I am not ", 4: "not an image",
                5: "truncated or corrupt PNG data", 6: "mode I;16 is not supported", 7: "mode CMYK is not supported",
                8: "format TIFF is not accepted", 9: "(decompression-bomb guard)",
                10: "resolves outside the dataset folder", 11: "leaves the dataset folder", 12: "is absolute",
                13: "no such file", 14: "unknown label 'zzz'", 15: "a text row in an image dataset",
                16: "label: missing", 17: "duplicate key 'image'", 18: "malformed JSON"}
    for line, part in expected.items():
        assert part in reasons.get(line, ""), (line, reasons.get(line))
    quarantine = folder / "quarantine.jsonl"
    write_quarantine(quarantine, rejected)
    records = [json.loads(x) for x in quarantine.read_text().splitlines()]
    assert [r["line"] for r in records] == sorted(expected) and all(r["reason"] and r["file"] for r in records)


def _train(folder: Path) -> Path:
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in LINES))
    return path


def _decodes(monkeypatch) -> list:
    """Counts open_image calls from read_image_rows, still decoding for real."""
    calls = []
    monkeypatch.setattr(images, "open_image", lambda source, spec: calls.append(source) or open_image(source, spec))
    return calls


def _no_decoding(source, spec):
    raise AssertionError("decoded an image whose check is cached")


def test_a_second_read_decodes_nothing_and_cached_rejections_read_the_same(folder: Path, cache: Path, monkeypatch):
    path = _train(folder)
    first = read_image_rows(path, known_labels=["a"])
    assert len(list((cache / CHECKS).iterdir())) == 1
    monkeypatch.setattr(images, "open_image", _no_decoding)
    again = read_image_rows(path, known_labels=["a"])
    assert again == first
    assert [str(r) for r in again[1]] == [str(r) for r in first[1]] and len(first[1]) == len(LINES) - 1


def test_a_changed_image_is_checked_again(folder: Path, monkeypatch):
    path = _train(folder)
    (before,), _ = read_image_rows(path, known_labels=["a"])
    screen(5).save(folder / "images" / "good.png")
    calls = _decodes(monkeypatch)
    (after,), _ = read_image_rows(path, known_labels=["a"])
    assert len(calls) == 1 and after.sha256 != before.sha256 and after.phash == dhash(screen(5))


@pytest.mark.parametrize("damage", [b'{"ab', b"[1, 2]", b'{"x": 1.5}', b'{"x": true}', b'{"x": -1}', b"\xff\xfe",
                                    b"[" * 100_000])
def test_a_damaged_cache_file_is_redone_not_fatal(folder: Path, cache: Path, monkeypatch, damage: bytes):
    path = _train(folder)
    first = read_image_rows(path, known_labels=["a"])
    (stored,) = (cache / CHECKS).iterdir()
    stored.write_bytes(damage)
    assert read_image_rows(path, known_labels=["a"]) == first
    monkeypatch.setattr(images, "open_image", _no_decoding)  # and it was written again, whole
    assert read_image_rows(path, known_labels=["a"]) == first


def test_the_limits_are_part_of_the_key_and_an_oversized_file_is_not_cached(tmp_path: Path, cache: Path, monkeypatch):
    (tmp_path / "x.png").write_bytes(png())  # 40 x 30 = 1200 pixels
    path = _line(tmp_path, "x.png")
    tight = ImageInput(height=1, width=1, max_pixels=1000)
    small = ImageInput(height=1, width=1, max_bytes=len(png()) - 1)
    assert len({checks_key(SPEC), checks_key(tight), checks_key(small)}) == 3
    assert read_image_rows(path)[0] and read_image_rows(path, limits=tight)[0] == []
    calls = _decodes(monkeypatch)
    for _ in range(2):
        _, rejected = read_image_rows(path, limits=small)
        assert "bytes, over the limit" in rejected[0].reason
    assert calls == [tmp_path / "x.png"] * 2  # opened by path (never read whole), each time
    assert not (cache / CHECKS / f"{checks_key(small)}.json").exists()


def test_a_bomb_is_refused_from_its_header_before_any_pixel_is_decoded(folder: Path):
    # Over Pillow's own limit: Pillow refuses at open; under it, our max_pixels does, before load().
    with pytest.raises(ImageRejected, match="decompression-bomb guard"):
        open_image(folder / "images" / "bomb.png", SPEC)
    with pytest.raises(ImageRejected, match=r"40x30 = 1200 pixels, over the limit of 1000 \(decompression-bomb"):
        open_image(png(), ImageInput(height=8, width=8, max_pixels=1000))


def test_limits_on_bytes_apply_to_files_and_uploads(tmp_path: Path):
    data = png()
    small = ImageInput(height=8, width=8, max_bytes=len(data) - 1)
    (tmp_path / "x.png").write_bytes(data)
    for source in (data, tmp_path / "x.png"):
        with pytest.raises(ImageRejected, match=f"{len(data)} bytes, over the limit"):
            open_image(source, small)
    with pytest.raises(ImageRejected, match="cannot read the image file"):
        open_image(tmp_path / "nope.png", SPEC)


def test_transparency_is_composited_on_white_like_transformers():
    clear = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(to_rgb(clear)).max() == 255 and np.asarray(to_rgb(clear)).min() == 255
    palette = Image.new("P", (4, 4), 0)
    palette.info["transparency"] = 0
    assert np.asarray(to_rgb(palette)).min() == 255
    assert to_rgb(Image.new("L", (3, 3), 7)).getpixel((0, 0)) == (7, 7, 7)


@pytest.mark.parametrize("size, expected", [((100, 50), (64, 32)), ((50, 100), (32, 64)), ((33, 33), (32, 32)),
                                            ((1, 500), (32, 16000))])
def test_shortest_edge_keeps_the_aspect_ratio_like_transformers(size, expected):
    assert resized_size(*size, ImageInput(shortest_edge=32)) == expected


def test_pixel_values_shape_dtype_and_a_crop_larger_than_the_image_pads_with_zeros():
    spec = ImageInput(height=10, width=10, crop=(14, 12), mean=(0.5,) * 3, std=(0.5,) * 3)
    batch = pixel_values([Image.new("RGB", (30, 20), (255, 255, 255))] * 2, spec)
    assert batch.shape == (2, 3, 14, 12) and batch.dtype == np.float32
    assert batch[0, :, 7, 6].tolist() == [1.0, 1.0, 1.0] and batch[0, 0, 0, 0] == -1.0  # padding is 0 before normalising
    assert pixel_values([], spec).shape == (0, 3, 14, 12)


def test_dhash_ignores_reencoding_and_resizing_but_not_another_screen():
    original = screen(1)
    buffer = io.BytesIO()
    original.resize((100, 166)).save(buffer, "JPEG", quality=60)
    copy = Image.open(io.BytesIO(buffer.getvalue()))
    near = bin(dhash(original) ^ dhash(copy)).count("1")
    far = min(bin(dhash(original) ^ dhash(screen(seed))).count("1") for seed in range(2, 30))
    assert near <= NEAR < far


def _rows(tmp_path: Path, name: str, images: list[Image.Image], labels: list[str]):
    for i, image in enumerate(images):
        image.save(tmp_path / f"{name}{i}.png")
    (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"image": f"{name}{i}.png", "label": label}) + "\n"
                                                    for i, label in enumerate(labels)))
    rows, rejected = read_image_rows(tmp_path / f"{name}.jsonl")
    assert not rejected
    return rows


def test_leaks_are_exact_bytes_or_near_duplicates_and_distinct_screens_pass(tmp_path: Path):
    test = _rows(tmp_path, "test", [screen(1), screen(2)], ["a", "b"])
    (tmp_path / "pool_same.png").write_bytes((tmp_path / "test0.png").read_bytes())
    pool = _rows(tmp_path, "pool", [screen(1).resize((110, 183)), screen(3), screen(4)], ["a", "a", "b"])
    same = read_image_rows(_line(tmp_path, "pool_same.png"))[0]
    leaks = image_leaks(same + pool, {"test.jsonl": test})
    kinds = sorted((leak.pool.row.image, leak.kind.split(" (")[0]) for leak in leaks)
    assert kinds == [("pool0.png", "near duplicate"), ("pool_same.png", "same bytes")]
    assert "repeats" in str(leaks[0]) and image_leaks(pool[1:], {"t": test}) == []


def _line(tmp_path: Path, image: str) -> Path:
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"image": image, "label": "a"}) + "\n")
    return path


def test_the_same_image_under_two_labels_is_a_conflict(tmp_path: Path):
    rows = _rows(tmp_path, "pool", [screen(1), screen(1), screen(2)], ["a", "b", "a"])
    conflicts = image_conflicts(rows)
    assert len(conflicts) == 1 and {r.row.label for r in next(iter(conflicts.values()))} == {"a", "b"}


def test_prepared_copies_are_content_addressed_and_stored_once(tmp_path: Path):
    rows = _rows(tmp_path, "pool", [screen(1), screen(1), screen(2)], ["a", "a", "b"])
    write_prepared_images({"train": rows[:2], "test": rows[2:]}, tmp_path / "prepared")
    train = [json.loads(x) for x in (tmp_path / "prepared" / "train.jsonl").read_text().splitlines()]
    assert train[0]["image"] == train[1]["image"] == f"images/{rows[0].sha256}.png"
    assert train[0]["source"].endswith("pool.jsonl:1")
    assert len(list((tmp_path / "prepared" / "images").iterdir())) == 2
