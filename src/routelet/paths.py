"""Where the pipeline keeps its artifacts: every stage, script and the CLI take paths from here.

dvc.yaml names the same paths (it cannot import Python); `tests/test_stage_deps.py` checks that the
two agree.
"""

import os
from pathlib import Path

PARAMS = Path("params.yaml")
PREPARED = Path("data/prepared")  # checked splits: train/calib/test.jsonl, taxonomy.json, quarantine.jsonl
ENCODER = Path("data/encoder.json")  # the resolved `model` encoder the encoder families train on
MODELS = Path("data/models")  # one folder per trained family
ROUTER = Path("data/router")  # the router folder that ships
REPORT = Path("report")
PLOTS = REPORT / "plots"
FIGURES = REPORT / "figures"
CHECKDATA = REPORT / "checkdata.json"
CHECKDATA_SUMMARY = REPORT / "checkdata_summary.json"  # a few figures: the DVC metrics
CALIBRATION = REPORT / "calibration.json"
EXPORT = REPORT / "export.json"
METRICS = REPORT / "metrics.json"
TIMINGS = REPORT / "timings.json"
DETAILS = REPORT / "details.json"
BASELINES = REPORT / "baselines.json"
BENCH = REPORT / "bench.json"
SAMPLES = Path("data/samples")  # pulled.jsonl, manifest.json, quarantine.jsonl (append-only)
PULL_SAMPLES = REPORT / "pull_samples.json"
COLLECTED = Path("data/collected.jsonl")  # ingest's labeled pool, with provenance (append-only)
INGEST_STATE = Path("data/ingest")  # ingest's queue.jsonl, review.jsonl and the teacher's answer cache
AUGMENTED = Path("data/augmented.jsonl")  # augment's voice-like variants, for the train split only
EVALS = Path("evals")  # the frozen evaluation sets, committed to git
INGEST = REPORT / "ingest.json"
AUGMENT = REPORT / "augment.json"
# Outside DVC: what is recomputed on a miss (embeddings, exported encoders, image checks), shared
# by every experiment on this machine.
CACHE_ROOT = Path(os.environ.get("ROUTELET_CACHE", ".cache/routelet"))
