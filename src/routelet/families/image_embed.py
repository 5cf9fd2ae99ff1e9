"""Frozen image embeddings (an `encoders` entry with modality: image) + multinomial logistic
regression: the image analogue of `embed`.

    python -m stages.train image_embed      # params.yaml train.image_embed: {family: image_embed,
                                            #   input: data/encoder.json, C: 10.0, pooling: auto}

Inputs are image paths (the prepared split's content-addressed copies), bytes or PIL images.
Embeddings are cached by image content (families/image_encoders.py), so re-training the head on a
new class embeds only the new images. The export writes the encoder once per encoder key
(encoder-<key>.onnx, reused by later heads) and the head as head.npz: routelet.export.image_onnx.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from routelet.families.base import ExportOptions
from routelet.families.encoders import EncoderSpec
from routelet.families.head import EncoderFamily, LinearHead, new_logistic
from routelet.params import ConfigError
from routelet.families.image_encoders import ImageEmbeddingCache, ImageEncoder, image_source, load_image_encoder
from routelet.serving.router_format import ImageInput

MODALITY = "image"  # read by routelet.families.family_modality without importing this module


class ImageEmbedFamily(EncoderFamily):
    modality = MODALITY

    def __init__(self, encoder: EncoderSpec, C: float = 10.0, seed: int = 0, batch_size: int = 32,
                 pooling: str = "auto") -> None:
        if encoder.modality != "image":
            raise ConfigError(f"family image_embed needs an image encoder; params.yaml `model` is {encoder.name!r} "
                              f"({encoder.modality}): run with -S model=effnet-lite0 (or another modality: image entry)")
        super().__init__(encoder, seed, batch_size)
        self.C, self.pooling = C, pooling

    def image_encoder(self) -> ImageEncoder:
        """The encoder: its cache key and pixel recipe; its weights load only when an image misses the cache."""
        if not hasattr(self, "_image_encoder"):
            self._image_encoder = load_image_encoder(self.encoder, self.pooling)
        return self._image_encoder

    def _cache(self) -> ImageEmbeddingCache:
        if not hasattr(self, "_embedding_cache"):
            self._embedding_cache = ImageEmbeddingCache(self.image_encoder())
        return self._embedding_cache

    def embed(self, images: list, use_cache: bool = True) -> np.ndarray:
        if use_cache:
            return self._cache().embed(list(images), batch_size=self.batch_size)
        return self.image_encoder().embed(list(images), self.batch_size)

    def warm(self, images: list) -> None:
        """Embed the other splits' images into the cache: the encoder is built once per repro, in
        train@image_embed, not again by calibrate, export and report for the images they meet."""
        self.embed(images)

    def fit_head(self, embeddings: np.ndarray, labels: list[str]) -> LinearHead:
        return LinearHead.from_logistic(new_logistic(self.C, self.seed).fit(embeddings, labels))

    def hyperparams(self) -> dict:
        return {**super().hyperparams(), "C": self.C, "pooling": self.pooling}

    def input_spec(self) -> ImageInput:
        """The router.json `input` block: how the served runtime makes this encoder's pixels."""
        return self.image_encoder().input

    def max_length(self) -> None:
        return None

    def encoder_folder(self, folder: Path) -> str:
        kind, where = image_source(self.encoder)
        return str(Path(where).parent) if kind == "package" else where

    def export(self, folder: Path, out: Path, temperature: float, options: ExportOptions) -> dict:
        from routelet.export.image_onnx import export_image_tier

        return export_image_tier(self.image_encoder(), self.head_, temperature, Path(out), options)


FAMILY = ImageEmbedFamily
