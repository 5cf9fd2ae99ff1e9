"""Stage train_setfit: SetFit fine-tune of the `model` encoder (contrastive pairs, capped steps)
plus a logistic-regression head, on the fine labels.

    python -m stages.train_setfit

Reads params `train_setfit.*`, `model`, `encoders`, `seed`; data/prepared. Writes
data/models/setfit/ (body/ is a sentence-transformers folder, head.npz, model.json).
"""

from __future__ import annotations

import time

import torch

from routelet.data.dataset import load_prepared
from routelet.families.encoders import EncoderSpec
from routelet.families import save_trained
from routelet.params import load_params
from routelet.families.setfit import SetfitModel


def main() -> None:
    params = load_params()
    config = dict(params["train_setfit"])
    torch.set_num_threads(config.pop("threads"))
    prepared = load_prepared("data/prepared")
    encoder = EncoderSpec.from_registry(params["model"], params["encoders"])
    start = time.perf_counter()
    model = SetfitModel(encoder, seed=params["seed"], **config).fit(prepared.texts("train"), prepared.labels("train"))
    save_trained("setfit", model, "fine")
    print(f"train_setfit: {encoder.name}, {config['max_steps']} steps x {config['batch_size']} pairs, "
          f"{len(model.labels_)} labels, {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
