"""Frozen sentence-encoder embeddings (cached on disk) + multinomial logistic regression."""

from __future__ import annotations

import numpy as np

from routelet.families.encoders import EncoderSpec
from routelet.families.head import EncoderFamily, LinearHead, new_logistic


class EmbedFamily(EncoderFamily):
    def __init__(self, encoder: EncoderSpec, C: float = 10.0, seed: int = 0, batch_size: int = 64) -> None:
        super().__init__(encoder, seed, batch_size)
        self.C = C

    def fit_head(self, embeddings: np.ndarray, labels: list[str]) -> LinearHead:
        return LinearHead.from_logistic(new_logistic(self.C, self.seed).fit(embeddings, labels))

    def hyperparams(self) -> dict:
        return {**super().hyperparams(), "C": self.C}


FAMILY = EmbedFamily
