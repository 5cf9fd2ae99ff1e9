"""Load a router folder and route texts, without torch, sklearn or transformers.

    from routelet.serving.runtime import Router
    router = Router.load("router", threads=1)
    router.route(["what's my balance", "book a flight"], top_k=3)
    router.route_one("what's my balance")

A router folder is `router.json` (the one description of a shipped model: labels, routes,
abstention gate, files) plus the model files of its kind: `model.onnx` + `tokenizer.json`
(onnx kind, run with onnxruntime) or `tfidf.json` + `tfidf.npz` (tfidf kind, written by
`routelet.export.tfidf` and recomputed here in numpy, matching sklearn's predict_proba).
Only numpy, onnxruntime, tokenizers and the stdlib are imported, so serving stays light.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

from routelet.serving.preprocess import PREPROCESS_VERSION, preprocess

FORMAT_VERSION = 1
ONNX_BATCH = 64  # rows per onnxruntime call: bounds memory and padding waste for any batch size
_FIX = "re-run the export stage (`dvc repro`) or point --router at a folder with router.json"


class RouterError(ValueError):
    """A router folder that cannot be served; the message says where and what to do."""


def _fail(where: Path | str, problem: str, fix: str = _FIX) -> RouterError:
    return RouterError(f"{where}: {problem}; {fix}")


# --------------------------------------------------------------------------------------------
# router.json


def _check_info(path: Path, info: Any) -> dict:
    """Validate router.json's fields the runtime relies on; raise RouterError naming the field."""
    if not isinstance(info, dict):
        raise _fail(path, "router.json must be a JSON object")
    version = info.get("format_version")
    if version != FORMAT_VERSION:
        raise _fail(
            path,
            f"format_version {version!r} is not supported (this routelet reads {FORMAT_VERSION})",
            "install the routelet version that exported it, or re-export with this one",
        )
    if info.get("kind") not in ("onnx", "tfidf"):
        raise _fail(path, f"kind {info.get('kind')!r} must be 'onnx' or 'tfidf'")
    if not isinstance(info.get("model_version"), str):
        raise _fail(path, "model_version must be a string")
    labels = info.get("labels")
    if not labels or not all(isinstance(x, str) for x in labels) or len(set(labels)) != len(labels):
        raise _fail(path, "labels must be a non-empty list of distinct strings")
    routes = info.get("routes")
    if not isinstance(routes, list) or not routes:
        raise _fail(path, "routes must be a non-empty list")
    owner: dict[str, str] = {}
    names = []
    for i, route in enumerate(routes):
        where = f"routes[{i}]"
        if not isinstance(route, dict) or not isinstance(route.get("name"), str):
            raise _fail(path, f"{where} must be an object with a string name")
        if route.get("target") is not None and not isinstance(route["target"], str):
            raise _fail(path, f"{where}.target must be a string or null")
        if not isinstance(route.get("labels"), list) or not route["labels"]:
            raise _fail(path, f"{where}.labels must be a non-empty list")
        for label in route["labels"]:
            if not isinstance(label, str) or label not in labels:
                raise _fail(path, f"{where} ({route['name']}) owns {label!r}, which is not in labels")
            if label in owner:
                raise _fail(path, f"label {label!r} belongs to both {owner[label]!r} and {route['name']!r}")
            owner[label] = route["name"]
        names.append(route["name"])
    if len(set(names)) != len(names):
        raise _fail(path, "route names must be distinct")
    orphans = [x for x in labels if x not in owner]
    if orphans:
        raise _fail(path, f"labels {orphans} belong to no route, so their probability would be lost")
    if info.get("reject_route") is not None and info["reject_route"] not in names:
        raise _fail(path, f"reject_route {info['reject_route']!r} is not one of the routes {names}")
    abstain = info.get("abstain") or {}
    if not isinstance(abstain, dict):
        raise _fail(path, "abstain must be an object like {\"threshold\": 0.55, \"margin\": 0.0}")
    for key in ("threshold", "margin"):
        if not isinstance(abstain.get(key, 0.0), (int, float)):
            raise _fail(path, f"abstain.{key} must be a number")
    if info.get("preprocess_version") != PREPROCESS_VERSION:
        raise _fail(
            path,
            f"preprocess_version {info.get('preprocess_version')!r} differs from this routelet's "
            f"{PREPROCESS_VERSION!r}, so inputs would be prepared differently than in training",
            "serve it with the routelet version that exported it, or retrain and re-export",
        )
    if not isinstance(info.get("files"), dict) or not isinstance(info["files"].get("model"), str):
        raise _fail(path, "files.model must name the model file")
    return info


# --------------------------------------------------------------------------------------------
# onnx kind


