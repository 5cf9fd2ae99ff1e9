"""Stage checkdata: validate the dataset, quarantine bad rows, check for leakage and conflicts,
and write the checked splits every later stage trains and evaluates on.

    python -m stages.checkdata

Reads params `data.*`; writes data/prepared/ (train, calib, test, taxonomy.json, quarantine.jsonl)
and report/checkdata.json. Fails when the rejected share is over `data.max_rejected_share`, when a
pool text repeats an evaluation text, or when one text carries two labels.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from routelet.data.rows import read_rows, write_quarantine
from routelet.data.dataset import check_pool, load_dataset, write_prepared
from routelet.params import load_params
from routelet.paths import CHECKDATA as REPORT, PREPARED


def main() -> int:
    data = load_params()["data"]
    dataset = load_dataset(data["dir"], data["taxonomy"], data["max_chars"], data["valid_fraction"], data["seed"])
    evals = {"test": dataset.test}
    for path in sorted(Path(data["evals"]).glob("*.jsonl")):
        # Other evaluation sets may use other label sets: only their texts matter for leakage.
        rows, rejected = read_rows(path, max_chars=data["max_chars"], require_label=False)
        evals[str(path)] = rows
        dataset.rejected.extend(rejected)
        dataset.lines_read += len(rows) + len(rejected)

    report = check_pool({"train": dataset.train, "calib": dataset.calib}, evals)
    write_prepared(dataset, PREPARED)
    write_quarantine(PREPARED / "quarantine.jsonl", dataset.rejected)
    summary = report.as_dict() | {
        "dataset": data["dir"],
        "rows": {"train": len(dataset.train), "calib": len(dataset.calib), "test": len(dataset.test)},
        "rejected": [str(r) for r in dataset.rejected],
        "rejected_share": round(dataset.rejected_share, 6),
    }
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(summary, indent=2) + "\n")

    for rejected in dataset.rejected:
        print(f"rejected {rejected}", file=sys.stderr)
    failures = report.problems
    if dataset.rejected_share > data["max_rejected_share"]:
        failures.append(
            f"{len(dataset.rejected)} of {dataset.lines_read} lines rejected ({dataset.rejected_share:.2%}), over "
            f"data.max_rejected_share={data['max_rejected_share']}: fix them (see {PREPARED / 'quarantine.jsonl'}) "
            "or raise the threshold"
        )
    for failure in failures:
        print(f"checkdata: {failure}", file=sys.stderr)
    print(f"checkdata: {summary['rows']}, {len(dataset.rejected)} rejected, {len(report.leaks)} leaks, "
          f"{len(report.conflicts)} conflicts -> {REPORT}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
