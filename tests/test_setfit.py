"""SetfitFamily on a tiny random-weight BERT built here: no network, a few seconds."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from tiny_encoder import build_tiny_encoder

from routelet.families import encoders
from routelet.families.encoders import EncoderSpec
from routelet.families.setfit import SetfitFamily, hard_negative_pool, sample_batches, use_bf16

TOPICS = {
    "weather": "rain sun cloud forecast snow wind storm",
    "music": "song play album artist volume track radio",
    "banking": "balance money transfer account card bill pay",
}
FILLER = "please can you tell me the what is my now today".split()


def synthetic(seed: int, per_label: int = 12) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for label, words in TOPICS.items():
        words = words.split()
        for _ in range(per_label):
            tokens = list(rng.choice(words, 3)) + list(rng.choice(FILLER, 3))
            rng.shuffle(tokens)
            texts.append(" ".join(tokens))
            labels.append(label)
    return texts, labels


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> EncoderSpec:
    words = sorted({w for t in TOPICS.values() for w in t.split()} | set(FILLER))
    return EncoderSpec(name="tiny", source=str(build_tiny_encoder(tmp_path_factory.mktemp("tiny-bert"), words=words)))


@pytest.fixture(autouse=True)
def embedding_cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setattr(encoders, "CACHE_ROOT", tmp_path / "cache")


def fit(spec: EncoderSpec, **overrides) -> SetfitFamily:
    params = dict(
        max_steps=6, batch_size=4, learning_rate=1e-3, hard_negatives=True, hard_negative_k=3, train_layers=None,
        precision="fp32", seed=0, progress=False,
    )
    texts, labels = synthetic(seed=1)
    return SetfitFamily(spec, **(params | overrides)).fit(texts, labels)


def test_fit_gives_logits_over_labels(tiny_encoder):
    model = fit(tiny_encoder)
    texts, _ = synthetic(seed=2, per_label=3)
    logits = model.logits(texts)
    assert model.labels_ == sorted(TOPICS)
    assert logits.shape == (len(texts), 3)
    coef, intercept = model.head_.coef, model.head_.intercept
    assert coef.shape == (3, 32) and coef.dtype == np.float32 and intercept.shape == (3,)
    assert len(model.loss_history_) == 6 and all(np.isfinite(model.loss_history_))


def test_save_load_round_trip(tiny_encoder, tmp_path):
    from sentence_transformers import SentenceTransformer

    model = fit(tiny_encoder)
    model.save(tmp_path / "setfit")
    meta = json.loads((tmp_path / "setfit" / "model.json").read_text())
    assert meta["labels"] == model.labels_
    assert meta["hyperparams"]["max_steps"] == 6 and meta["encoder"]["name"] == "tiny"
    # The body is a plain sentence-transformers folder, pooling and normalisation included.
    modules = json.loads((tmp_path / "setfit" / "body" / "modules.json").read_text())
    assert any("Pooling" in m["type"] for m in modules) and any("Normalize" in m["type"] for m in modules)
    body = SentenceTransformer(str(tmp_path / "setfit" / "body"), device="cpu")
    texts, _ = synthetic(seed=3, per_label=3)
    np.testing.assert_allclose(np.linalg.norm(body.encode(texts), axis=1), 1.0, rtol=1e-5)

    loaded = SetfitFamily.load(tmp_path / "setfit")
    assert loaded.labels_ == model.labels_
    np.testing.assert_array_equal(loaded.head_.coef, model.head_.coef)
    np.testing.assert_allclose(loaded.logits(texts), model.logits(texts), rtol=0, atol=1e-6)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_same_seed_same_model(tiny_encoder, precision):
    texts, _ = synthetic(seed=4, per_label=3)
    first = fit(tiny_encoder, precision=precision).logits(texts)
    second = fit(tiny_encoder, precision=precision).logits(texts)
    np.testing.assert_allclose(first, second, rtol=0, atol=1e-6)
    assert not np.allclose(first, fit(tiny_encoder, precision=precision, seed=1).logits(texts), atol=1e-6)


def test_unknown_precision_is_named():
    with pytest.raises(ValueError, match="precision is 'fp16'"):
        use_bf16("fp16")


def test_fine_tune_moves_the_body_and_frozen_layers_stay(tiny_encoder):
    from routelet.families.encoders import load_sentence_encoder

    before = load_sentence_encoder(tiny_encoder)[0].auto_model
    model = fit(tiny_encoder, train_layers=1)
    after = model.body_[0].auto_model
    same = lambda a, b: all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))  # noqa: E731
    assert same(before.embeddings, after.embeddings)
    assert same(before.encoder.layer[0], after.encoder.layer[0])
    assert not same(before.encoder.layer[1], after.encoder.layer[1])


def test_split_forward_matches_full_forward(tiny_encoder):
    from routelet.families.encoders import load_sentence_encoder
    from routelet.families.setfit import _LayerCache

    body = load_sentence_encoder(tiny_encoder).eval()
    cache = _LayerCache.build(body, n_frozen=1)
    assert cache is not None, "the cached lower-layer path should reproduce the full forward on BERT"
    texts, _ = synthetic(seed=5, per_label=2)
    cache.fill(texts, batch_size=4, progress=False)
    with torch.no_grad():
        np.testing.assert_allclose(cache.embed(texts).numpy(), body.encode(texts), atol=1e-5)


@pytest.mark.parametrize("batch_size", [2, 3, 8])
def test_sampling_caps_and_pairs(batch_size):
    texts, labels = synthetic(seed=6, per_label=5)
    labels = labels + ["lonely"]  # one row: never paired, never an anchor
    negatives = [np.array([j for j in range(len(labels)) if labels[j] != labels[i]][:3]) for i in range(len(labels))]
    batches = sample_batches(labels, max_steps=9, batch_size=batch_size, seed=0, negatives=negatives)
    assert len(batches) == 9
    per_batch = min(batch_size, 3)
    assert all(len(batch) == per_batch for batch in batches)
    for batch in batches:
        assert len({labels[a] for a, _, _ in batch}) == per_batch  # distinct labels: true negatives
        for anchor, positive, negative in batch:
            assert anchor != positive and labels[anchor] == labels[positive] != "lonely"
            assert negative in negatives[anchor] and labels[negative] != labels[anchor]
    # The round robin gives every pairable label the same share of anchors.
    counts = Counter(labels[a] for batch in batches for a, _, _ in batch)
    assert max(counts.values()) - min(counts.values()) <= 1
    assert sample_batches(labels, 9, batch_size, 0, negatives) == batches


def test_fit_respects_the_step_cap(tiny_encoder):
    model = fit(tiny_encoder, max_steps=3, batch_size=2)
    assert len(model.batches_) == 3 and sum(len(b) for b in model.batches_) == 3 * 2
    assert len(fit(tiny_encoder, max_steps=0).loss_history_) == 0


def test_hard_negatives_are_near_and_of_another_label():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(30, 8)).astype(np.float32)
    labels = [str(i % 3) for i in range(30)]
    pool = hard_negative_pool(vectors, labels, k=4, chunk=7)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    for i, negatives in enumerate(pool):
        assert len(negatives) == 4 and all(labels[j] != labels[i] for j in negatives)
        others = [j for j in range(30) if labels[j] != labels[i]]
        best = sorted(others, key=lambda j: -unit[i] @ unit[j])[:4]
        assert set(negatives) == set(best)
