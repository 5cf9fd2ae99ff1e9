"""A text's answer never depends on the batch it is routed in: tfidf, the toy graph, and real fp32
and int8 exports of a tiny BERT (the int8 graph once took one activation scale per batch); and each
onnxruntime call stays bounded in rows and tokens. An image's answer is exactly the same alone or
in any batch: the pixels tier, and fp32 and int8 ONNX encoders of tiny random ViTs."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from routers import LABELS, image_folder, onnx_folder, tfidf_folder  # noqa: F401  (fixtures)
from test_pixels import screens
from test_runtime import GARBAGE

from routelet.serving.onnx_model import ONNX_BATCH, ONNX_TOKENS
from routelet.serving.preprocess import PREPROCESS_VERSION
from routelet.serving.runtime import Router


@pytest.fixture(params=["tfidf", "onnx"])
def router(request) -> Router:
    return Router.load(request.getfixturevalue(f"{request.param}_folder"))


# Tolerance 1e-4 on probabilities for both: a row's result differs across batches
# only by fp32 summation order (measured: 3.6e-7 at most over 3,000 texts in 9 batch layouts, int8
# included, since each int8 activation is quantised on its own scale); the per-batch int8 scales
# this replaces moved probabilities by 1.2e-2 on this model, 0.134 on MiniLM.

BATCH_TOL = 1e-4
VOCAB = ("balance account funds savings transfer send wire payee flight airport boarding airline joke "
         "weather recipe song please my the can you i want to what is a now").split()


def varied_texts(n: int, seed: int = 0) -> list[str]:
    """Seeded texts of 1 to 80 words (some past max_length), with unknown words and garbage mixed in."""
    rng = np.random.default_rng(seed)
    extra = ["xyzzy", "ß" * 30, "\u200b", "\U0001F642", "4111 1111 1111 1111", "bob@example.com", "?!"]
    texts = []
    for i in range(n):
        words = list(rng.choice(VOCAB + extra, int(rng.integers(1, 80 if i % 7 == 0 else 12))))
        texts.append(" ".join(words))
    return texts + ["", "\u0000", "balance"]


@pytest.fixture(scope="module")
def bert_folders(tmp_path_factory) -> dict[str, Path]:
    """Router folders of a tiny random BERT + head, exported as the pipeline does: int8 (dynamic,
    with calibration texts) and fp32."""
    pytest.importorskip("sentence_transformers")
    from routers import router_json, write_router_json
    from tiny_encoder import build_tiny_encoder

    from routelet.export.onnx import build_onnx_router
    from routelet.serving.preprocess import preprocess

    root = tmp_path_factory.mktemp("bert")
    encoder = build_tiny_encoder(root / "encoder", max_seq_length=48)
    rng = np.random.default_rng(0)
    coef, intercept = rng.normal(size=(len(LABELS), 32)).astype(np.float32) * 6, np.zeros(len(LABELS), np.float32)
    calibration = [preprocess(t) for t in varied_texts(64, seed=1)]
    folders = {}
    for name, quantize in (("int8", True), ("fp32", False)):
        folder = root / name
        files = build_onnx_router(encoder, coef, intercept, 1.0, folder, max_length=48, quantize=quantize,
                                  calibration=calibration)
        info = router_json("onnx", files, abstain={"threshold": 0.4, "margin": 0.0},
                           input={"modality": "text", "tokenizer": "tokenizer.json", "max_length": 48})
        folders[name] = write_router_json(folder, info)
    return folders


def assert_batch_independent(router: Router, texts: list[str]) -> None:
    alone = [router.route_one(t, top_k=4) for t in texts]
    alone_probs = np.vstack([router.probs([t]) for t in texts])
    rng = np.random.default_rng(0)
    for size in (len(texts), 2 * ONNX_BATCH + 5, 17, 3):
        order = rng.permutation(len(texts))
        for start in range(0, len(texts), size):
            rows = order[start : start + size]
            batch = [texts[i] for i in rows]
            np.testing.assert_allclose(router.probs(batch), alone_probs[rows], rtol=0, atol=BATCH_TOL)
            for i, result in zip(rows, router.route(batch, top_k=4)):
                single = alone[i]
                assert {k: result[k] for k in ("route", "abstain", "abstain_reason", "tier")} == \
                       {k: single[k] for k in ("route", "abstain", "abstain_reason", "tier")}, texts[i]
                assert [x["route"] for x in result["top_k"]] == [x["route"] for x in single["top_k"]] or \
                    np.ptp([x["p"] for x in single["top_k"]]) < BATCH_TOL  # ties may order either way
                assert abs(result["confidence"] - single["confidence"]) <= BATCH_TOL


def test_answers_do_not_depend_on_the_batch(router):
    assert_batch_independent(router, varied_texts(150))


@pytest.mark.parametrize("kind", ["int8", "fp32"])
def test_exported_bert_answers_do_not_depend_on_the_batch(bert_folders, kind):
    import onnx

    ops = {node.op_type for node in onnx.load(str(bert_folders[kind] / "model.onnx")).graph.node}
    assert "DynamicQuantizeLinear" not in ops  # one activation scale per batch: the cause
    assert ("MatMulInteger" in ops) == (kind == "int8")
    router = Router.load(bert_folders[kind])
    texts = varied_texts(300)
    assert_batch_independent(router, texts)
    # The model must not be so flat that nothing could differ: the random head spreads the routes.
    assert np.ptp(router.probs(texts[:50]), axis=0).max() > 0.1


def test_exported_bert_garbage_abstains(bert_folders):
    router = Router.load(bert_folders["int8"])
    for name, (text, reason) in GARBAGE.items():
        result = router.route_one(text)
        assert (result["abstain"], result["abstain_reason"]) == (True, reason), name


def test_each_onnxruntime_call_is_bounded_in_rows_and_tokens(bert_folders):
    """Memory per call is bounded whatever the batch: at most ONNX_BATCH rows and ONNX_TOKENS padded
    tokens (a row longer than that alone), and results still come back in input order."""
    router = Router.load(bert_folders["int8"])
    model = router._models[0]
    shapes, run = [], model.session.run

    def spy(outputs, feed):
        shapes.append(feed["input_ids"].shape)
        return run(outputs, feed)

    model.session = type("Spy", (), {"run": staticmethod(spy)})()
    texts = varied_texts(400, seed=3)
    probs = router.probs(texts)
    assert all(rows <= ONNX_BATCH and (rows * width <= ONNX_TOKENS or rows == 1) for rows, width in shapes)
    assert sum(rows for rows, _ in shapes) == len(texts) and max(width for _, width in shapes) == 48
    model.session = type("Plain", (), {"run": staticmethod(run)})()
    np.testing.assert_allclose(probs, np.vstack([router.probs([t]) for t in texts[:40]] + [probs[40:]]),
                               rtol=0, atol=BATCH_TOL)


def varied_images(n: int, seed: int = 0) -> list:
    """Seeded images of varied sizes and modes, some as PNG bytes, and two inputs that are no image."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        h, w = int(rng.integers(8, 120)), int(rng.integers(8, 120))
        array = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        array[: h // 3] = rng.integers(0, 256, 3, dtype=np.uint8)  # a flat band: not only noise
        image = Image.fromarray(array).convert(("RGB", "L", "RGBA", "P")[i % 4])
        if i % 5 == 0:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            image = buffer.getvalue()
        images.append(image)
    return images + [b"not an image", b""]


def assert_images_batch_independent(router: Router, images: list) -> None:
    """Probabilities and whole results equal bit for bit: nothing in an image tier sums across rows."""
    alone_probs = np.vstack([router.probs([image]) for image in images])
    alone = [router.route([image], top_k=4)[0] for image in images]
    rng = np.random.default_rng(0)
    for size in (len(images), 17, 5, 2):
        order = rng.permutation(len(images))
        for start in range(0, len(images), size):
            rows = order[start : start + size]
            batch = [images[i] for i in rows]
            assert np.array_equal(router.probs(batch), alone_probs[rows]), size
            assert router.route(batch, top_k=4) == [alone[i] for i in rows], size
    assert np.ptp(alone_probs, axis=0).max() > 0.1  # a flat model could not show a difference


def test_pixels_image_answers_do_not_depend_on_the_batch(image_folder):
    router = Router.load(image_folder)
    assert_images_batch_independent(router, screens(6, 2)[0] + varied_images(20))


@pytest.fixture(scope="module")
def vit_folders(tmp_path_factory) -> dict[str, Path]:
    """image_onnx router folders: a tiny random SigLIP (fp32: its batched graph moved 7e-7) and DINOv2
    (int8, one activation scale per call), 24 labels in 4 routes under a random head, so route sums
    run over 6 labels each."""
    pytest.importorskip("transformers")
    from routers import write_router_json
    from tiny_vision import build_tiny_vision

    from routelet.export.image_onnx import cached_encoder
    from routelet.families.encoders import EncoderSpec
    from routelet.families.image_encoders import load_image_encoder

    root = tmp_path_factory.mktemp("vit")
    labels = [f"label{i}" for i in range(24)]
    routes = [{"name": f"route{j}", "labels": labels[j * 6 : j * 6 + 6]} for j in range(4)]
    folders = {}
    for arch, int8 in (("siglip", False), ("dinov2", True)):
        encoder = load_image_encoder(EncoderSpec(arch, str(build_tiny_vision(root, arch)), "image"))
        folder = root / f"{arch}-router"
        folder.mkdir()
        shutil.copyfile(cached_encoder(encoder, int8=int8, root=root / "cache"), folder / "encoder.onnx")
        rng = np.random.default_rng(0)
        np.savez(folder / "head.npz", coef=rng.normal(size=(len(labels), 32)).astype(np.float32) * 3,
                 intercept=np.zeros(len(labels), np.float32))
        tier = {"family": "image_embed", "kind": "image_onnx", "temperature": 1.0,
                "files": {"model": "encoder.onnx", "head": "head.npz"}}
        info = {"format_version": 2, "model_version": f"{arch}-test", "family": "image_embed", "labels": labels,
                "routes": routes, "input": encoder.input.model_dump(), "preprocess_version": PREPROCESS_VERSION,
                "abstain": {"threshold": 0.4}, "tiers": [tier]}
        folders[f"{arch}-{'int8' if int8 else 'fp32'}"] = write_router_json(folder, info)
    return folders


@pytest.mark.parametrize("kind", ["siglip-fp32", "dinov2-int8"])
def test_onnx_image_answers_do_not_depend_on_the_batch(vit_folders, kind):
    import onnx

    ops = {node.op_type for node in onnx.load(str(vit_folders[kind] / "encoder.onnx")).graph.node}
    assert ("DynamicQuantizeLinear" in ops) == kind.endswith("int8")  # int8: one activation scale per call
    assert_images_batch_independent(Router.load(vit_folders[kind]), varied_images(40, seed=1))
