"""The tfidf tier of a router folder in numpy: sklearn's TfidfVectorizer analyzers, transcribed to
match them exactly, then the linear head and softmax (temperature folded in by the export).

`tfidf.json` (vocabularies and analyzer settings) and `tfidf.npz` (idf, coef, intercept) are
written by `routelet.export.tfidf`. No sklearn here: the runtime install stays light.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

from routelet.serving.router_format import router_error

_WHITE_SPACES = re.compile(r"\s\s+")


def _strip_accents_unicode(s: str) -> str:
    if s.isascii():
        return s
    return "".join(c for c in unicodedata.normalize("NFKD", s) if not unicodedata.combining(c))


def _strip_accents_ascii(s: str) -> str:
    return unicodedata.normalize("NFKD", s).encode("ASCII", "ignore").decode("ASCII")


def _word_ngrams(tokens: list[str], lo: int, hi: int) -> list[str]:
    if hi == 1:
        return tokens
    out = list(tokens) if lo == 1 else []
    for n in range(max(lo, 2), min(hi, len(tokens)) + 1):
        out.extend(" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return out


def _char_ngrams(text: str, lo: int, hi: int) -> list[str]:
    text = _WHITE_SPACES.sub(" ", text)
    out = list(text) if lo == 1 else []
    for n in range(max(lo, 2), min(hi, len(text)) + 1):
        out.extend(text[i : i + n] for i in range(len(text) - n + 1))
    return out


def _char_wb_ngrams(text: str, lo: int, hi: int) -> list[str]:
    out = []
    for word in _WHITE_SPACES.sub(" ", text).split():
        word = f" {word} "
        for n in range(lo, hi + 1):
            offset = 0
            out.append(word[offset : offset + n])
            while offset + n < len(word):
                offset += 1
                out.append(word[offset : offset + n])
            if offset == 0:  # a word shorter than n is counted once, as sklearn does
                break
    return out


def _analyzer(part: dict) -> Callable[[str], list[str]]:
    lo, hi = part["ngram_range"]
    accents = {None: None, "unicode": _strip_accents_unicode, "ascii": _strip_accents_ascii}[
        part.get("strip_accents")
    ]
    lower = part.get("lowercase", False)

    def prepare(text: str) -> str:
        text = text.lower() if lower else text
        return accents(text) if accents else text

    if part["analyzer"] == "char_wb":
        return lambda text: _char_wb_ngrams(prepare(text), lo, hi)
    if part["analyzer"] == "char":
        return lambda text: _char_ngrams(prepare(text), lo, hi)
    findall = re.compile(part["token_pattern"]).findall
    stop = frozenset(part.get("stop_words") or ())

    def words(text: str) -> list[str]:
        tokens = findall(prepare(text))
        return _word_ngrams([t for t in tokens if t not in stop] if stop else tokens, lo, hi)

    return words


class _TfidfPart:
    """One TfidfVectorizer: text -> (global columns, tf-idf values), normalised like sklearn."""

    def __init__(self, part: dict, idf: np.ndarray | None):
        self.analyze = _analyzer(part)
        self.vocabulary: dict[str, int] = part["vocabulary"]
        self.offset = part["offset"]
        self.idf = idf
        self.binary, self.sublinear = part.get("binary", False), part["sublinear_tf"]
        self.norm, self.weight = part["norm"], part.get("weight", 1.0)

    def __call__(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        vocab = self.vocabulary
        counts = Counter(vocab[t] for t in self.analyze(text) if t in vocab)
        cols = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        tf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
        if self.binary:
            tf[:] = 1.0
        if self.sublinear:
            tf = np.log(tf) + 1.0
        if self.idf is not None:
            tf *= self.idf[cols]
        if self.norm == "l2":
            total = math.sqrt(float(np.dot(tf, tf)))
        elif self.norm == "l1":
            total = float(np.abs(tf).sum())
        else:
            total = 0.0
        if total > 0:
            tf /= total
        return cols + self.offset, tf * self.weight if self.weight != 1.0 else tf


class TfidfModel:
    """tfidf.json + tfidf.npz: concatenated tf-idf parts -> linear head -> softmax."""

    def __init__(self, folder: Path, files: dict[str, str], labels: list[str]):
        weights_path = folder / files["model"]
        vocab_path = folder / files.get("vocab", "tfidf.json")
        for path in (weights_path, vocab_path):
            if not path.is_file():
                raise router_error(path, "file is missing")
        try:
            meta = json.loads(vocab_path.read_text(encoding="utf-8"))
            parts = meta["parts"]
        except (ValueError, KeyError, TypeError) as exc:
            raise router_error(vocab_path, f"not a valid tfidf.json ({exc!r})") from None
        if meta.get("labels") != labels:
            raise router_error(
                vocab_path,
                f"labels {meta.get('labels')} are not router.json's labels {labels} in the "
                "same order",
                "write router.json's labels exactly as export_tfidf recorded them",
            )
        try:
            with np.load(weights_path, allow_pickle=False) as npz:
                arrays = {key: npz[key] for key in npz.files}
            coef, intercept = arrays["coef"], arrays["intercept"]
        except Exception as exc:
            raise router_error(weights_path, f"not a valid tfidf.npz ({exc!r})") from None
        n_labels, n_features = len(labels), meta.get("n_features")
        if coef.shape != (n_labels, n_features) or intercept.shape != (n_labels,):
            raise router_error(weights_path, f"coef {coef.shape} / intercept {intercept.shape} do not fit "
                        f"{n_labels} labels x {n_features} features")
        self.parts = []
        for index, part in enumerate(parts):
            idf = arrays.get(f"idf_{index}") if part.get("use_idf", True) else None
            if part.get("use_idf", True) and (idf is None or idf.shape != (part["n_features"],)):
                raise router_error(weights_path, f"idf_{index} is missing or has the wrong length")
            self.parts.append(_TfidfPart(part, idf))
        # Rows of coef.T are contiguous per feature, so gathering one text's columns is cheap.
        self.coef_t = np.ascontiguousarray(coef.T, dtype=np.float64)
        self.intercept = intercept.astype(np.float64)

    def read(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities (n, labels), whether each text has an n-gram of the vocabulary (n,))."""
        logits = np.tile(self.intercept, (len(texts), 1))
        known = np.zeros(len(texts), dtype=bool)
        for row, text in enumerate(texts):
            pieces = [part(text) for part in self.parts]
            cols = np.concatenate([p[0] for p in pieces])
            known[row] = len(cols) > 0
            # Sparse row times the head: only the rows of coef.T this text uses are touched.
            logits[row] += np.concatenate([p[1] for p in pieces]) @ self.coef_t[cols]
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        return logits / logits.sum(axis=1, keepdims=True), known

    def __call__(self, texts: list[str]) -> np.ndarray:
        return self.read(texts)[0]
