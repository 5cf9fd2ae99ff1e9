"""Trained models on disk: which family, which label level, and route probabilities from them.

A model trains on fine labels (routes by summing their probabilities) or directly on routes;
`family.json` in its folder records which, so calibrate, report and export never guess.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from routelet.families.models import EmbedModel, TfidfModel, softmax
from routelet.data.taxonomy import Taxonomy

MODELS = Path("data/models")


def _kinds() -> dict[str, type]:
    from routelet.families.setfit import SetfitModel  # torch-heavy: only when a SetFit model is loaded

    return {"tfidf": TfidfModel, "embed": EmbedModel, "setfit": SetfitModel}


@dataclass
class Trained:
    name: str
    model: object
    level: str  # "fine" or "route"

    def taxonomy_view(self, taxonomy: Taxonomy) -> Taxonomy:
        return taxonomy if self.level == "fine" else taxonomy.as_routes_only()

    def route_probs(self, texts: list[str], taxonomy: Taxonomy, temperature: float = 1.0) -> np.ndarray:
        return self.to_routes(self.model.logits(texts), taxonomy, temperature)

    def to_routes(self, logits: np.ndarray, taxonomy: Taxonomy, temperature: float = 1.0) -> np.ndarray:
        matrix = self.taxonomy_view(taxonomy).label_to_route_matrix(self.model.labels_)
        return softmax(logits, temperature) @ matrix


def training_labels(labels: list[str], taxonomy: Taxonomy, level: str) -> list[str]:
    return labels if level == "fine" else [taxonomy.route_of(label) for label in labels]


def save_trained(name: str, model, level: str, folder: str | Path | None = None) -> Path:
    folder = Path(folder or MODELS / name)
    model.save(folder)
    (folder / "family.json").write_text(json.dumps({"name": name, "kind": model.family, "level": level}) + "\n")
    return folder


def load_trained(name: str, folder: str | Path | None = None) -> Trained:
    folder = Path(folder or MODELS / name)
    info_path = folder / "family.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"{folder}: no trained model here (family.json missing): run `dvc repro` first")
    info = json.loads(info_path.read_text())
    return Trained(info["name"], _kinds()[info["kind"]].load(folder), info["level"])
