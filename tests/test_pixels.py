"""The weight-free image baseline: features are fixed-length and finite for any image, training
separates screen types, save/load and the torch-free export give the same probabilities; the
feature cache returns the computed features bit for bit, misses on a changed image or features
version, and recomputes a cache it cannot read."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from routelet.families.base import ExportOptions
from routelet.families.pixels import PixelFeatureCache, PixelsFamily, features
from routelet.serving.image_models import PixelsModel, pixel_features
from routelet.serving.router_format import softmax
from scripts.make_screens import render


@pytest.fixture(autouse=True)
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setattr("routelet.families.image_encoders.CACHE_ROOT", tmp_path / "cache")
    return tmp_path / "cache"


@pytest.fixture
def computed(monkeypatch) -> list[int]:
    """How many images each feature computation saw (the real computation runs)."""
    calls, compute = [], PixelFeatureCache.compute
    monkeypatch.setattr(PixelFeatureCache, "compute", lambda self, images, size=0: calls.append(len(images))
                        or compute(self, images, size))
    return calls


def screen_files(folder, per_label: int, seed: int) -> list:
    """PNG files, as the pipeline passes them (the prepared split's paths)."""
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = screens(per_label, seed)
    for i, image in enumerate(images):
        image.save(folder / f"{i}-{labels[i]}.png")
    return [folder / f"{i}-{labels[i]}.png" for i in range(len(images))]


def direct(files) -> np.ndarray:
    return np.stack([pixel_features(Image.open(f)) for f in files])


def screens(per_label: int, seed: int) -> tuple[list[Image.Image], list[str]]:
    labels = ["calendar_month", "provider_list", "chat"]
    pairs = [(render(label, seed * 1000 + i)[0], label) for i in range(per_label) for label in labels]
    return [p[0] for p in pairs], [p[1] for p in pairs]


@pytest.mark.parametrize("image", [Image.new("RGB", (1, 1)), Image.new("L", (1, 3000), 200),
                                   Image.new("RGBA", (640, 10), (0, 0, 0, 0)), Image.new("P", (33, 17))])
def test_features_are_fixed_length_and_finite_for_any_size_and_mode(image):
    vector = pixel_features(image)
    assert vector.shape == pixel_features(Image.new("RGB", (50, 50))).shape and np.isfinite(vector).all()
    np.testing.assert_array_equal(vector, pixel_features(image))  # deterministic


def test_pixels_learns_screen_types_and_export_serves_the_same_probabilities(tmp_path):
    train, labels = screens(10, 0)
    test, truth = screens(5, 1)
    family = PixelsFamily(C=1.0).fit(train, labels)
    accuracy = (np.array(family.labels_)[family.logits(test).argmax(axis=1)] == np.array(truth)).mean()
    assert accuracy >= 0.8  # chance is 1/3
    family.save(tmp_path / "model")
    loaded = PixelsFamily.load(tmp_path / "model")
    np.testing.assert_allclose(loaded.logits(test), family.logits(test), atol=1e-5)
    fields = loaded.export(tmp_path / "model", tmp_path / "router", 2.0, ExportOptions(int8="fp32"))
    assert fields["kind"] == "pixels"
    served = PixelsModel(tmp_path / "router", fields["files"], family.labels_)(test)
    np.testing.assert_allclose(served, softmax(family.logits(test), 2.0), atol=1e-5)


def test_a_model_trained_on_other_features_is_refused(tmp_path):
    train, labels = screens(3, 0)
    PixelsFamily().fit(train, labels).save(tmp_path)
    meta = (tmp_path / "model.json").read_text().replace('"features": "1"', '"features": "0"')
    (tmp_path / "model.json").write_text(meta)
    with pytest.raises(ValueError, match="pixel features version '0'.*retrain"):
        PixelsFamily.load(tmp_path)


def test_cached_features_are_the_computed_features_bit_for_bit(tmp_path, computed):
    files = screen_files(tmp_path / "screens", 2, 0)
    first = features(files)
    again = features(files[::-1] + files[:1])  # all hits, in another order, one twice
    assert computed == [len(files)]
    assert first.dtype == again.dtype == np.float32
    assert first.tobytes() == direct(files).tobytes()
    assert again.tobytes() == direct(files[::-1] + files[:1]).tobytes()
    family = PixelsFamily().fit(files, [f.stem.split("-", 1)[1] for f in files])
    family.logits(files)
    assert computed == [len(files)]  # the family reads the cache: fit and logits compute nothing


def test_a_changed_image_or_features_version_misses(tmp_path, computed, monkeypatch):
    files = screen_files(tmp_path / "screens", 2, 0)
    features(files)
    render("chat", 999)[0].save(files[0])  # the same path, other bytes
    changed = features(files)
    assert computed == [len(files), 1]
    assert changed.tobytes() == direct(files).tobytes()
    monkeypatch.setattr("routelet.families.pixels.FEATURES_VERSION", "test")
    assert features(files).tobytes() == changed.tobytes() and computed == [len(files), 1, len(files)]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "one_dimensional", "keys_out_of_step"])
def test_a_cache_it_cannot_read_is_recomputed(tmp_path, cache_root, computed, damage):
    files = screen_files(tmp_path / "screens", 2, 0)
    features(files)
    folder = next(cache_root.glob("pixels/*"))
    vectors = folder / "vectors.npy"
    if damage == "garbage":
        vectors.write_bytes(b"not numpy at all")
    elif damage == "truncated":
        vectors.write_bytes(vectors.read_bytes()[:200])
    elif damage == "one_dimensional":
        np.save(vectors, np.zeros(len(files), np.float32))
    else:
        (folder / "keys.txt").write_text("abc\n")
    assert features(files).tobytes() == direct(files).tobytes()
    assert computed == [len(files), len(files)]
    assert features(files).tobytes() == direct(files).tobytes() and computed == [len(files), len(files)]
