"""Stage learning_curve: holdout accuracy against training examples per label, per family.

    python -m stages.learning_curve

Reads params `learning_curve.*`, `seed`, `train` (each listed family's settings); data/prepared,
data/encoder.json. Writes report/plots/learning_curve/<family>.json (a DVC plot, one series per
family) and a figure. A listed family of another modality than the dataset is passed by, saying so;
when none is left (the text families listed, an image dataset), every `train` family of the dataset's
modality is measured instead.
"""

from __future__ import annotations

import json

from routelet.data.dataset import load_prepared
from routelet.evaluation.learning_curve import learning_curve
from routelet.evaluation.plots import curves_figure
from routelet.families import build_family, family_class
from routelet.families.encoders import EncoderSpec
from routelet.params import load_params, run
from routelet.paths import ENCODER, FIGURES, PLOTS, PREPARED


def families(listed: list[str], train: dict, modality: str) -> list[str]:
    """The listed families that take the dataset's modality, else every `train` entry that does."""
    def fits(name: str) -> bool:
        return family_class(train[name]["family"]).modality == modality

    for name in listed:
        if not fits(name):
            print(f"learning_curve: {name} skipped: family {train[name]['family']!r} does not take {modality} input")
    return [name for name in listed if fits(name)] or [name for name in train if fits(name)]


def main() -> None:
    params = load_params()
    config, seed = params["learning_curve"], params["seed"]
    prepared = load_prepared(PREPARED)
    sizes = [None if size == "all" else int(size) for size in config["per_label"]]
    folder = PLOTS / "learning_curve"
    folder.mkdir(parents=True, exist_ok=True)
    key = "in_scope_accuracy" if prepared.reject_id is not None else "accuracy"
    curves = {}
    for name in families(config["families"], params["train"], prepared.modality):
        entry = params["train"][name]
        encoder = EncoderSpec.read(ENCODER) if family_class(entry["family"]).uses_encoder else None
        points = learning_curve(lambda: build_family(name, entry, seed, encoder), prepared, sizes, seed, name)
        (folder / f"{name}.json").write_text(json.dumps(points, indent=1) + "\n")
        curves[name] = [(p["per_label"], p[key]) for p in points]
        print(f"learning_curve: {name}: {curves[name]}")
    curves_figure(curves, "training examples per label (log scale)", f"holdout {key.replace('_', ' ')}",
                  "Learning curve", FIGURES / "learning_curve.png", log_x=True)


if __name__ == "__main__":
    run(main)
