"""The checks across rows that checkdata runs on a loaded dataset, and the `data:` params.

    params = data_params(yaml.safe_load(open("params.yaml")))
    report, details = check_dataset(load_dataset(params.dir, ...), params)

`check_dataset` finds pool texts that repeat an evaluation text (leaks) and texts with two labels
(conflicts), drops them where `data.on_leak` / `data.on_conflict` say `drop`, judges each file's
rejected share and the routes with no or few training rows, and returns the report: every text in
it is redacted, because report/checkdata.json is committed to git.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from routelet.data.dataset import Dataset
from routelet.data.images import ImageLeak, ImageSourced, image_conflicts, image_leaks
from routelet.data.rows import DataError, Sourced, shown
from routelet.data.taxonomy import Taxonomy
from routelet.paths import PARAMS, PREPARED
from routelet.serving.preprocess import normalise, preprocess, redact

# A perceptual-hash match is a leak only when 32x32 colour thumbnails also agree to this mean absolute
# difference (of 255): on data/screens, re-encoded, resized or cropped copies differ by <= 2, while
# distinct screenshots of one layout that the 64-bit greyscale hash cannot tell apart differ by >= 8.8.
THUMB_SIDE, THUMB_NEAR = 32, 4.0
SHOWN_PLACES = 5  # file:line places quoted in one message; the report lists them all
LISTED = 200  # rejected lines listed in the report, which is committed: the quarantine has them all
GONE = {"evals": "removed: a dataset folder's evaluation sets are its test.jsonl and its evals/ subfolder"}


class DataParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dir: str
    taxonomy: str = "taxonomy.yaml"
    valid_fraction: float = Field(0.2, gt=0, lt=1)
    seed: int = 0
    max_chars: int = Field(2000, gt=0)
    max_rejected_share: float = Field(0.0, ge=0, le=1)
    min_route_rows: int = Field(5, ge=0)
    on_empty_route: Literal["fail", "warn"] = "fail"
    on_leak: Literal["fail", "drop"] = "fail"
    on_conflict: Literal["fail", "drop"] = "fail"


def data_params(params: object) -> DataParams:
    """The `data:` section, checked: a typo (`on_leaks: drop`) fails here instead of being ignored."""
    data = params.get("data") if isinstance(params, dict) else None
    if not isinstance(data, dict):
        raise DataError(f"{PARAMS}: no `data:` section: it needs at least data.dir, the dataset folder")
    try:
        return DataParams.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        if first["type"] == "extra_forbidden":
            first["msg"] = f"unknown key: data takes {', '.join(DataParams.model_fields)}"
        raise DataError(f"{PARAMS}: data.{key}: {GONE.get(key) or first['msg']}") from None


def over_share(dataset: Dataset, limit: float) -> list[str]:
    """Files whose rejected share is over `limit`: each file on its own, so a large clean holdout
    cannot hide a broken train.jsonl."""
    return [
        f"{file}: {count.rejected} of {count.lines} lines rejected ({count.rejected / count.lines:.2%}), over "
        f"data.max_rejected_share={limit}: fix them (see {PREPARED / 'quarantine.jsonl'}) or raise the threshold"
        for file, count in dataset.files.items()
        if count.lines and count.rejected / count.lines > limit
    ]


@dataclass(frozen=True)
class Leak:
    kind: str  # exact, or normalised (equal after the preprocess)
    row: Sourced
    eval: Sourced

    def __str__(self) -> str:
        return f"leakage ({self.kind}): {self.row.where} repeats {self.eval.where}: {shown(self.row.row.text)}"

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "pool": self.row.where, "eval": self.eval.where, "text": redact(self.row.row.text)}


@dataclass(frozen=True)
class Conflict:
    text: str  # the normalised text the rows share
    rows: tuple[Sourced, ...]

    @property
    def labels(self) -> list[str]:
        return sorted({s.row.label for s in self.rows})

    def __str__(self) -> str:
        places = [s.where for s in self.rows]
        more = f" and {len(places) - SHOWN_PLACES} more" if len(places) > SHOWN_PLACES else ""
        return f"conflict: {shown(self.text)} has labels {self.labels} at {', '.join(places[:SHOWN_PLACES])}{more}"

    def as_dict(self) -> dict[str, object]:
        return {"text": redact(self.text), "labels": self.labels, "where": [s.where for s in self.rows]}


@dataclass
class PoolReport:
    leaks: list[Leak]
    conflicts: list[Conflict]
    duplicates: int

    def as_dict(self) -> dict[str, object]:
        """Every text in it is redacted: the report is committed to git."""
        return {
            "leaks": [leak.as_dict() for leak in self.leaks],
            "conflicts": [conflict.as_dict() for conflict in self.conflicts],
            "duplicates_in_pool": self.duplicates,
        }


def check_pool(pool: dict[str, list[Sourced]], evals: dict[str, list[Sourced]]) -> PoolReport:
    """Leakage from any pool split into any evaluation set (exact text, then after the
    preprocess), and one text carrying two labels anywhere in the pool."""
    exact: dict[str, Sourced] = {}
    normal: dict[str, Sourced] = {}
    for rows in evals.values():
        for s in rows:  # a leak points at the first evaluation row with that text
            exact.setdefault(s.row.text, s)
            normal.setdefault(preprocess(s.row.text), s)
    leaks = []
    for rows in pool.values():
        for s in rows:
            if s.row.text in exact:
                leaks.append(Leak("exact", s, exact[s.row.text]))
            elif (key := preprocess(s.row.text)) in normal:
                leaks.append(Leak("normalised", s, normal[key]))

    seen: dict[str, list[Sourced]] = defaultdict(list)
    for rows in pool.values():
        for s in rows:
            seen[normalise(s.row.text)].append(s)
    conflicts = [Conflict(text, tuple(group)) for text, group in seen.items()
                 if len({s.row.label for s in group}) > 1]
    duplicates = sum(len(group) - 1 for group in seen.values())
    return PoolReport(leaks, conflicts, duplicates)


def drop_rows(dataset: Dataset, report: PoolReport, leaks: bool, conflicts: bool) -> list[dict[str, object]]:
    """Remove leaking pool rows (the evaluation set stays whole) and every row of a text with two
    labels (which label is right is unknown). Returns what was dropped, redacted, in file order."""
    doomed: dict[int, tuple[Sourced, str]] = {}
    for leak in report.leaks if leaks else []:
        doomed[id(leak.row)] = (leak.row, f"leakage ({leak.kind}): repeats {leak.eval.where}")
    for conflict in report.conflicts if conflicts else []:
        for s in conflict.rows:
            doomed.setdefault(id(s), (s, f"conflict: the same text has labels {conflict.labels}"))
    gone = {s.where for s, _ in doomed.values()}
    for s in dataset.train:  # an augment variant goes with its original
        if (s.row.meta or {}).get("of") in gone:
            doomed.setdefault(id(s), (s, f"a variant of {s.row.meta['of']}, which was dropped"))
    dataset.train = [s for s in dataset.train if id(s) not in doomed]
    dataset.calib = [s for s in dataset.calib if id(s) not in doomed]
    ordered = sorted(doomed.values(), key=lambda item: (item[0].file, item[0].line))
    return [{"where": s.where, "label": s.row.label, "reason": reason, "text": redact(s.row.text)}
            for s, reason in ordered]


def label_counts(rows: list[Sourced]) -> dict[str, int]:
    return dict(sorted(Counter(s.row.label for s in rows).items()))


def route_counts(taxonomy: Taxonomy, rows: list[Sourced]) -> dict[str, int]:
    """Rows per route, every route of the taxonomy included (zero where it has none)."""
    counts = Counter(taxonomy.route_of(s.row.label) for s in rows)
    return {name: counts.get(name, 0) for name in taxonomy.route_names}


def route_coverage(dataset: Dataset, min_rows: int) -> tuple[list[str], dict[str, int]]:
    """Routes with no training row (never predicted: the models have no class for them) and
    routes with fewer than `min_rows`. The reject route may have none: abstaining reaches it."""
    counts = route_counts(dataset.taxonomy, dataset.train)
    empty = [name for name, n in counts.items() if n == 0 and name != dataset.taxonomy.reject]
    thin = {name: n for name, n in counts.items() if 0 < n < min_rows}
    return empty, thin


def size_problems(dataset: Dataset) -> list[str]:
    """Splits too small to train or calibrate on, after every drop: found here, not in sklearn."""
    problems = []
    routes = [name for name, n in route_counts(dataset.taxonomy, dataset.train).items() if n]
    if len(routes) < 2:
        problems.append(f"the train split has rows of {len(routes)} route(s) {routes}: a router needs at least "
                        "two routes with training rows")
    if not dataset.calib:
        problems.append("the calibration split is empty: add valid.jsonl, or at least two rows to some label so "
                        "data.valid_fraction can carve one")
    return problems


def route_lines(empty: list[str], thin: dict[str, int], params: DataParams) -> tuple[list[str], list[str]]:
    """(failures, warnings) about routes with no or few training rows."""
    failures, warnings = [], []
    if empty:
        never = (f"{len(empty)} route(s) with no training rows, which the router can never predict: "
                 f"{', '.join(map(repr, empty))}: add rows or remove them from the taxonomy")
        if params.on_empty_route == "fail":
            failures.append(f"{never}, or set data.on_empty_route=warn")
        else:
            warnings.append(never)
    if thin:
        counts = ", ".join(f"{name} ({n})" for name, n in thin.items())
        warnings.append(f"{len(thin)} route(s) with fewer than data.min_route_rows={params.min_route_rows} "
                        f"training rows, so their figures are noisy: {counts}")
    return failures, warnings


def check_text_pool(dataset: Dataset, params: DataParams) -> tuple[dict, list, list[str], list[str]]:
    """Leaks and conflicts of a text dataset: (report fields, dropped, detail lines, failures)."""
    pool = check_pool({"train": dataset.train, "calib": dataset.calib}, dataset.evals)
    dropped = drop_rows(dataset, pool, params.on_leak == "drop", params.on_conflict == "drop")
    failures, details = [], []
    if params.on_leak == "fail" and pool.leaks:
        details += map(str, pool.leaks)
        failures.append(f"{len(pool.leaks)} pool row(s) repeat an evaluation text: remove them or set "
                        "data.on_leak=drop")
    if params.on_conflict == "fail" and pool.conflicts:
        details += map(str, pool.conflicts)
        failures.append(f"{len(pool.conflicts)} text(s) have two labels: fix them or set data.on_conflict=drop")
    return pool.as_dict(), dropped, details, failures


def _image_conflict_line(group: list[ImageSourced]) -> str:
    places = [s.where for s in group]
    more = f" and {len(places) - SHOWN_PLACES} more" if len(places) > SHOWN_PLACES else ""
    return (f"conflict: image {group[0].row.image} (same bytes) has labels {sorted({s.row.label for s in group})} "
            f"at {', '.join(places[:SHOWN_PLACES])}{more}")


def _thumbnail(row: ImageSourced) -> np.ndarray:
    with Image.open(row.path) as image:
        return np.asarray(image.convert("RGB").resize((THUMB_SIDE, THUMB_SIDE), Image.BILINEAR, reducing_gap=3.0),
                          np.float32)


def confirmed(leak: ImageLeak) -> bool:
    """Same bytes, or a perceptual-hash match whose colour thumbnails agree too."""
    return leak.kind == "same bytes" or float(np.abs(_thumbnail(leak.pool) - _thumbnail(leak.held)).mean()) <= THUMB_NEAR


def check_image_pool(dataset: Dataset, params: DataParams) -> tuple[dict, list, list[str], list[str]]:
    """The image analogue of check_text_pool: leaks by exact bytes or perceptual hash, conflicts by
    identical bytes under two labels."""
    leaks = [leak for leak in image_leaks(dataset.train + dataset.calib, dataset.evals) if confirmed(leak)]
    conflicts = image_conflicts(dataset.train + dataset.calib)
    doomed: dict[int, tuple[ImageSourced, str]] = {}
    for leak in leaks if params.on_leak == "drop" else []:
        doomed[id(leak.pool)] = (leak.pool, f"leakage ({leak.kind}): repeats {leak.held.where}")
    for group in conflicts.values() if params.on_conflict == "drop" else []:
        for s in group:
            doomed.setdefault(id(s), (s, f"conflict: the same image has labels {sorted({r.row.label for r in group})}"))
    dataset.train = [s for s in dataset.train if id(s) not in doomed]
    dataset.calib = [s for s in dataset.calib if id(s) not in doomed]
    dropped = [{"where": s.where, "label": s.row.label, "reason": reason, "text": s.row.image}
               for s, reason in sorted(doomed.values(), key=lambda item: (item[0].file, item[0].line))]
    failures, details = [], []
    if params.on_leak == "fail" and leaks:
        details += map(str, leaks)
        failures.append(f"{len(leaks)} pool image(s) repeat an evaluation image: remove them or set data.on_leak=drop")
    if params.on_conflict == "fail" and conflicts:
        details += map(_image_conflict_line, conflicts.values())
        failures.append(f"{len(conflicts)} image(s) have two labels: fix them or set data.on_conflict=drop")
    pool = dataset.train + dataset.calib
    fields = {"leaks": [{"kind": leak.kind, "pool": leak.pool.where, "eval": leak.held.where,
                         "image": leak.pool.row.image} for leak in leaks],
              "conflicts": [{"image": group[0].row.image, "labels": sorted({s.row.label for s in group}),
                             "where": [s.where for s in group]} for group in conflicts.values()],
              "duplicates_in_pool": len(pool) - len({s.sha256 for s in pool})}
    return fields, dropped, details, failures


def check_dataset(dataset: Dataset, params: DataParams) -> tuple[dict, list[str]]:
    """Run every check and drop what the params say to drop. Returns the report and one line per
    leak or conflict that fails the run (texts redacted in both)."""
    check = check_image_pool if dataset.modality == "image" else check_text_pool
    pool, dropped, details, pool_failures = check(dataset, params)
    failures = over_share(dataset, params.max_rejected_share) + pool_failures
    empty, thin = route_coverage(dataset, params.min_route_rows)
    route_failures, warnings = route_lines(empty, thin, params)
    failures += route_failures + size_problems(dataset)
    report = {
        "dataset": params.dir,
        **({"modality": "image"} if dataset.modality == "image" else {}),  # text reports stay as they were
        "taxonomy": dataset.taxonomy_source,
        "evals": list(dataset.evals),
        "rows": {"train": len(dataset.train), "calib": len(dataset.calib), "test": len(dataset.test)},
        "files": {file: vars(count) for file, count in dataset.files.items()},
        "rejected_lines": len(dataset.rejected),
        "rejected": [str(item) for item in dataset.rejected[:LISTED]],
        **pool,
        "dropped": dropped,
        "routes": route_counts(dataset.taxonomy, dataset.train),
        "empty_routes": empty,
        "thin_routes": thin,
        "counts": {split: label_counts(getattr(dataset, split)) for split in ("train", "calib", "test")},
        "warnings": warnings,
        "failures": failures,
        "ok": not failures,
    }
    return report, details


def summary(report: dict) -> dict:
    """The figures worth tracking as DVC metrics: a few numbers, not one per label."""
    return {"rows": report["rows"], "rejected": report["rejected_lines"], "leaks": len(report["leaks"]),
            "conflicts": len(report["conflicts"]), "dropped": len(report["dropped"]),
            "routes": len(report["routes"]), "empty_routes": len(report["empty_routes"]),
            "thin_routes": len(report["thin_routes"])}
