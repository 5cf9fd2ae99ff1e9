"""The linear head every encoder family ends in, and the base class those families share.

`LinearHead` is (labels, coef, intercept): logits = embeddings @ coef.T + intercept. A logistic
regression becomes one (`from_logistic`), so does a centroid matrix. `EncoderFamily` holds an
encoder spec, embeds through the on-disk cache, saves head.npz + model.json, and exports the
encoder with the head folded into one ONNX graph.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from routelet.families.base import ExportOptions, Family
from routelet.families.encoders import EmbeddingCache, EncoderSpec
from routelet.serving.preprocess import preprocess


@dataclass
class LinearHead:
    labels: list[str]
    coef: np.ndarray  # (n_labels, dim) float32
    intercept: np.ndarray  # (n_labels,) float32

    @classmethod
    def from_logistic(cls, head) -> LinearHead:
        """A fitted sklearn LogisticRegression. A binary one (one row, sigmoid) becomes the two-row
        softmax [0, w] that gives the same probabilities."""
        coef, intercept = head.coef_.astype(np.float32), head.intercept_.astype(np.float32).reshape(-1)
        if coef.shape[0] == 1:
            coef, intercept = np.concatenate([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
        return cls([str(c) for c in head.classes_], coef, intercept.astype(np.float32))

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        return embeddings @ self.coef.T + self.intercept

    def save(self, folder: Path, meta: dict) -> None:
        """head.npz (the weights) and model.json (`meta` plus the labels)."""
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / "head.npz", coef=self.coef, intercept=self.intercept)
        (folder / "model.json").write_text(json.dumps({**meta, "labels": self.labels}, indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> tuple[LinearHead, dict]:
        meta = json.loads((folder / "model.json").read_text())
        weights = np.load(folder / "head.npz")
        return cls(meta["labels"], weights["coef"], weights["intercept"]), meta


def new_logistic(C: float, seed: int):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=2000, random_state=seed)


class EncoderFamily(Family):
    """A frozen (or fine-tuned) sentence encoder and a linear head. Subclasses implement
    `fit_head(embeddings, labels) -> LinearHead`; SetFit also overrides the encoder it embeds with."""

    uses_encoder = True
    normalize_embeddings = False  # True: the head expects unit vectors (cosine heads)

    def __init__(self, encoder: EncoderSpec, seed: int = 0, batch_size: int = 64) -> None:
        self.encoder, self.seed, self.batch_size = encoder, seed, batch_size

    # -- embeddings -----------------------------------------------------------------------------

    def _cache(self) -> EmbeddingCache:
        if not hasattr(self, "_embedding_cache"):
            self._embedding_cache = EmbeddingCache(self.encoder)
        return self._embedding_cache

    def embed(self, texts: list[str], use_cache: bool = True) -> np.ndarray:
        """Cached embeddings; `use_cache=False` runs the encoder, as a served query would."""
        if use_cache:
            vectors = self._cache().embed(texts, batch_size=self.batch_size)
        else:
            vectors = self._cache().encoder.encode([preprocess(t) for t in texts], convert_to_numpy=True,
                                                   show_progress_bar=False)
        return _unit(vectors) if self.normalize_embeddings else vectors

    def fit(self, texts: list[str], labels: list[str]) -> EncoderFamily:
        self.head_ = self.fit_head(self.embed(texts), [str(label) for label in labels])
        self.labels_ = self.head_.labels
        return self

    def fit_head(self, embeddings: np.ndarray, labels: list[str]) -> LinearHead:
        raise NotImplementedError

    def logits(self, texts: list[str]) -> np.ndarray:
        return self.head_.logits(self.embed(texts))

    def reference(self, texts: list[str]) -> np.ndarray:
        return self.head_.logits(self.embed(texts, use_cache=False))

    # -- persistence ----------------------------------------------------------------------------

    def hyperparams(self) -> dict:
        return {"seed": self.seed, "batch_size": self.batch_size}

    def save(self, folder: Path) -> None:
        self.head_.save(Path(folder), {"encoder": self.encoder.__dict__, "hyperparams": self.hyperparams()})

    @classmethod
    def load(cls, folder: Path) -> EncoderFamily:
        head, meta = LinearHead.load(Path(folder))
        family = cls(EncoderSpec(**meta["encoder"]), **meta["hyperparams"])
        family.head_, family.labels_ = head, head.labels
        return family

    # -- export ---------------------------------------------------------------------------------

    def encoder_folder(self, folder: Path) -> str:
        """Where the encoder the head was trained on lives (SetFit: its fine-tuned body)."""
        return self.encoder.resolve()

    def encoder_layers(self) -> int | None:
        return self.encoder.layers

    def max_length(self) -> int:
        return self.encoder.max_length

    def export(self, folder: Path, out: Path, temperature: float, options: ExportOptions) -> dict:
        from routelet.export.onnx import build_onnx_router

        files = build_onnx_router(
            self.encoder_folder(folder), self.head_.coef, self.head_.intercept, temperature, out,
            max_length=self.max_length(), layers=self.encoder_layers(), quantize=options.int8 != "fp32",
            int8=options.int8, calibration=list(options.calibration), outlier_channels=options.outlier_channels,
            normalize=self.normalize_embeddings)
        dynamic = options.int8 == "dynamic" and bool(options.calibration)
        return {"kind": "onnx", "files": files,
                "quantization": {"int8": options.int8, "outlier_channels": options.outlier_channels if dynamic else 0},
                "encoder": {"name": self.encoder.name, "source": self.encoder.source,
                            "fine_tuned": self.encoder_folder(folder) != self.encoder.resolve()}}

    def size_paths(self, folder: Path) -> list[Path]:
        return [Path(folder), Path(self.encoder_folder(folder))]


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
