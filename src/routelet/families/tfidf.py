"""TF-IDF (word and character n-grams) + multinomial logistic regression: the baseline every
other family has to beat. No encoder: `dvc exp run -S model=...` never retrains it."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from routelet.families.base import ExportOptions, Family
from routelet.serving.preprocess import preprocess


class TfidfFamily(Family):
    def __init__(self, word_ngrams=(1, 2), char_ngrams=(2, 5), C: float = 10.0, seed: int = 0) -> None:
        self.word_ngrams, self.char_ngrams, self.C, self.seed = word_ngrams, char_ngrams, C, seed

    def fit(self, texts: list[str], labels: list[str]) -> TfidfFamily:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import FeatureUnion, Pipeline

        parts = []
        if self.word_ngrams:
            parts.append(("word", TfidfVectorizer(ngram_range=tuple(self.word_ngrams), sublinear_tf=True,
                                                  lowercase=False)))
        if self.char_ngrams:
            parts.append(("char", TfidfVectorizer(analyzer="char_wb", ngram_range=tuple(self.char_ngrams),
                                                  sublinear_tf=True, lowercase=False)))
        self.pipeline_ = Pipeline([("features", FeatureUnion(parts)), ("clf", LogisticRegression(C=self.C, max_iter=2000, random_state=self.seed))])
        self.pipeline_.fit([preprocess(t) for t in texts], labels)
        for _, vectorizer in self.pipeline_.named_steps["features"].transformer_list:
            # A set pickled in hash-seed order and a memory address (a warning cache): dropped, as
            # sklearn allows, so the same data gives the same file and DVC the same hash.
            vectorizer.stop_words_ = None
            vars(vectorizer).pop("_stop_words_id", None)
        self.labels_ = [str(label) for label in self.pipeline_.classes_]
        return self

    def logits(self, texts: list[str]) -> np.ndarray:
        scores = self.pipeline_.decision_function([preprocess(t) for t in texts])
        # A binary classifier scores class 1 only: softmax([0, z]) is its sigmoid.
        return np.column_stack([np.zeros_like(scores), scores]) if scores.ndim == 1 else scores

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / "model.pkl").open("wb") as out:
            pickle.dump(self, out)

    @classmethod
    def load(cls, folder: Path) -> TfidfFamily:
        with (Path(folder) / "model.pkl").open("rb") as handle:
            return pickle.load(handle)

    def export(self, folder: Path, out: Path, temperature: float, options: ExportOptions) -> dict:
        from routelet.export.tfidf import export_tfidf

        files = export_tfidf(self.pipeline_, out, temperature, labels=self.labels_, coef_dtype="float32")
        return {"kind": "tfidf", "files": files}


FAMILY = TfidfFamily