class _OnnxModel:
    """model.onnx (input_ids, attention_mask[, token_type_ids] -> probs) + tokenizer.json."""

    def __init__(self, folder: Path, info: dict, threads: int):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        files = info["files"]
        model_path = folder / files["model"]
        tok_path = folder / files.get("tokenizer", "tokenizer.json")
        max_length = info.get("max_length")
        if not isinstance(max_length, int) or max_length < 1:
            raise _fail(folder / "router.json", "max_length must be a positive integer")
        for path in (model_path, tok_path):
            if not path.is_file():
                raise _fail(path, "file is missing")
        try:
            self.tokenizer = Tokenizer.from_file(str(tok_path))
        except Exception as exc:
            raise _fail(tok_path, f"not a readable tokenizers file ({exc})") from None
        padding = self.tokenizer.padding or {}
        self.pad_id = padding.get("pad_id", self._find_pad_id())
        self.pad_left = padding.get("direction") == "left"
        # Padding is done here per chunk, after sorting by length; truncation by the tokenizer.
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length)

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        # onnxruntime's own pool spins while idle (OMP_WAIT_POLICY does not reach it): on a small
        # machine that steals the core the next request needs (measured: 2 threads 6.4 -> 2.6 ms p50).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                str(model_path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise _fail(model_path, f"onnxruntime cannot load it ({exc})") from None
        self.inputs = {i.name for i in self.session.get_inputs()}
        unknown = self.inputs - {"input_ids", "attention_mask", "token_type_ids"}
        if "input_ids" not in self.inputs or unknown:
            raise _fail(model_path, f"graph inputs {sorted(self.inputs)} must be input_ids, "
                        "attention_mask and optionally token_type_ids")
        if "probs" not in {o.name for o in self.session.get_outputs()}:
            raise _fail(model_path, "graph has no output named 'probs'")

    def _find_pad_id(self) -> int:
        for token in ("[PAD]", "<pad>", "<|pad|>", "[pad]"):
            token_id = self.tokenizer.token_to_id(token)
            if token_id is not None:
                return token_id
        return 0

    def _run(self, encodings: list) -> np.ndarray:
        width = max(1, max(len(e.ids) for e in encodings))
        n = len(encodings)
        ids = np.full((n, width), self.pad_id, dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        types = np.zeros((n, width), dtype=np.int64)
        for row, enc in enumerate(encodings):
            cols = slice(width - len(enc.ids), width) if self.pad_left else slice(0, len(enc.ids))
            ids[row, cols] = enc.ids
            mask[row, cols] = enc.attention_mask
            types[row, cols] = enc.type_ids
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        feed = {name: value for name, value in feed.items() if name in self.inputs}
        return self.session.run(["probs"], feed)[0]

    def __call__(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        # Sorting by length keeps each chunk's padding short; results go back in input order.
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        out = None
        for start in range(0, len(order), ONNX_BATCH):
            chunk = order[start : start + ONNX_BATCH]
            probs = self._run([encodings[i] for i in chunk])
            if out is None:
                out = np.empty((len(texts), probs.shape[1]), dtype=np.float64)
            out[chunk] = probs
        return out


# --------------------------------------------------------------------------------------------
# tfidf kind: sklearn's TfidfVectorizer analyzers, transcribed to match them exactly

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


class _TfidfModel:
    """tfidf.json + tfidf.npz: concatenated tf-idf parts -> linear head -> softmax."""

    def __init__(self, folder: Path, info: dict):
        files = info["files"]
        weights_path = folder / files["model"]
        vocab_path = folder / files.get("vocab", "tfidf.json")
        for path in (weights_path, vocab_path):
            if not path.is_file():
                raise _fail(path, "file is missing")
        try:
            meta = json.loads(vocab_path.read_text(encoding="utf-8"))
            parts = meta["parts"]
        except (ValueError, KeyError, TypeError) as exc:
            raise _fail(vocab_path, f"not a valid tfidf.json ({exc!r})") from None
        if meta.get("labels") != info["labels"]:
            raise _fail(
                vocab_path,
                f"labels {meta.get('labels')} are not router.json's labels {info['labels']} in the "
                "same order",
                "write router.json's labels exactly as export_tfidf recorded them",
            )
        try:
            with np.load(weights_path, allow_pickle=False) as npz:
                arrays = {key: npz[key] for key in npz.files}
            coef, intercept = arrays["coef"], arrays["intercept"]
        except Exception as exc:
            raise _fail(weights_path, f"not a valid tfidf.npz ({exc!r})") from None
        n_labels, n_features = len(info["labels"]), meta.get("n_features")
        if coef.shape != (n_labels, n_features) or intercept.shape != (n_labels,):
            raise _fail(weights_path, f"coef {coef.shape} / intercept {intercept.shape} do not fit "
                        f"{n_labels} labels x {n_features} features")
        self.parts = []
        for index, part in enumerate(parts):
            idf = arrays.get(f"idf_{index}") if part.get("use_idf", True) else None
            if part.get("use_idf", True) and (idf is None or idf.shape != (part["n_features"],)):
                raise _fail(weights_path, f"idf_{index} is missing or has the wrong length")
            self.parts.append(_TfidfPart(part, idf))
        # Rows of coef.T are contiguous per feature, so gathering one text's columns is cheap.
        self.coef_t = np.ascontiguousarray(coef.T, dtype=np.float64)
        self.intercept = intercept.astype(np.float64)

    def __call__(self, texts: list[str]) -> np.ndarray:
        logits = np.tile(self.intercept, (len(texts), 1))
        for row, text in enumerate(texts):
            pieces = [part(text) for part in self.parts]
            cols = np.concatenate([p[0] for p in pieces])
            # Sparse row times the head: only the rows of coef.T this text uses are touched.
            logits[row] += np.concatenate([p[1] for p in pieces]) @ self.coef_t[cols]
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        return logits / logits.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------
# the router


class Router:
    """A loaded router folder. Build it with `Router.load(folder)`; `info` is router.json."""

    def __init__(self, folder: Path, info: dict, model: Callable[[list[str]], np.ndarray]):
        self.folder, self.info, self._model = folder, info, model
        self.labels: list[str] = info["labels"]
        self.routes: list[dict] = info["routes"]
        self.model_version: str = info["model_version"]
        self.reject_route: str | None = info.get("reject_route")
        abstain = info.get("abstain") or {}
        self.threshold = float(abstain.get("threshold", 0.0))
        self.margin = float(abstain.get("margin", 0.0))
        # fine probs (n, labels) @ membership (labels, routes) = route probs (n, routes)
        self._membership = np.zeros((len(self.labels), len(self.routes)))
        column = {label: i for i, label in enumerate(self.labels)}
        for j, route in enumerate(self.routes):
            self._membership[[column[x] for x in route["labels"]], j] = 1.0
        self._reject = next(
            (j for j, r in enumerate(self.routes) if r["name"] == self.reject_route), None
        )

    @classmethod
    def load(cls, folder: str | Path = "router", threads: int = 1) -> Router:
        """Read and check a router folder; RouterError says what is wrong and what to do."""
        folder = Path(folder)
        if not folder.is_dir():
            raise _fail(folder, "no such router folder")
        path = folder / "router.json"
        if not path.is_file():
            raise _fail(path, "file is missing")
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise _fail(path, f"not valid JSON ({exc})") from None
        info = _check_info(path, info)
        if info["kind"] == "onnx":
            model = _OnnxModel(folder, info, max(1, int(threads)))
        else:
            model = _TfidfModel(folder, info)
        router = cls(folder, info, model)
        router._probe()
        return router

    def _probe(self) -> None:
        """Run one text through the model now, so a broken model fails at load, not at serve."""
        try:
            probs = self._model(["hello"])
        except Exception as exc:
            raise _fail(self.folder / self.info["files"]["model"], f"the model fails to run ({exc})") from None
        if probs.shape != (1, len(self.labels)) or not np.all(np.isfinite(probs)):
            raise _fail(
                self.folder / self.info["files"]["model"],
                f"the model outputs shape {probs.shape} but router.json has {len(self.labels)} labels",
            )

    def probs(self, texts: list[str]) -> np.ndarray:
        """Preprocessed fine-label probabilities, shape (len(texts), len(labels))."""
        if isinstance(texts, str):
            raise TypeError("probs() and route() take a list of texts; use route_one(text)")
        if not texts:
            return np.zeros((0, len(self.labels)))
        return np.asarray(self._model([preprocess(t) for t in texts]), dtype=np.float64)

    def route(self, texts: list[str], top_k: int = 3) -> list[dict]:
        """One result per text: route, target, confidence, abstain, top_k routes, model_version."""
        route_probs = self.probs(texts) @ self._membership
        top_k = max(1, min(int(top_k), len(self.routes)))
        results = []
        for row in route_probs:
            order = np.argsort(-row, kind="stable")
            top = float(row[order[0]])
            second = float(row[order[1]]) if len(order) > 1 else 0.0
            abstain = (
                order[0] == self._reject or top < self.threshold or top - second < self.margin
            )
            chosen = self._reject if abstain else order[0]
            results.append({
                "route": None if chosen is None else self.routes[chosen]["name"],
                "target": None if chosen is None else self.routes[chosen].get("target"),
                "confidence": top,
                "abstain": bool(abstain),
                "top_k": [
                    {"route": self.routes[j]["name"], "target": self.routes[j].get("target"),
                     "p": float(row[j])}
                    for j in order[:top_k]
                ],
                "model_version": self.model_version,
            })
        return results

    def route_one(self, text: str, top_k: int = 3) -> dict:
        """route() for a single text."""
        return self.route([text], top_k=top_k)[0]

    def __repr__(self) -> str:
        return f"Router({str(self.folder)!r}, kind={self.info['kind']!r}, model_version={self.model_version!r})"
