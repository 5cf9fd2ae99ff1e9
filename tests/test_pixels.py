"""The weight-free image baseline: features are fixed-length and finite for any image, training
separates screen types, save/load and the torch-free export give the same probabilities."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from routelet.families.base import ExportOptions
from routelet.families.pixels import PixelsFamily
from routelet.serving.image_models import PixelsModel, pixel_features
from routelet.serving.router_format import softmax
from scripts.make_screens import render


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
