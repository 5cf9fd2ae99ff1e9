"""Stage encoder: resolve params.yaml `model` in the `encoders` registry into data/encoder.json.

    python -m stages.encoder

The encoder families depend on that one file, not on the registry, so `dvc exp run -S model=X`
re-trains exactly them, and adding a registry entry re-trains nothing.
"""

from __future__ import annotations

from routelet.families.encoders import EncoderSpec
from routelet.params import load_params, run
from routelet.paths import ENCODER


def main() -> None:
    params = load_params()
    spec = EncoderSpec.from_registry(params["model"], params["encoders"])
    spec.save(ENCODER)
    print(f"encoder: {spec.name} ({spec.modality}, {spec.source}) -> {ENCODER}")


if __name__ == "__main__":
    run(main)
