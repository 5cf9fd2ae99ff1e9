"""Stage pull_samples: take the new sample objects of a folder or an S3 bucket (what
`routelet serve --log-samples` writes), exactly once, into data/samples/.

    python -m stages.pull_samples

Reads params `pull_samples.*` and `data.max_chars`. Writes data/samples/ (pulled.jsonl,
quarantine.jsonl, manifest.json; append-only, a DVC `persist` out) and report/pull_samples.json
(totals). The stage is `always_changed`: with nothing new it writes no byte, so nothing downstream
re-runs. S3 credentials come from the environment or the AWS config, never from params.
"""

from __future__ import annotations

import json
import sys

from routelet import paths
from routelet.data.samples import Limits, pull
from routelet.params import load_params, run
from routelet.serving.sample_log import StorageError


def main() -> int:
    params = load_params()
    config = params["pull_samples"]
    limits = Limits(config["max_object_bytes"], config["max_line_bytes"], params["data"]["max_chars"])
    try:
        summary = pull(config["source"], paths.SAMPLES, endpoint_url=config.get("endpoint_url"),
                       region=config.get("region"), profile=config.get("profile"), limits=limits,
                       workers=config["workers"])
    except StorageError as error:
        print(f"pull_samples: error: {error}", file=sys.stderr)
        return 2
    for note in summary.notes:
        print(f"pull_samples: {note}", file=sys.stderr)
    for name in summary.skipped:
        print(f"pull_samples: {name} vanished or changed while pulling: taken next run", file=sys.stderr)
    report = json.dumps({"source": summary.source} | summary.totals, indent=2) + "\n"
    if not paths.PULL_SAMPLES.exists() or paths.PULL_SAMPLES.read_text() != report:
        paths.PULL_SAMPLES.parent.mkdir(parents=True, exist_ok=True)
        paths.PULL_SAMPLES.write_text(report)
    rate = summary.new_rows / summary.seconds if summary.seconds else 0.0
    print(f"pull_samples: {summary.new_objects} new and {summary.changed_objects} changed objects from "
          f"{summary.source}: {summary.new_rows} rows, {summary.new_quarantined} quarantined "
          f"({summary.seconds:.1f} s, {rate:.0f} rows/s); totals {summary.totals} -> {paths.SAMPLES}")
    return 0


if __name__ == "__main__":
    run(main)
