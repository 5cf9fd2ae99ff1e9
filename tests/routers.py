"""Tiny router folders for tests: a real tfidf pipeline and a hand-built ONNX graph + tokenizer.

Both use the same taxonomy: banking owns two fine labels (balance, transfer), travel owns
flight, oos is the reject route. Texts made of one label's keywords route there; texts with
no known words (or an even mix of two routes) fall under the 0.55 confidence gate and abstain.
`make_image_router` is a pixels-family image router (screens: calendar, providers, other).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from routelet.serving.preprocess import PREPROCESS_VERSION

LABELS = ["balance", "transfer", "flight", "oos"]
ROUTES = [
    {"name": "banking", "description": "Money questions", "target": "assistant.banking",
     "labels": ["balance", "transfer"]},
    {"name": "travel", "description": "Trips", "target": "assistant.travel", "labels": ["flight"]},
    {"name": "oos", "description": "Anything else", "target": "assistant.fallback",
     "labels": ["oos"]},
]
KEYWORDS = {
    "balance": ["balance", "account", "funds", "savings"],
    "transfer": ["transfer", "send", "wire", "payee"],
    "flight": ["flight", "airport", "boarding", "airline"],
    "oos": ["joke", "weather", "recipe", "song"],
}
FILLER = ["please", "my", "the", "can", "you", "i", "want", "to", "what", "is", "a", "now"]


def synthetic_dataset(n_per_label: int = 40, seed: int = 0) -> tuple[list[str], list[str]]:
    """Seeded sentences: 1-3 keywords of the label among filler words (sometimes an e-mail)."""
    rng = random.Random(seed)
    texts, labels = [], []
    for label in LABELS:
        for _ in range(n_per_label):
            words = rng.sample(FILLER, rng.randint(2, 5)) + rng.sample(KEYWORDS[label], rng.randint(1, 3))
            if rng.random() < 0.2:
                words.append("<email>")
            rng.shuffle(words)
            texts.append(" ".join(words))
            labels.append(label)
    return texts, labels


def router_json(kind: str, files: dict, temperature: float = 1.0, **overrides) -> dict:
    """router.json of a one-tier router of `kind` with these files; `overrides` replace top-level keys."""
    family = "tfidf" if kind == "tfidf" else "embed"
    info = {
        "format_version": 2,
        "model_version": f"{kind}-test0001",
        "family": family,
        "labels": LABELS,
        "routes": ROUTES,
        "reject_route": "oos",
        "input": {"modality": "text", "tokenizer": files.get("tokenizer"), "max_length": 16},
        "preprocess_version": PREPROCESS_VERSION,
        "abstain": {"threshold": 0.55, "margin": 0.0},
        "tiers": [{"family": family, "kind": kind, "files": files, "temperature": temperature,
                   "encoder": None if kind == "tfidf" else {"name": "toy", "source": "tests/routers.py"}}],
        "hashes": {},
        "exported_at": "2026-01-01T00:00:00Z",
        "metrics": {},
    }
    info.update(overrides)
    return info


def write_router_json(folder: Path, info: dict) -> Path:
    (folder / "router.json").write_text(json.dumps(info, indent=2))
    return folder


def tfidf_pipeline(word=(1, 2), char=(2, 4), C: float = 10.0, **vectorizer_kwargs):
    """The training-side pipeline shape: FeatureUnion(word, char_wb) -> LogisticRegression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, Pipeline

    parts = []
    if word:
        parts.append(("word", TfidfVectorizer(analyzer="word", ngram_range=word, sublinear_tf=True,
                                              lowercase=False, **vectorizer_kwargs)))
    if char:
        parts.append(("char", TfidfVectorizer(analyzer="char_wb", ngram_range=char, sublinear_tf=True,
                                              lowercase=False, **vectorizer_kwargs)))
    return Pipeline([("features", FeatureUnion(parts)),
                     ("clf", LogisticRegression(C=C, max_iter=2000, random_state=0))])


