"""The weight-free image baseline, the image analogue of tfidf: a few hundred numbers a screenshot
shows without any learned encoder (colour thumbnail, colour histogram, HOG-like orientation
histograms, gradient energy per row and column: serving/image_models.pixel_features),
standardised, then multinomial logistic regression. No torch at training or serving.

    python -m stages.train pixels           # params.yaml train.pixels: {family: pixels, input: data/prepared, C: 1.0}

Inputs are image paths, bytes or PIL images. Features are cached by image content and
FEATURES_VERSION beside the encoder embeddings (.cache/routelet/pixels/, or $ROUTELET_CACHE), so
the calibration folds, the learning curve and the report compute none twice. The export writes pixels.npz (mean, scale, and the
head with the temperature folded in), served by serving/image_models.PixelsModel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from routelet.families.base import ExportOptions, Family
from routelet.families.head import LinearHead, new_logistic
from routelet.families.image_encoders import ImageVectorCache, as_image
from routelet.serving.image_models import FEATURES_VERSION, pixel_features
from routelet.serving.router_format import ImageInput

MODEL_FILE = "pixels.npz"


def features(images: list) -> np.ndarray:
    return PixelFeatureCache().embed(list(images))


class PixelFeatureCache(ImageVectorCache):
    def __init__(self, root: Path | None = None) -> None:
        super().__init__("pixels", f"features-v{FEATURES_VERSION}", root)

    def compute(self, images: list, batch_size: int = 0) -> np.ndarray:
        return np.stack([pixel_features(as_image(x)) for x in images])


MODALITY = "image"  # read by routelet.families.family_modality without importing this module


class PixelsFamily(Family):
    modality = MODALITY

    def __init__(self, C: float = 1.0, seed: int = 0) -> None:
        self.C, self.seed = C, seed

    def fit(self, images: list, labels: list[str]) -> PixelsFamily:
        x = features(images)
        self.mean_ = x.mean(axis=0).astype(np.float32)
        self.scale_ = np.where(x.std(axis=0) > 1e-6, x.std(axis=0), 1.0).astype(np.float32)
        self.head_ = LinearHead.from_logistic(new_logistic(self.C, self.seed).fit(self._standard(x), labels))
        self.labels_ = self.head_.labels
        return self

    def _standard(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean_) / self.scale_

    def logits(self, images: list) -> np.ndarray:
        return self.head_.logits(self._standard(features(images)))

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        self.head_.save(folder, {"hyperparams": {"C": self.C, "seed": self.seed}, "features": FEATURES_VERSION})
        np.savez(folder / "scaler.npz", mean=self.mean_, scale=self.scale_)

    @classmethod
    def load(cls, folder: Path) -> PixelsFamily:
        head, meta = LinearHead.load(Path(folder))
        if meta.get("features") != FEATURES_VERSION:
            raise ValueError(f"{folder}: trained on pixel features version {meta.get('features')!r}, this routelet "
                             f"computes {FEATURES_VERSION!r}: retrain (dvc repro)")
        family = cls(**meta["hyperparams"])
        with np.load(Path(folder) / "scaler.npz") as scaler:
            family.mean_, family.scale_ = scaler["mean"], scaler["scale"]
        family.head_, family.labels_ = head, head.labels
        return family

    def input_spec(self) -> ImageInput:
        """The decoding guards only: pixel_features sizes the image itself (height/width unused)."""
        return ImageInput(height=64, width=64)

    def export(self, folder: Path, out: Path, temperature: float, options: ExportOptions) -> dict:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        np.savez(out / MODEL_FILE, mean=self.mean_, scale=self.scale_, coef=self.head_.coef / temperature,
                 intercept=self.head_.intercept / temperature)
        return {"kind": "pixels", "files": {"model": MODEL_FILE}, "quantization": None,
                "encoder": {"name": "pixels", "features": FEATURES_VERSION}}


FAMILY = PixelsFamily
