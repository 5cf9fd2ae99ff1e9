"""Image export and the torch-free runtime: tiny DINOv2, CLIP and SigLIP encoders export to
encoder-<key>.onnx + head.npz, router.json carries the image input block, and the served
probabilities equal the trained model's; int8 ships only where the parity gate holds; a head-only
change reuses the content-addressed encoder file, checked against torch once per graph, and the
parity gate runs only the images that graph has not embedded yet."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from tiny_vision import build_tiny_vision

from routelet.families.base import ExportOptions
from routelet.families.encoders import EncoderSpec
from routelet.families.image_embed import ImageEmbedFamily
from routelet.families.image_encoders import ImageEncoder, as_image
from routelet.serving.image_input import open_image
from routelet.serving.image_models import OnnxImageModel, load_image_tier, probe_image
from routelet.serving.preprocess import PREPROCESS_VERSION
from routelet.serving.router_format import FORMAT_VERSION, ImageInput, Route, RouterError, RouterInfo, Tier, softmax


def data(n: int, seed: int) -> tuple[list[Image.Image], list[str]]:
    """Three visually distinct classes: dark with a light bar, light with a dark bar, stripes."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n):
        label = ("dark", "light", "stripes")[i % 3]
        w, h = int(rng.integers(30, 90)), int(rng.integers(30, 90))
        base = {"dark": 30, "light": 220, "stripes": 128}[label]
        array = np.clip(rng.normal(base, 20, (h, w, 3)), 0, 255).astype(np.uint8)
        if label == "stripes":
            array[::4] = 0
        else:
            array[h // 3: h // 2] = 255 - base
        images.append(Image.fromarray(array))
        labels.append(label)
    return images, labels


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision")
    return {arch: build_tiny_vision(root, arch) for arch in ("dinov2", "clip", "siglip")}


def cache(monkeypatch, tmp_path) -> None:
    """Embeddings and encoder graphs in the test's own folder."""
    monkeypatch.setattr("routelet.export.image_onnx.CACHE_ROOT", tmp_path / "cache")
    monkeypatch.setattr("routelet.families.image_encoders.CACHE_ROOT", tmp_path / "cache")


def router(family, fields: dict, out, temperature: float) -> RouterInfo:
    info = RouterInfo(format_version=FORMAT_VERSION, model_version="t", family="image_embed", labels=family.labels_,
                      routes=[Route(name=label) for label in family.labels_], input=family.input_spec(),
                      preprocess_version=PREPROCESS_VERSION, tiers=[Tier(family="image_embed", temperature=temperature,
                                                                         **fields)])
    info.write(out)
    return RouterInfo.read(out)


@pytest.mark.parametrize("arch", ["dinov2", "clip", "siglip"])
def test_export_then_torch_free_runtime_gives_the_trained_probabilities(tiny, tmp_path, monkeypatch, arch):
    cache(monkeypatch, tmp_path)
    train, labels = data(30, 0)
    held, _ = data(12, 1)
    family = ImageEmbedFamily(EncoderSpec(arch, str(tiny[arch]), "image"), C=10.0).fit(train, labels)
    temperature = 1.7
    fields = family.export(tmp_path, tmp_path / "router", temperature, ExportOptions(int8="fp32"))
    assert fields["kind"] == "image_onnx" and fields["files"]["model"].startswith("encoder-")
    info = router(family, fields, tmp_path / "router", temperature)
    assert info.input.modality == "image"
    model = load_image_tier(tmp_path / "router", info, info.tiers[0])
    served = model([open_image(_bytes(image), info.input) for image in held])
    expected = softmax(family.reference([_reopen(image) for image in held]), temperature)
    np.testing.assert_allclose(served, expected, atol=1e-4)
    assert model([probe_image()]).shape == (1, 3)


def _bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _reopen(image: Image.Image) -> Image.Image:
    return Image.open(io.BytesIO(_bytes(image)))


def test_int8_ships_only_where_the_parity_gate_holds_and_router_json_says_so(tiny, tmp_path, monkeypatch):
    cache(monkeypatch, tmp_path)
    train, labels = data(30, 0)
    family = ImageEmbedFamily(EncoderSpec("dinov2", str(tiny["dinov2"]), "image")).fit(train, labels)
    calibration = tuple(data(20, 2)[0])
    strict = family.export(tmp_path, tmp_path / "strict", 1.0, ExportOptions(int8="dynamic", calibration=calibration))
    quantization = strict["quantization"]
    assert quantization["checked_on"] == 20 and 0.0 <= quantization["agreement"] <= 1.0
    assert quantization["int8"] == ("dynamic" if quantization["agreement"] >= 0.995 else "fp32")
    from routelet.export.image_onnx import export_image_tier

    never = export_image_tier(family.image_encoder(), family.head_, 1.0, tmp_path / "never",
                              ExportOptions(int8="dynamic", calibration=calibration), min_agreement=1.01)
    assert never["quantization"]["int8"] == "fp32" and never["quantization"]["fell_back"] is True
    info = router(family, never, tmp_path / "never", 1.0)
    assert info.tiers[0].quantization["fell_back"] is True
    none = family.export(tmp_path, tmp_path / "none", 1.0, ExportOptions(int8="dynamic"))
    assert none["quantization"]["int8"] == "fp32"  # nothing to check int8 on: fp32, never unchecked int8


def test_a_new_class_reexports_only_the_head(tiny, tmp_path, monkeypatch):
    cache(monkeypatch, tmp_path)
    train, labels = data(30, 0)
    spec = EncoderSpec("dinov2", str(tiny["dinov2"]), "image")
    first = ImageEmbedFamily(spec).fit(train[:20], [x if x != "stripes" else "dark" for x in labels[:20]])
    a = first.export(tmp_path, tmp_path / "a", 1.0, ExportOptions(int8="fp32"))
    cached = next((tmp_path / "cache" / "onnx").glob("*/encoder.onnx"))
    built = cached.stat().st_mtime_ns
    second = ImageEmbedFamily(spec).fit(train, labels)
    b = second.export(tmp_path, tmp_path / "b", 1.0, ExportOptions(int8="fp32"))
    assert a["files"]["model"] == b["files"]["model"] and cached.stat().st_mtime_ns == built
    assert (tmp_path / "a" / a["files"]["model"]).read_bytes() == (tmp_path / "b" / b["files"]["model"]).read_bytes()
    assert len(second.labels_) == 3 and len(first.labels_) == 2


def test_a_checked_encoder_graph_is_not_checked_again_unless_it_changed(tiny, tmp_path, monkeypatch):
    from routelet.export import image_onnx

    cache(monkeypatch, tmp_path)
    checks, check = [], image_onnx.check_fp32
    monkeypatch.setattr(image_onnx, "check_fp32", lambda *args: checks.append(1) or check(*args))
    train, labels = data(30, 0)
    spec = EncoderSpec("dinov2", str(tiny["dinov2"]), "image")
    first = ImageEmbedFamily(spec).fit(train, labels).export(tmp_path, tmp_path / "a", 1.0, ExportOptions(int8="fp32"))
    record = next((tmp_path / "cache" / "onnx").glob(f"*/{image_onnx.CHECKED}"))
    assert checks == [1]
    family = ImageEmbedFamily(spec).fit(train, labels)  # embeddings cached: the model is not built
    again = family.export(tmp_path, tmp_path / "b", 1.0, ExportOptions(int8="fp32"))
    assert checks == [1] and "module" not in vars(family.image_encoder()) and again == first
    # Another ONNX Runtime (or model code) is checked again.
    record.write_text(record.read_text().replace('"onnxruntime": "', '"onnxruntime": "0.'))
    family.export(tmp_path, tmp_path / "c", 1.0, ExportOptions(int8="fp32"))
    assert checks == [1, 1]
    # A graph that is not this encoder's (other weights under its name) still fails the gate.
    other = build_tiny_vision(tmp_path / "other", "dinov2", seed=1)
    wrong = image_onnx.cached_encoder(ImageEmbedFamily(EncoderSpec("dinov2", str(other), "image")).image_encoder(),
                                      int8=False, root=tmp_path / "other-cache")
    (record.parent / "encoder.onnx").write_bytes(wrong.read_bytes())
    with pytest.raises(RuntimeError, match="differs from torch"):
        family.export(tmp_path, tmp_path / "d", 1.0, ExportOptions(int8="fp32"))


def test_a_broken_image_router_folder_names_the_file(tiny, tmp_path, monkeypatch):
    cache(monkeypatch, tmp_path)
    train, labels = data(12, 0)
    family = ImageEmbedFamily(EncoderSpec("siglip", str(tiny["siglip"]), "image")).fit(train, labels)
    fields = family.export(tmp_path, tmp_path / "r", 1.0, ExportOptions(int8="fp32"))
    info = router(family, fields, tmp_path / "r", 1.0)
    (tmp_path / "r" / "head.npz").write_bytes(b"not numpy")
    with pytest.raises(RouterError, match="head.npz: not a readable head file"):
        OnnxImageModel(tmp_path / "r", info.tiers[0].files, info.labels, info.input)
    (tmp_path / "r" / fields["files"]["model"]).write_bytes(b"garbage")
    with pytest.raises(RouterError, match="onnxruntime cannot load it"):
        OnnxImageModel(tmp_path / "r", info.tiers[0].files, info.labels, info.input)


def test_the_encoder_key_reads_the_torch_version_without_importing_torch():
    from routelet.export.image_onnx import OPSET

    encoder = ImageEncoder("e", "dinov2", lambda: None, ImageInput(height=28, width=28), "cls", "weights")
    code = ("import sys\nfrom routelet.export.image_onnx import encoder_key\n"
            "from routelet.families.image_encoders import ImageEncoder\n"
            "from routelet.serving.router_format import ImageInput\n"
            "encoder = ImageEncoder('e', 'dinov2', lambda: None, ImageInput(height=28, width=28), 'cls', 'weights')\n"
            "print(encoder_key(encoder, False), 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    key, imported = done.stdout.split()
    assert imported == "False"
    import torch

    # The key it had when it read torch.__version__: graphs already in the cache keep their name.
    assert key == hashlib.sha256(json.dumps([encoder.key, False, OPSET, torch.__version__]).encode()).hexdigest()[:16]


@pytest.mark.parametrize("int8", ["fp32", "dynamic"])
def test_calibration_images_are_decoded_only_when_a_check_needs_them(tiny, tmp_path, monkeypatch, int8):
    from routelet.export import image_onnx

    cache(monkeypatch, tmp_path)
    monkeypatch.setitem(image_onnx.CONVNETS, "dinov2", "treated as a convnet here: no int8 check")
    decoded = []
    monkeypatch.setattr(image_onnx, "as_image", lambda item: decoded.append(1) or as_image(item))
    train, labels = data(30, 0)
    family = ImageEmbedFamily(EncoderSpec("dinov2", str(tiny["dinov2"]), "image")).fit(train, labels)
    options = ExportOptions(int8=int8, calibration=tuple(_bytes(image) for image in data(20, 2)[0]))
    family.export(tmp_path, tmp_path / "a", 1.0, options)
    assert len(decoded) == image_onnx.FP32_PROBE  # the fp32 graph checked against torch, once
    family.export(tmp_path, tmp_path / "b", 1.0, options)
    assert len(decoded) == image_onnx.FP32_PROBE  # checked already, and no int8 check asked: nothing decoded


def _files(images: list[Image.Image], folder) -> list[str]:
    folder.mkdir(parents=True)
    for index, image in enumerate(images):
        (folder / f"{index}.png").write_bytes(_bytes(image))
    return [str(folder / f"{index}.png") for index in range(len(images))]


def _onnx_runs(monkeypatch) -> list[int]:
    """Images the image routers run through ONNX Runtime, per call."""
    calls, embed = [], OnnxImageModel.embed
    monkeypatch.setattr(OnnxImageModel, "embed", lambda self, images: calls.append(len(images)) or embed(self, images))
    return calls


def test_the_parity_gate_runs_only_images_the_shipped_graph_has_not_embedded(tiny, tmp_path, monkeypatch):
    from routelet.export.ship import image_router, served_probs

    cache(monkeypatch, tmp_path)
    train, labels = data(30, 0)
    spec = EncoderSpec("dinov2", str(tiny["dinov2"]), "image")
    first = ImageEmbedFamily(spec).fit(train, [label if label != "stripes" else "dark" for label in labels])
    router(first, first.export(tmp_path, tmp_path / "a", 1.0, ExportOptions(int8="fp32")), tmp_path / "a", 1.0)
    old, new = _files(data(12, 1)[0], tmp_path / "old"), _files(data(3, 3)[0], tmp_path / "new")
    runs = _onnx_runs(monkeypatch)
    gate = served_probs(tmp_path / "a", old)
    assert sum(runs) == 12
    np.testing.assert_array_equal(served_probs(tmp_path / "a", old), gate)
    assert sum(runs) == 12  # the second gate ran nothing through ONNX Runtime
    # A new class: a new head on the same encoder graph. Only the new images run; the new head reads all.
    second = ImageEmbedFamily(spec).fit(train, labels)
    router(second, second.export(tmp_path, tmp_path / "b", 1.0, ExportOptions(int8="fp32")), tmp_path / "b", 1.0)
    runs.clear()
    shipped = served_probs(tmp_path / "b", old + new)
    assert sum(runs) == 3 and shipped.shape == (15, 3)
    np.testing.assert_array_equal(shipped, image_router(tmp_path / "b")(old + new))  # bit for bit as served
    assert sum(runs) == 3 + 15  # without `cached` (report times it) every image runs


def test_the_served_key_is_the_graph_content_the_recipe_and_the_threads(tmp_path):
    from routelet.export.image_onnx import served_key

    spec = ImageInput(height=28, width=28)
    for name, content in (("a.onnx", b"graph"), ("b.onnx", b"graph"), ("c.onnx", b"graph!")):
        (tmp_path / name).write_bytes(content)
    key = served_key(tmp_path / "a.onnx", spec, 1)
    assert served_key(tmp_path / "b.onnx", spec, 1) == key  # the bytes, not the name
    others = {served_key(tmp_path / "c.onnx", spec, 1), served_key(tmp_path / "a.onnx", spec, 2),
              served_key(tmp_path / "a.onnx", ImageInput(height=28, width=28, resample=2), 1)}
    assert len(others) == 3 and key not in others


@pytest.mark.parametrize("damage", ["garbage", "short keys", "other width"])
def test_a_damaged_served_cache_is_recomputed_not_trusted(tiny, tmp_path, monkeypatch, damage):
    from routelet.export.ship import served_probs

    cache(monkeypatch, tmp_path)
    train, labels = data(30, 0)
    family = ImageEmbedFamily(EncoderSpec("siglip", str(tiny["siglip"]), "image")).fit(train, labels)
    router(family, family.export(tmp_path, tmp_path / "r", 1.0, ExportOptions(int8="fp32")), tmp_path / "r", 1.0)
    paths = _files(data(6, 1)[0], tmp_path / "images")
    expected = served_probs(tmp_path / "r", paths)
    [folder] = (tmp_path / "cache" / "served").iterdir()
    if damage == "garbage":
        (folder / "vectors.npy").write_bytes(b"not numpy")
    elif damage == "short keys":
        (folder / "keys.txt").write_text("\n".join((folder / "keys.txt").read_text().split()[:2]) + "\n")
    else:
        np.save(folder / "vectors.npy", np.ones((6, 5), np.float32))
    runs = _onnx_runs(monkeypatch)
    np.testing.assert_array_equal(served_probs(tmp_path / "r", paths), expected)
    assert sum(runs) == 6