def make_tfidf_router(folder: Path, temperature: float = 1.0, **overrides) -> Path:
    """Train the pipeline on the synthetic data, export it, write router.json."""
    from routelet.export.tfidf import export_tfidf
    from routelet.serving.preprocess import preprocess

    texts, labels = synthetic_dataset()
    pipeline = tfidf_pipeline().fit([preprocess(t) for t in texts], labels)
    folder.mkdir(parents=True, exist_ok=True)
    files = export_tfidf(pipeline, folder, temperature=temperature, labels=LABELS)
    return write_router_json(folder, router_json("tfidf", files, temperature=temperature, **overrides))


def make_onnx_router(folder: Path, token_type_ids: bool = False, scale: float = 6.0, **overrides) -> Path:
    """A WordLevel tokenizer and a bag-of-embeddings ONNX graph with hand-set weights.

    Each keyword's embedding is the one-hot of its label, so the masked mean of a text's
    embeddings counts keyword shares; logits = scale * mean, then softmax -> `probs`.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1}
    for words in KEYWORDS.values():
        for word in words:
            vocab[word] = len(vocab)
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))

    n_labels = len(LABELS)
    embedding = np.zeros((len(vocab), n_labels), dtype=np.float32)
    for index, label in enumerate(LABELS):
        for word in KEYWORDS[label]:
            embedding[vocab[word], index] = 1.0
    weights = (np.eye(n_labels) * scale).astype(np.float32)
    inits = [
        numpy_helper.from_array(embedding, "embedding"),
        numpy_helper.from_array(weights, "W"),
        numpy_helper.from_array(np.zeros(n_labels, dtype=np.float32), "b"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
    ]
    nodes = [
        helper.make_node("Gather", ["embedding", "input_ids"], ["emb"]),  # (b, s, d)
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["emb", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["maskf", "axis1"], ["count"], keepdims=1),
        helper.make_node("Max", ["count", "one"], ["count1"]),
        helper.make_node("Div", ["summed", "count1"], ["mean"]),
        helper.make_node("MatMul", ["mean", "W"], ["logits0"]),
        helper.make_node("Add", ["logits0", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "seq"])
              for name in ["input_ids", "attention_mask"] + (["token_type_ids"] if token_type_ids else [])]
    outputs = [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", n_labels])]
    graph = helper.make_graph(nodes, "toy_router", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "model.onnx"))
    files = {"model": "model.onnx", "tokenizer": "tokenizer.json"}
    return write_router_json(folder, router_json("onnx", files, **overrides))


# Fixtures: import them into a test module (`from routers import tfidf_folder, onnx_folder`).
@pytest.fixture(scope="module")
def tfidf_folder(tmp_path_factory) -> Path:
    return make_tfidf_router(tmp_path_factory.mktemp("tfidf") / "router")


@pytest.fixture(scope="module")
def onnx_folder(tmp_path_factory) -> Path:
    return make_onnx_router(tmp_path_factory.mktemp("onnx") / "router")


IMAGE_ROUTES = [{"name": "calendar", "labels": ["calendar_month"], "target": "lora.calendar"},
                {"name": "providers", "labels": ["provider_list"], "target": "lora.providers"},
                {"name": "other", "labels": ["chat"], "target": "acme/base-vlm"}]


def make_image_router(folder: Path) -> Path:
    """A pixels-family image router (weight-free, torch-free, fast) trained on rendered screens:
    calendar_month -> calendar, provider_list -> providers, chat -> other (the reject route)."""
    from routelet.families.base import ExportOptions
    from routelet.families.pixels import PixelsFamily
    from test_pixels import screens

    images, labels = screens(8, 0)
    family = PixelsFamily(C=1.0).fit(images, labels)
    fields = family.export(folder, folder, 1.0, ExportOptions(int8="fp32"))
    info = {"format_version": 2, "model_version": "pixels-test0001", "family": "pixels", "labels": family.labels_,
            "routes": IMAGE_ROUTES, "reject_route": "other", "input": family.input_spec().model_dump(),
            "preprocess_version": PREPROCESS_VERSION, "abstain": {"threshold": 0.5},
            "tiers": [{"family": "pixels", "temperature": 1.0, **fields}]}
    return write_router_json(folder, info)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    return make_image_router(tmp_path_factory.mktemp("image") / "router")
