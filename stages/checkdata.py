"""Stage checkdata: validate the dataset, quarantine bad rows, check for leakage and conflicts,
and write the checked splits every later stage trains and evaluates on.

    python -m stages.checkdata

Reads params `data.*` (each explained in params.yaml). Writes data/prepared/ (train, calib, test,
taxonomy.json, quarantine.jsonl), report/checkdata.json (all findings and per-label counts) and
report/checkdata_summary.json (a handful of figures: the DVC metrics). Every text either report or
stderr shows is redacted.

Exit status: 0 when the data passes; 1 when a check fails (one line per failure on stderr; the
outputs are still written so they can be read); 2 when the params or the dataset cannot be used at
all (one line naming the file and what to do).
"""

from __future__ import annotations

import json
import sys

import yaml

from routelet.data.checks import DataParams, check_dataset, data_params, summary
from routelet.data.dataset import add_pool_files, load_dataset, write_prepared
from routelet.data.rows import DataError, Rejected, shown, write_quarantine
from routelet.paths import AUGMENTED, CHECKDATA, CHECKDATA_SUMMARY as SUMMARY, COLLECTED, PARAMS, PREPARED

QUARANTINE = PREPARED / "quarantine.jsonl"
SHOWN_LINES = 20  # lines of one kind printed; the report lists them all


def read_params() -> DataParams:
    try:
        params = yaml.safe_load(PARAMS.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise DataError(f"{PARAMS}: cannot read it ({error}): run from the repository root") from None
    return data_params(params)


def say(lines: list[str], more_in: str = "") -> None:
    for line in lines[:SHOWN_LINES]:
        print(f"checkdata: {line}", file=sys.stderr)
    if len(lines) > SHOWN_LINES:
        print(f"checkdata: ... and {len(lines) - SHOWN_LINES} more in {more_in}", file=sys.stderr)


def quarantine(rejected: list[Rejected]) -> None:
    write_quarantine(QUARANTINE, rejected)
    say([f"rejected {item}" for item in rejected], str(QUARANTINE))


def main() -> int:
    try:
        params = read_params()
        dataset = load_dataset(params.dir, params.taxonomy, params.max_chars, params.valid_fraction, params.seed)
        pool_files = add_pool_files(dataset, COLLECTED, AUGMENTED, params.max_chars)  # ingest's and augment's rows
    except DataError as error:
        if error.rejected:
            quarantine(error.rejected)
        print(f"checkdata: {error}", file=sys.stderr)
        return 2
    report, details = check_dataset(dataset, params)
    report["pool_files"] = pool_files
    try:
        write_prepared(dataset, PREPARED)
        quarantine(dataset.rejected)
        CHECKDATA.parent.mkdir(parents=True, exist_ok=True)
        CHECKDATA.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        SUMMARY.write_text(json.dumps(summary(report), indent=2) + "\n", encoding="utf-8")
    except OSError as error:
        print(f"checkdata: cannot write {error.filename}: {error.strerror}", file=sys.stderr)
        return 2
    say(details, str(CHECKDATA))
    say([f"dropped {item['where']} ({item['reason']}): {shown(item['text'])}" for item in report["dropped"]],
        str(CHECKDATA))
    say([f"warning: {line}" for line in report["warnings"]], str(CHECKDATA))
    say(report["failures"], str(CHECKDATA))
    figures = summary(report)
    print(f"checkdata: {figures['rows']}, {figures['rejected']} rejected, {figures['leaks']} leaks, "
          f"{figures['conflicts']} conflicts, {figures['dropped']} dropped -> {CHECKDATA}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
