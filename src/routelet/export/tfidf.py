"""Turn a fitted TF-IDF + logistic-regression sklearn pipeline into the tfidf router files.

    files = export_tfidf(pipeline, "router", temperature=1.7, labels=taxonomy_labels)

writes `router/tfidf.json` (per feature part: analyzer settings and vocabulary term -> column)
and `router/tfidf.npz` (per-part idf arrays, `coef` and `intercept` already divided by the
temperature) and returns the `files` dict for router.json. The caller writes router.json.
`routelet.serving.runtime` reads these files and reproduces `pipeline.predict_proba` without sklearn.
Runs at export time, so it may import sklearn; serving never imports this module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

TFIDF_FORMAT = 1
VOCAB_FILE, WEIGHTS_FILE = "tfidf.json", "tfidf.npz"


def _steps(pipeline: Any) -> tuple[Any, Any]:
    """The feature step and the classifier of a Pipeline([... features ..., clf])."""
    steps = getattr(pipeline, "steps", None)
    if not steps or len(steps) != 2:
        raise ValueError(
            "export_tfidf expects Pipeline([('features', FeatureUnion or TfidfVectorizer), "
            f"('clf', LogisticRegression)]); got {type(pipeline).__name__} with steps {steps!r}"
        )
    return steps[0][1], steps[1][1]


def _parts(features: Any) -> list[tuple[str, Any, float]]:
    """(name, vectorizer, weight) per active FeatureUnion part, in column order."""
    if not hasattr(features, "transformer_list"):
        return [("features", features, 1.0)]
    weights = features.transformer_weights or {}
    parts = [
        (name, vec, float(weights.get(name, 1.0)))
        for name, vec in features.transformer_list
        if vec not in ("drop", None)
    ]
    if not parts:
        raise ValueError("the FeatureUnion has no active transformer: nothing to export")
    return parts


def _describe(name: str, vec: Any, weight: float) -> dict:
    """The settings the runtime needs to rebuild this vectorizer's analyzer, checked first."""
    kind = type(vec).__name__
    if kind != "TfidfVectorizer":
        raise ValueError(f"part {name!r} is a {kind}; only TfidfVectorizer parts can be exported")
    for attr in ("preprocessor", "tokenizer"):
        if getattr(vec, attr) is not None:
            raise ValueError(f"part {name!r} uses a custom {attr}; the runtime cannot rebuild it")
    if callable(vec.analyzer) or vec.analyzer not in ("word", "char", "char_wb"):
        raise ValueError(f"part {name!r}: analyzer {vec.analyzer!r} is not word/char/char_wb")
    if vec.strip_accents not in (None, "ascii", "unicode"):
        raise ValueError(f"part {name!r}: strip_accents {vec.strip_accents!r} is a callable")
    if vec.input != "content":
        raise ValueError(f"part {name!r}: input={vec.input!r}; only 'content' (strings) works")
    stop_words = vec.get_stop_words() if vec.analyzer == "word" else None
    return {
        "name": name,
        "analyzer": vec.analyzer,
        "ngram_range": [int(n) for n in vec.ngram_range],
        "token_pattern": vec.token_pattern if vec.analyzer == "word" else None,
        "lowercase": bool(vec.lowercase),
        "strip_accents": vec.strip_accents,
        "stop_words": sorted(stop_words) if stop_words else None,
        "binary": bool(vec.binary),
        "sublinear_tf": bool(vec.sublinear_tf),
        "use_idf": bool(vec.use_idf),
        "smooth_idf": bool(vec.smooth_idf),  # informational: idf_ is exported already computed
        "norm": vec.norm,
        "weight": weight,
        "vocabulary": {term: int(col) for term, col in vec.vocabulary_.items()},
    }


def _linear_head(clf: Any, labels: list[str] | None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(labels, coef, intercept) with one row per label, so softmax(X @ coef.T + b) = predict_proba."""
    if not hasattr(clf, "coef_") or not hasattr(clf, "classes_"):
        raise ValueError(f"the classifier {type(clf).__name__} is not a fitted linear model")
    classes = [str(c) for c in clf.classes_]
    coef = np.asarray(clf.coef_, dtype=np.float64)
    intercept = np.broadcast_to(np.asarray(clf.intercept_, dtype=np.float64), (coef.shape[0],))
    if len(classes) == 2 and coef.shape[0] == 1:
        # Binary logistic regression: sigmoid(z) == softmax([0, z]) exactly.
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.array([0.0, intercept[0]])
    if labels is None:
        return classes, coef, np.array(intercept)
    labels = [str(label) for label in labels]
    if sorted(labels) != sorted(classes):
        raise ValueError(
            f"labels {labels} are not the classifier's classes {classes}: export the labels "
            "the pipeline was trained on"
        )
    order = [classes.index(label) for label in labels]
    return labels, coef[order], np.array(intercept)[order]


def export_tfidf(
    pipeline: Any,
    folder: str | Path,
    temperature: float,
    labels: list[str] | None = None,
    coef_dtype: str = "float64",
) -> dict:
    """Write tfidf.json and tfidf.npz into `folder`; return router.json's `files` dict.

    `labels` reorders the output columns (default: the classifier's `classes_` order); router.json's
    `labels` must then be written in exactly this order (tfidf.json records it and the runtime
    checks). `coef_dtype="float32"` halves the file for big vocabularies at ~1e-6 precision cost.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    features, clf = _steps(pipeline)
    active = _parts(features)
    labels, coef, intercept = _linear_head(clf, labels)
    parts, arrays, offset = [], {}, 0
    for index, (name, vec, weight) in enumerate(active):
        part = _describe(name, vec, weight)
        part["offset"], part["n_features"] = offset, len(part["vocabulary"])
        offset += part["n_features"]
        if part["use_idf"]:
            arrays[f"idf_{index}"] = np.asarray(vec.idf_, dtype=np.float64)
        parts.append(part)
    if coef.shape[1] != offset:
        raise ValueError(f"the classifier has {coef.shape[1]} inputs but the features give {offset}")
    arrays["coef"] = (coef / temperature).astype(coef_dtype)
    arrays["intercept"] = intercept / temperature

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"tfidf_format": TFIDF_FORMAT, "labels": labels, "n_features": offset, "parts": parts}
    (folder / VOCAB_FILE).write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    with open(folder / WEIGHTS_FILE, "wb") as f:
        np.savez(f, **arrays)
    return {"model": WEIGHTS_FILE, "vocab": VOCAB_FILE}
