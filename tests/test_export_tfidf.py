"""export_tfidf + the runtime's numpy TF-IDF reproduce sklearn's predict_proba exactly."""

from __future__ import annotations

import random

import numpy as np
import pytest
from routers import router_json, synthetic_dataset, tfidf_pipeline, write_router_json
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline

from routelet.export.tfidf import export_tfidf
from routelet.serving.preprocess import preprocess
from routelet.serving.runtime import Router, RouterError

# Raw strings that stress the analyzers: case, accents, runs of spaces and tabs, punctuation,
# one-letter words, words shorter than the n-gram size, unseen words, empty text.
EDGE_TEXTS = [
    "", " ", "a", "Balance  of\tmy   ACCOUNT", "Café crème, naïve résumé!", "wire\n\nthe payee",
    "x y z", "flight-boarding at the airport?", "joke joke joke joke", "ñ ü ö", "12 34 5678",
    "send 'quoted' words; semi-colons", "\u00a0nbsp\u2003em-space", "emoji 🙂 test",
]


def held_out(n: int = 60, seed: int = 1) -> list[str]:
    texts, _ = synthetic_dataset(n_per_label=n // 4, seed=seed)
    rng = random.Random(seed)
    return [t if rng.random() < 0.5 else t.upper() for t in texts] + EDGE_TEXTS


def export_and_load(pipeline, folder, labels, temperature=1.0, **kwargs) -> Router:
    files = export_tfidf(pipeline, folder, temperature=temperature, labels=labels, **kwargs)
    routes = [{"name": x, "description": x, "target": f"t.{x}", "labels": [x]} for x in labels]
    info = router_json("tfidf", files, labels=labels, routes=routes, reject_route=None)
    return Router.load(write_router_json(folder, info))


def fitted(pipeline, seed: int = 0):
    texts, labels = synthetic_dataset(seed=seed)
    return pipeline.fit([preprocess(t) for t in texts], labels)


CONFIGS = {
    "word+char_wb": dict(word=(1, 2), char=(2, 4)),
    "word only": dict(word=(1, 3), char=None),
    "char_wb only": dict(word=None, char=(1, 5)),
    "char_wb 3-3": dict(word=None, char=(3, 3)),
    "no sublinear, l1, no smooth idf": dict(word=(1, 1), char=(2, 3)),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_parity_with_sklearn(tmp_path, name):
    pipeline = fitted(tfidf_pipeline(**CONFIGS[name]))
    if name.startswith("no sublinear"):
        for _, vec in pipeline.named_steps["features"].transformer_list:
            vec.set_params(sublinear_tf=False, norm="l1", smooth_idf=False)
        pipeline = fitted(pipeline)
    labels = [str(c) for c in pipeline.classes_]
    router = export_and_load(pipeline, tmp_path, labels)
    texts = held_out()
    # Router.probs preprocesses; the analyzers themselves are checked on raw text too.
    expected = pipeline.predict_proba([preprocess(t) for t in texts])
    np.testing.assert_allclose(router.probs(texts), expected, atol=1e-9, rtol=0)
    np.testing.assert_allclose(router._models[0](texts), pipeline.predict_proba(texts), atol=1e-9, rtol=0)


def test_parity_for_other_vectorizer_settings(tmp_path):
    """lowercase, strip_accents, stop words, binary, no idf, no norm, char analyzer, a
    custom token pattern and FeatureUnion weights are all read from the fitted pipeline."""
    features = FeatureUnion(
        [
            ("word", TfidfVectorizer(lowercase=True, strip_accents="unicode", stop_words="english",
                                     binary=True, ngram_range=(1, 2), token_pattern=r"(?u)\b\w+\b")),
            ("char", TfidfVectorizer(analyzer="char", ngram_range=(1, 3), use_idf=False, norm=None,
                                     strip_accents="ascii", lowercase=False)),
            ("dropped", "drop"),
        ],
        transformer_weights={"word": 2.0, "char": 0.5},
    )
    pipeline = Pipeline([("features", features), ("clf", LogisticRegression(max_iter=3000))])
    texts, labels = synthetic_dataset()
    pipeline.fit(texts + ["Café résumé naïve"], labels + ["oos"])
    router = export_and_load(pipeline, tmp_path, sorted(set(labels)))
    raw = held_out()
    np.testing.assert_allclose(router._models[0](raw), pipeline.predict_proba(raw), atol=1e-9, rtol=0)


def test_temperature_and_label_order(tmp_path):
    pipeline = fitted(tfidf_pipeline())
    labels = ["oos", "flight", "transfer", "balance"]  # not the sorted classes_ order
    router = export_and_load(pipeline, tmp_path, labels, temperature=2.5)
    texts = [preprocess(t) for t in held_out()]
    logits = pipeline.decision_function(texts) / 2.5
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    order = [list(pipeline.classes_).index(x) for x in labels]
    np.testing.assert_allclose(router._models[0](texts), expected[:, order], atol=1e-9, rtol=0)


def test_binary_classifier(tmp_path):
    texts, labels = synthetic_dataset()
    keep = [i for i, y in enumerate(labels) if y in ("flight", "oos")]
    pipeline = tfidf_pipeline().fit([texts[i] for i in keep], [labels[i] for i in keep])
    router = export_and_load(pipeline, tmp_path, ["flight", "oos"])
    raw = held_out()
    np.testing.assert_allclose(router._models[0](raw), pipeline.predict_proba(raw), atol=1e-9, rtol=0)


def test_float32_coefficients(tmp_path):
    pipeline = fitted(tfidf_pipeline())
    router = export_and_load(pipeline, tmp_path, [str(c) for c in pipeline.classes_], coef_dtype="float32")
    raw = held_out()
    np.testing.assert_allclose(router._models[0](raw), pipeline.predict_proba(raw), atol=1e-5, rtol=0)


def test_files_dict_and_contents(tmp_path):
    import json

    pipeline = fitted(tfidf_pipeline())
    files = export_tfidf(pipeline, tmp_path / "new", temperature=1.0)
    assert files == {"model": "tfidf.npz", "vocab": "tfidf.json"}
    meta = json.loads((tmp_path / "new" / "tfidf.json").read_text())
    assert meta["labels"] == [str(c) for c in pipeline.classes_]
    assert [p["analyzer"] for p in meta["parts"]] == ["word", "char_wb"]
    assert [p["ngram_range"] for p in meta["parts"]] == [[1, 2], [2, 4]]
    npz = np.load(tmp_path / "new" / "tfidf.npz")
    assert npz["coef"].shape == (4, meta["n_features"])


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: p.named_steps["features"].transformer_list[0][1].set_params(tokenizer=str.split),
         "custom tokenizer"),
        (lambda p: p.named_steps["features"].transformer_list[0][1].set_params(analyzer=str.split),
         "analyzer"),
    ],
)
def test_unsupported_pipelines_are_refused(tmp_path, change, message):
    pipeline = fitted(tfidf_pipeline())
    change(pipeline)
    with pytest.raises(ValueError, match=message):
        export_tfidf(pipeline, tmp_path, temperature=1.0)


def test_wrong_labels_and_temperature_are_refused(tmp_path):
    pipeline = fitted(tfidf_pipeline())
    with pytest.raises(ValueError, match="not the classifier's classes"):
        export_tfidf(pipeline, tmp_path, temperature=1.0, labels=["balance", "nope"])
    with pytest.raises(ValueError, match="temperature"):
        export_tfidf(pipeline, tmp_path, temperature=0.0)


def test_router_json_labels_must_match_export_order(tmp_path):
    pipeline = fitted(tfidf_pipeline())
    files = export_tfidf(pipeline, tmp_path, temperature=1.0)  # classes_ order: sorted
    routes = [{"name": "all", "target": None, "labels": ["oos", "flight", "transfer", "balance"]}]
    info = router_json("tfidf", files, labels=["oos", "flight", "transfer", "balance"], routes=routes,
                       reject_route=None)
    with pytest.raises(RouterError, match="same order"):
        Router.load(write_router_json(tmp_path, info))
