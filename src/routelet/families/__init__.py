"""Model families: the registry, building one from params.yaml, and trained models on disk.

    family, level = build_family("setfit", params["train"]["setfit"], seed=0, encoder=spec)
    save_trained("setfit", family.fit(texts, labels), level)
    load_trained("setfit").route_probs(texts, taxonomy, temperature)

Adding a family is one module in this package: a `Family` subclass (see base.py) and its registry
line, `FAMILY = MyFamily`, at the end; the module's name is the family's name. A family that reads
images says so in a `MODALITY = "image"` line (its class's `modality`). An entry under
params.yaml `train` trains it. No other file changes, so no other family re-trains. A model trains on fine labels (routes by summing their
probabilities) or directly on routes; `family.json` in its folder records which.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from routelet.families.base import Family
from routelet.params import ConfigError
from routelet.paths import MODELS
from routelet.serving.router_format import softmax

# Keys of a params.yaml `train.<name>` entry that are not the family's own hyperparameters.
ENTRY_KEYS = ("family", "level", "input")
_FAMILY_LINE = re.compile(r"^FAMILY = \w+", re.M)
_MODALITY_LINE = re.compile(r'^MODALITY = "(\w+)"', re.M)


def registered() -> list[str]:
    """The families of this package: modules with a `FAMILY = ...` line (read as text: no import,
    so listing them never loads torch)."""
    folder = Path(__file__).parent
    return sorted(path.stem for path in folder.glob("*.py") if _FAMILY_LINE.search(path.read_text(encoding="utf-8")))


def _module(kind: str) -> Path:
    if kind not in registered():
        raise ConfigError(f"family {kind!r} is not registered; choose one of: {', '.join(registered())}")
    return Path(__file__).parent / f"{kind}.py"


def family_class(kind: str) -> type[Family]:
    _module(kind)
    return importlib.import_module(f"routelet.families.{kind}").FAMILY


def family_modality(kind: str) -> str:
    """"text" or "image", read from the module's `MODALITY` line without importing it: a family
    skipped for the dataset's modality never loads its libraries (SetFit's torch: 2 s)."""
    found = _MODALITY_LINE.search(_module(kind).read_text(encoding="utf-8"))
    return found.group(1) if found else "text"


def family_kind(model: Family) -> str:
    return type(model).__module__.rsplit(".", 1)[1]


def build_family(name: str, entry: dict, seed: int, encoder=None) -> tuple[Family, str]:
    """An unfitted family from its params.yaml entry `train.<name>`, and its label level."""
    cls = family_class(entry.get("family", name))
    settings = {key: value for key, value in entry.items() if key not in ENTRY_KEYS}
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "encoder", "seed"}
    unknown = sorted(set(settings) - accepted)
    if unknown:
        raise ConfigError(f"params.yaml train.{name}: unknown setting {unknown[0]!r} for family "
                         f"{entry.get('family', name)!r}; it takes: {', '.join(sorted(accepted))}")
    if cls.uses_encoder:
        if encoder is None:
            raise ConfigError(f"params.yaml train.{name}: family {entry.get('family', name)!r} needs an encoder")
        settings["encoder"] = encoder
    return cls(seed=seed, **settings), entry.get("level", "fine")


@dataclass
class Trained:
    name: str
    model: Family
    level: str  # "fine" or "route"

    def taxonomy_view(self, taxonomy):
        return taxonomy if self.level == "fine" else taxonomy.as_routes_only()

    def route_probs(self, texts: list[str], taxonomy, temperature: float = 1.0) -> np.ndarray:
        return self.to_routes(self.model.logits(texts), taxonomy, temperature)

    def to_routes(self, logits: np.ndarray, taxonomy, temperature: float = 1.0) -> np.ndarray:
        matrix = self.taxonomy_view(taxonomy).label_to_route_matrix(self.model.labels_)
        return softmax(logits, temperature) @ matrix


def training_labels(labels: list[str], taxonomy, level: str) -> list[str]:
    return labels if level == "fine" else [taxonomy.route_of(label) for label in labels]


def save_skipped(name: str, kind: str, reason: str, folder: str | Path | None = None) -> Path:
    """A family that cannot train on this dataset (another modality): its folder holds only
    family.json saying why, so the DVC output exists and later stages pass it by."""
    folder = Path(folder or MODELS / name)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.iterdir():  # a model trained on another dataset must not be read as current
        if stale.is_file():
            stale.unlink()
    (folder / "family.json").write_text(json.dumps({"name": name, "family": kind, "skipped": reason}) + "\n")
    return folder


def skipped_reason(name: str, folder: str | Path | None = None) -> str | None:
    """Why train@<name> skipped its family, or None when it trained (or has not run)."""
    info_path = Path(folder or MODELS / name) / "family.json"
    return json.loads(info_path.read_text()).get("skipped") if info_path.is_file() else None


def trained_names(names) -> list[str]:
    """The entries of params.yaml `train` that trained a model (not skipped for the dataset's modality)."""
    return [name for name in names if skipped_reason(name) is None]


def save_trained(name: str, model: Family, level: str, folder: str | Path | None = None) -> Path:
    folder = Path(folder or MODELS / name)
    model.save(folder)
    (folder / "family.json").write_text(json.dumps({"name": name, "family": family_kind(model), "level": level}) + "\n")
    return folder


def _family_info(folder: Path) -> dict:
    info_path = folder / "family.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"{folder}: no trained model here (family.json missing): run `dvc repro` first")
    return json.loads(info_path.read_text())


def trained_class(name: str, folder: str | Path | None = None) -> type[Family]:
    """The family class of a trained model, without loading its weights."""
    return family_class(_family_info(Path(folder or MODELS / name))["family"])


def load_trained(name: str, folder: str | Path | None = None) -> Trained:
    folder = Path(folder or MODELS / name)
    info = _family_info(folder)
    if "skipped" in info:
        raise FileNotFoundError(f"{folder}: train@{name} skipped this family ({info['skipped']}): "
                                "list only trained_names() of params.yaml `train`")
    return Trained(info["name"], family_class(info["family"]).load(folder), info["level"])
