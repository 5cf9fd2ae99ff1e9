"""Stage train_tfidf: TF-IDF (word + char n-grams) + logistic regression on the fine labels, the
baseline every other family has to beat. It uses no encoder, so `dvc exp run -S model=...` skips it.

    python -m stages.train_tfidf

Reads params `train_tfidf.*`, `seed`; data/prepared. Writes data/models/tfidf/.
"""

from __future__ import annotations

from routelet.data.dataset import load_prepared
from routelet.families import save_trained
from routelet.families.models import TfidfModel
from routelet.params import load_params


def main() -> None:
    params = load_params()
    config = params["train_tfidf"]
    prepared = load_prepared("data/prepared")
    texts, labels = prepared.texts("train"), prepared.labels("train")
    model = TfidfModel(config["word_ngrams"], config["char_ngrams"], config["C"], params["seed"])
    save_trained("tfidf", model.fit(texts, labels), "fine")
    print(f"train_tfidf: {len(texts)} rows, {len(model.labels_)} labels")


if __name__ == "__main__":
    main()
