"""Stage ingest: label the pulled samples into the pool, data/collected.jsonl, with provenance.

    python -m stages.ingest                 # ANTHROPIC_API_KEY from the environment; without one,
                                            # new samples wait in data/ingest/queue.jsonl

Reads params `seed`, `data.*` (the dataset whose pool and evaluation sets samples are deduplicated
against) and `ingest.*` (the teacher, its budget, the uncertainty ranking); data/samples/ and the
frozen evals/. Writes data/collected.jsonl (append-only, a DVC `persist` out), data/ingest/
(queue.jsonl, review.jsonl and the teacher's answer cache; `persist`) and report/ingest.json. The
steps are in routelet/data/ingest.py. A run with nothing new changes no file.
"""

from __future__ import annotations

import sys
from dataclasses import replace

from pydantic import ValidationError

from routelet import paths
from routelet.data.checks import data_params
from routelet.data.dataset import load_dataset
from routelet.data.ingest import QUEUE, REVIEW, IngestConfig, IngestFiles, Outcome, ingest
from routelet.data.outputs import json_bytes, write_if_changed
from routelet.data.rows import DataError
from routelet.data.samples import PULLED
from routelet.params import ConfigError, load_params, run

SHOWN = 20  # unreadable lines printed; the report lists more


def read_config(params: dict) -> IngestConfig:
    try:
        return IngestConfig.model_validate(params.get("ingest") or {})
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"params.yaml: ingest.{key}: {first['msg']}") from None


def say(outcome: Outcome, report: dict) -> None:
    for line in outcome.unreadable[:SHOWN]:
        print(f"ingest: unreadable sample {line} (left in {paths.SAMPLES / PULLED})", file=sys.stderr)
    stopped = report["teacher"]["stopped"]
    if stopped and report["queued"]:
        print(f"ingest: {stopped}: {report['queued']} samples wait in {paths.INGEST_STATE / QUEUE} "
              "and are asked on the next run", file=sys.stderr)
    if report["review"]:
        print(f"ingest: {report['review']} samples need a person: {paths.INGEST_STATE / REVIEW}", file=sys.stderr)
    dups = report["duplicates"]
    print(f"ingest: {report['pulled']} pulled: {report['already_collected']} already in the pool; duplicates: "
          f"{dups['eval']} of evaluation texts, {dups['dataset']} of the dataset, {dups['pool']} of the pool; "
          f"{report['labeled']} labeled by the teacher, {report['free_labeled']} free labels, {report['queued']} "
          f"queued, {report['review']} for review; {report['calls']} calls, ${report['cost_usd']:.4f} "
          f"-> {paths.COLLECTED} ({report['pool_rows']} rows)")
    if not outcome.changed:
        print("ingest: nothing new: no file changed")


def main() -> int:
    params = load_params()
    try:
        config, data = read_config(params), data_params(params)
        dataset = load_dataset(data.dir, data.taxonomy, data.max_chars, data.valid_fraction, data.seed)
        files = IngestFiles(paths.SAMPLES / PULLED, paths.COLLECTED, paths.INGEST_STATE, paths.EVALS)
        if dataset.modality == "image":  # the samples are texts: none can join an image dataset, none is sent
            print("ingest: an image dataset: text samples are not ingested")
            dataset = replace(dataset, train=[], calib=[], test=[], evals={})
            files = replace(files, samples=paths.SAMPLES / "no-text-samples-for-an-image-dataset")
        outcome = ingest(dataset, files, config, seed=params["seed"], max_chars=data.max_chars)
    except (DataError, ValueError) as error:
        print(f"ingest: error: {error}", file=sys.stderr)
        return 2
    report = outcome.report()
    if outcome.changed or not paths.INGEST.exists():  # the report describes the run that made the files
        write_if_changed(paths.INGEST, json_bytes(report))
    say(outcome, report)
    return 0


if __name__ == "__main__":
    run(main)
