"""The interface every model family implements, so stages, export, report and bench never ask
which family they hold.

A family follows scikit-learn's convention: `__init__` stores hyperparameters (its section of
params.yaml `train.<name>`), `fit(texts, labels)` returns self, learned attributes end in `_`,
`logits(texts)` gives uncalibrated scores over `labels_` (softmax(logits / T) are the
probabilities). Texts arrive preprocessed; families run the (idempotent) preprocess again so a raw
request and a pool row go through the same function.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

INT8_MODES = ("dynamic", "blockwise", "fp32")


@dataclass(frozen=True)
class ExportOptions:
    """How an encoder family becomes ONNX: `int8` is dynamic (int8 activations, outlier channels in
    fp32), blockwise (MatMulNBits) or fp32 (no quantisation); `calibration` are preprocessed texts
    (never the holdout) that set the int8 activation ranges."""

    int8: str = "dynamic"
    outlier_channels: int = 4
    calibration: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.int8 not in INT8_MODES:
            raise ValueError(f"export_onnx.int8 is {self.int8!r}: choose one of {', '.join(INT8_MODES)}")


class Family(ABC):
    """One model family. Subclasses set `modality` and `uses_encoder` (whether `model` / the
    encoder registry changes it: then its stage depends on data/encoder.json)."""

    modality = "text"
    uses_encoder = False
    labels_: list[str]

    @abstractmethod
    def fit(self, texts: list[str], labels: list[str]) -> Family: ...

    @abstractmethod
    def logits(self, texts: list[str]) -> np.ndarray:
        """(len(texts), len(labels_)) uncalibrated scores; caches allowed (training, calibration)."""

    def warm(self, inputs: list) -> None:
        """Fill the caches the later stages read for `inputs` (the other splits), while the model
        that computes them is loaded anyway; no label is seen. Nothing to do for most families."""

    def reference(self, texts: list[str]) -> np.ndarray:
        """The logits as a served query would get them from the training-side model: no cache.
        What bench's torch path and the export's parity gate compare against."""
        return self.logits(texts)

    @abstractmethod
    def save(self, folder: Path) -> None: ...

    @classmethod
    @abstractmethod
    def load(cls, folder: Path) -> Family: ...

    @abstractmethod
    def export(self, folder: Path, out: Path, temperature: float, options: ExportOptions) -> dict:
        """Write the servable model files into `out` (the family's trained folder is `folder`);
        return the router.json tier fields it knows: kind, files, quantization, encoder."""

    def max_length(self) -> int | None:
        """Tokens per text the family was trained at (None: it reads whole texts)."""
        return None

    def size_paths(self, folder: Path) -> list[Path]:
        """What the family needs on disk to run: its folder, plus anything it loads from elsewhere."""
        return [folder]
