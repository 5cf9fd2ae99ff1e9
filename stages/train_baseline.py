"""Stage train_baseline: TF-IDF + LR, and frozen `model` embeddings + LR (on fine labels and,
for comparison, directly on routes).

    python -m stages.train_baseline

Reads params `train_baseline.*`, `model`, `encoders`, `seed`; data/prepared; writes
data/models/{tfidf,embed,embed_routes}/.
"""

from __future__ import annotations

from routelet.dataset import load_prepared
from routelet.encoders import EncoderSpec
from routelet.families import save_trained, training_labels
from routelet.models import EmbedModel, TfidfModel
from routelet.params import load_params


def main() -> None:
    params = load_params()
    config, seed = params["train_baseline"], params["seed"]
    prepared = load_prepared("data/prepared")
    texts, labels = prepared.texts("train"), prepared.labels("train")

    tfidf = TfidfModel(config["tfidf"]["word_ngrams"], config["tfidf"]["char_ngrams"], config["tfidf"]["C"], seed)
    save_trained("tfidf", tfidf.fit(texts, labels), "fine")
    print(f"train_baseline: tfidf on {len(texts)} rows, {len(tfidf.labels_)} labels")

    encoder = EncoderSpec.from_registry(params["model"], params["encoders"])
    for name, level in (("embed", "fine"), ("embed_routes", "route")):
        model = EmbedModel(encoder, config["embed"]["C"], seed, config["embed"]["batch_size"])
        save_trained(name, model.fit(texts, training_labels(labels, prepared.taxonomy, level)), level)
        print(f"train_baseline: {name} ({encoder.name}, {level} labels): {len(model.labels_)} classes")


if __name__ == "__main__":
    main()
