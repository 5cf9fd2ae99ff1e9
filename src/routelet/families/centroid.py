"""Nearest centroid by cosine similarity: each label is the mean of its examples' unit embeddings,
a text scores `scale` x its cosine similarity to each. The approach of aurelio's semantic-router
and most "semantic routing" libraries (they compare with every example; one centroid per label
is the same idea, exportable as a linear head), calibrated and gated like the trained heads."""

from __future__ import annotations

import numpy as np

from routelet.families.encoders import EncoderSpec
from routelet.families.head import EncoderFamily, LinearHead, _unit


class CentroidFamily(EncoderFamily):
    normalize_embeddings = True

    def __init__(self, encoder: EncoderSpec, scale: float = 20.0, seed: int = 0, batch_size: int = 64) -> None:
        super().__init__(encoder, seed, batch_size)
        self.scale = scale

    def fit_head(self, embeddings: np.ndarray, labels: list[str]) -> LinearHead:
        names = sorted(set(labels))
        column = np.array([names.index(label) for label in labels])
        centroids = np.stack([embeddings[column == j].mean(axis=0) for j in range(len(names))])
        coef = (self.scale * _unit(centroids)).astype(np.float32)
        return LinearHead(names, coef, np.zeros(len(names), np.float32))

    def hyperparams(self) -> dict:
        return {**super().hyperparams(), "scale": self.scale}


FAMILY = CentroidFamily
