"""Stage learning_curve: holdout accuracy against training examples per label, per family.

    python -m stages.learning_curve

Reads params `learning_curve.*`, `seed`, `model`, `encoders`, `train_tfidf`, `train_embed`;
data/prepared.
Writes report/plots/learning_curve/<family>.json (a DVC plot, one series per family) and a figure.
"""

from __future__ import annotations

import json
from pathlib import Path

from routelet.data.dataset import load_prepared
from routelet.families.encoders import EncoderSpec
from routelet.evaluation.learning_curve import learning_curve
from routelet.families.models import EmbedModel, TfidfModel
from routelet.params import load_params
from routelet.evaluation.plots import curves_figure


def main() -> None:
    params = load_params()
    config, seed, tfidf, embed = (params[key] for key in ("learning_curve", "seed", "train_tfidf", "train_embed"))
    prepared = load_prepared("data/prepared")
    encoder = EncoderSpec.from_registry(params["model"], params["encoders"])
    makers = {
        "tfidf": lambda: TfidfModel(tfidf["word_ngrams"], tfidf["char_ngrams"], tfidf["C"], seed),
        "embed": lambda: EmbedModel(encoder, embed["C"], seed, embed["batch_size"]),
    }
    sizes = [None if size == "all" else int(size) for size in config["per_label"]]
    points = []
    for name in config["families"]:
        points += learning_curve(makers[name], prepared, sizes, seed, name)
        print(f"learning_curve: {name}: {[(p['per_label'], p.get('in_scope_accuracy', p['accuracy'])) for p in points if p['family'] == name]}")
    folder = Path("report/plots/learning_curve")
    folder.mkdir(parents=True, exist_ok=True)
    for name in config["families"]:
        (folder / f"{name}.json").write_text(json.dumps([p for p in points if p["family"] == name], indent=1) + "\n")
    key = "in_scope_accuracy" if prepared.reject_id is not None else "accuracy"
    curves = {name: [(p["per_label"], p[key]) for p in points if p["family"] == name] for name in config["families"]}
    curves_figure(curves, "training examples per label (log scale)", f"holdout {key.replace('_', ' ')}",
                  "Learning curve", "report/figures/learning_curve.png", log_x=True)


if __name__ == "__main__":
    main()
