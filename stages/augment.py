"""Stage augment: voice-like, label-preserving variants of the training pool, for training only.

    python -m stages.augment

Reads params `data.*` (the dataset: its train rows are augmented, its calibration split and
evaluation sets are never repeated) and `augment.*`; data/collected.jsonl (ingest's pool) and the
frozen evals/. Writes data/augmented.jsonl ({"text", "label", "source": "augment:<kind>", "of"})
and report/augment.json (variants per kind and per label, and what was skipped). With
`augment.enabled: false` the file is written empty, so the pipeline keeps its shape.
"""

from __future__ import annotations

import sys

from pydantic import ValidationError

from routelet import paths
from routelet.data.augment import AugmentConfig, Report, augment, training_pool
from routelet.data.checks import data_params
from routelet.data.dataset import load_dataset
from routelet.data.outputs import json_bytes, jsonl_bytes, write_if_changed
from routelet.data.rows import DataError
from routelet.params import ConfigError, load_params, run


def read_config(params: dict) -> AugmentConfig:
    try:
        return AugmentConfig.model_validate(params.get("augment") or {})
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"params.yaml: augment.{key}: {first['msg'].removeprefix('Value error, ')}") from None


def main() -> int:
    params = load_params()
    config = read_config(params)
    rows, report = [], Report(enabled=False)
    if config.enabled:
        try:
            data = data_params(params)
            dataset = load_dataset(data.dir, data.taxonomy, data.max_chars, data.valid_fraction, data.seed)
            pool, blocked, rejected = training_pool(dataset, paths.COLLECTED, paths.EVALS, data.max_chars)
        except DataError as error:
            print(f"augment: error: {error}", file=sys.stderr)
            return 2
        if rejected:
            print(f"augment: {len(rejected)} rows of {paths.COLLECTED} not augmented, first {rejected[0]}",
                  file=sys.stderr)
        rows, report = augment(pool, blocked, config)
    write_if_changed(paths.AUGMENTED, jsonl_bytes(rows))
    write_if_changed(paths.AUGMENT, json_bytes(report.as_dict()))
    skipped = ", ".join(f"{n} {reason}" for reason, n in report.as_dict()["skipped"].items() if n) or "none"
    print(f"augment: {'on' if config.enabled else 'off (augment.enabled: false)'}: {report.variants} variants of "
          f"{report.augmented_rows} of {report.pool_rows} pool rows {dict(sorted(report.by_kind.items()))}; "
          f"skipped: {skipped} -> {paths.AUGMENTED}")
    return 0


if __name__ == "__main__":
    run(main)
