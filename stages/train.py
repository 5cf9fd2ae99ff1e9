"""Stage train@<family>: fit one family on the prepared pool, from its params.yaml `train.<family>` entry.

    python -m stages.train tfidf          # dvc.yaml runs one per entry of `train` (foreach)

The entry names its `family` (a module of routelet.families ending in a `FAMILY = ...` line), the label `level` (fine, the
default: route by summing fine-label probabilities; or route) and its `input`: data/prepared for a
family without an encoder, data/encoder.json for one that uses the `model` encoder. The rest are
the family's hyperparameters. Writes data/models/<family>/. A family of another modality than the
dataset (an image family on text data, a text one on screenshots) is skipped: its folder holds only
family.json with the reason, and the later stages pass it by (routelet.families.trained_names).
"""

from __future__ import annotations

import argparse
import time

from routelet.data.dataset import load_prepared, prepared_modality
from routelet.families import build_family, family_class, family_modality, save_skipped, save_trained, training_labels
from routelet.families.encoders import EncoderSpec
from routelet.params import ConfigError, load_params, run
from routelet.paths import ENCODER, PREPARED


def main() -> None:
    parser = argparse.ArgumentParser(description="Train one family of params.yaml `train`.")
    parser.add_argument("name", help="a key of params.yaml `train`, e.g. tfidf")
    name = parser.parse_args().name
    params = load_params()
    if name not in params["train"]:
        raise ConfigError(f"params.yaml: train has no entry {name!r}; entries: {', '.join(params['train'])}")
    entry = params["train"][name]
    # Decided before the family's module loads: on an image dataset the text families skip in a blink.
    modality, takes = prepared_modality(PREPARED), family_modality(entry["family"])
    if takes != modality:
        reason = f"family {entry['family']!r} takes {takes} input; the dataset is {modality}"
        save_skipped(name, entry["family"], reason)
        print(f"train: {name} skipped: {reason}")
        return
    cls = family_class(entry["family"])
    # The input decides what re-runs this stage: an encoder family must see `-S model=...`.
    expected = str(ENCODER if cls.uses_encoder else PREPARED)
    if entry["input"] != expected:
        raise ConfigError(f"params.yaml: train.{name}.input is {entry['input']!r}; family {entry['family']!r} "
                          f"{'uses' if cls.uses_encoder else 'uses no'} encoder, so set it to {expected!r}")
    encoder = EncoderSpec.read(ENCODER) if cls.uses_encoder else None
    family, level = build_family(name, entry, params["seed"], encoder)
    prepared = load_prepared(PREPARED)
    texts, labels = prepared.inputs("train"), training_labels(prepared.labels("train"), prepared.taxonomy, level)
    start = time.perf_counter()
    save_trained(name, family.fit(texts, labels), level)
    family.warm(prepared.inputs("calib") + prepared.inputs("test"))  # inputs only: what later stages embed
    print(f"train: {name} ({entry['family']}, {level} labels): {len(texts)} rows, {len(family.labels_)} classes, "
          f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    run(main)
