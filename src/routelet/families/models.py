"""Model families that train in seconds: TF-IDF + LR and frozen embeddings + LR.

Every family follows one shape (scikit-learn's convention): `fit(texts, labels)` returns self,
`logits(texts)` gives uncalibrated scores over `labels_` (softmax(logits / T) are the
probabilities), `save(folder)` / `load(folder)` round-trip it. Texts arrive already
preprocessed from the pool; the families still run the preprocess, which is idempotent, so a
raw request and a pool row go through exactly the same function.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline

from routelet.families.encoders import EmbeddingCache, EncoderSpec
from routelet.serving.preprocess import preprocess


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def new_head(C: float, seed: int) -> LogisticRegression:
    return LogisticRegression(C=C, max_iter=2000, random_state=seed)


def head_weights(head: LogisticRegression) -> tuple[np.ndarray, np.ndarray]:
    """(coef (n_labels, dim), intercept (n_labels,)) as float32: the head as export wants it."""
    return head.coef_.astype(np.float32), head.intercept_.astype(np.float32)


def save_head(folder: Path, head: LogisticRegression, meta: dict) -> None:
    """head.npz (the weights) and model.json (`meta` plus the labels) of an encoder + LR model."""
    coef, intercept = head_weights(head)
    np.savez(folder / "head.npz", coef=coef, intercept=intercept)
    meta = {"family": meta["family"], "labels": [str(c) for c in head.classes_], **meta}
    (folder / "model.json").write_text(json.dumps(meta, indent=2) + "\n")


def load_head(folder: Path, family: str) -> tuple[dict, LogisticRegression]:
    """model.json and the head saved by `save_head`, checking the folder holds `family`."""
    meta = json.loads((folder / "model.json").read_text())
    if meta.get("family") != family:
        raise ValueError(f"{folder / 'model.json'}: family is {meta.get('family')!r}, not {family!r}")
    weights = np.load(folder / "head.npz")
    head = LogisticRegression()
    head.classes_ = np.array(meta["labels"])
    head.coef_, head.intercept_ = weights["coef"], weights["intercept"]
    return meta, head


class TfidfModel:
    """Word and character n-gram TF-IDF, then multinomial logistic regression."""

    family = "tfidf"

    def __init__(self, word_ngrams=(1, 2), char_ngrams=(2, 5), C: float = 10.0, seed: int = 0) -> None:
        self.word_ngrams, self.char_ngrams, self.C, self.seed = word_ngrams, char_ngrams, C, seed

    def fit(self, texts: list[str], labels: list[str]) -> TfidfModel:
        parts = []
        if self.word_ngrams:
            parts.append(("word", TfidfVectorizer(ngram_range=tuple(self.word_ngrams), sublinear_tf=True, lowercase=False)))
        if self.char_ngrams:
            parts.append(
                ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=tuple(self.char_ngrams), sublinear_tf=True, lowercase=False))
            )
        self.pipeline_ = Pipeline([("features", FeatureUnion(parts)), ("clf", new_head(self.C, self.seed))])
        self.pipeline_.fit([preprocess(t) for t in texts], labels)
        for _, vectorizer in self.pipeline_.named_steps["features"].transformer_list:
            # A set pickled in hash-seed order and a memory address (a warning cache): dropped, as
            # sklearn allows, so the same data gives the same file and DVC the same hash.
            vectorizer.stop_words_ = None
            vars(vectorizer).pop("_stop_words_id", None)
        self.labels_ = [str(label) for label in self.pipeline_.classes_]
        return self

    def logits(self, texts: list[str]) -> np.ndarray:
        return self.pipeline_.decision_function([preprocess(t) for t in texts])

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / "model.pkl").open("wb") as out:
            pickle.dump(self, out)

    @classmethod
    def load(cls, folder: str | Path) -> TfidfModel:
        with (Path(folder) / "model.pkl").open("rb") as handle:
            return pickle.load(handle)


class EmbedModel:
    """A frozen sentence encoder (cached embeddings) and a logistic-regression head."""

    family = "embed"

    def __init__(self, encoder: EncoderSpec, C: float = 10.0, seed: int = 0, batch_size: int = 64) -> None:
        self.encoder, self.C, self.seed, self.batch_size = encoder, C, seed, batch_size

    def embed(self, texts: list[str], use_cache: bool = True) -> np.ndarray:
        """Cached embeddings; `use_cache=False` runs the encoder, as a latency measurement must."""
        if not hasattr(self, "_cache"):
            self._cache = EmbeddingCache(self.encoder)
        if use_cache:
            return self._cache.embed(texts, batch_size=self.batch_size)
        return self._cache.encoder.encode([preprocess(t) for t in texts], convert_to_numpy=True)

    def fit(self, texts: list[str], labels: list[str]) -> EmbedModel:
        self.head_ = new_head(self.C, self.seed).fit(self.embed(texts), labels)
        self.labels_ = [str(label) for label in self.head_.classes_]
        return self

    def logits(self, texts: list[str], use_cache: bool = True) -> np.ndarray:
        return self.head_.decision_function(self.embed(texts, use_cache))

    @property
    def weights(self) -> tuple[np.ndarray, np.ndarray]:
        return head_weights(self.head_)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"family": self.family, "encoder": self.encoder.__dict__, "C": self.C, "seed": self.seed,
                "batch_size": self.batch_size}
        save_head(folder, self.head_, meta)

    @classmethod
    def load(cls, folder: str | Path) -> EmbedModel:
        meta, head = load_head(Path(folder), cls.family)
        model = cls(EncoderSpec(**meta["encoder"]), C=meta["C"], seed=meta["seed"], batch_size=meta["batch_size"])
        model.head_, model.labels_ = head, meta["labels"]
        return model
