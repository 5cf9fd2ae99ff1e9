"""Stage train_embed: frozen `model` embeddings + logistic regression, on the fine labels (routed by
summing their probabilities) and, for comparison, directly on the routes.

    python -m stages.train_embed

Reads params `train_embed.*`, `model`, `encoders`, `seed`; data/prepared. Writes
data/models/{embed,embed_routes}/. Embeddings come from the cache when this encoder has seen the
texts before (another experiment, or the SetFit stage's frozen layers).
"""

from __future__ import annotations

from routelet.data.dataset import load_prepared
from routelet.families.encoders import EncoderSpec
from routelet.families import save_trained, training_labels
from routelet.families.models import EmbedModel
from routelet.params import load_params


def main() -> None:
    params = load_params()
    config = params["train_embed"]
    prepared = load_prepared("data/prepared")
    texts, labels = prepared.texts("train"), prepared.labels("train")
    encoder = EncoderSpec.from_registry(params["model"], params["encoders"])
    for name, level in (("embed", "fine"), ("embed_routes", "route")):
        model = EmbedModel(encoder, config["C"], params["seed"], config["batch_size"])
        save_trained(name, model.fit(texts, training_labels(labels, prepared.taxonomy, level)), level)
        print(f"train_embed: {name} ({encoder.name}, {level} labels): {len(model.labels_)} classes")


if __name__ == "__main__":
    main()
