"""Ingest: pulled samples -> the labeled pool (data/collected.jsonl), each row with its provenance.

    outcome = ingest(load_dataset("data/clinc150"), IngestFiles(...), IngestConfig.from_params(params["ingest"]))

Usually run as the stage: `python -m stages.ingest`. Every row of pull_samples' pulled.jsonl goes
through the same steps, in this order, and ends in exactly one place (nothing is dropped unsaid):

1. redaction (`routelet.serving.preprocess.redact`) before anything else looks at the text;
2. the row already gave a pool row in an earlier run (its `meta.sample` names it): done;
3. dedup, exact and after the preprocess: a text of an evaluation set (the dataset's test.jsonl and
   evals/, the frozen evals/ folder) is dropped and listed in the report; so is a text the pool
   already holds (the dataset's train/valid, collected.jsonl) or an earlier sample;
4. a trusted label (`label` with `meta.label_source`, the "free label") is kept with that
   provenance; one outside the taxonomy, or two trusted labels that disagree, go to review;
5. the teacher (routelet.llm) labels the rest. When the budget may not cover them all, those a
   TF-IDF model fitted on the current pool is least sure of go first (routelet.data.uncertainty).
   A label is appended to the pool with the teacher's provenance (labeler, model, prompt hash,
   time, raw answer); an answer outside the label set or malformed goes to review; a text not
   answered (no API key, budget spent, API down) waits in the queue and is asked next run.

collected.jsonl only grows, and is replaced whole (temp file + rename) so a killed run never leaves
half a line. queue.jsonl and review.jsonl are recomputed each run from pulled.jsonl, the pool and
the teacher's answer cache, so they can never lose or double a row; answers come from that cache
for free, so a re-run with nothing new asks nothing and leaves every file byte for byte as it was.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from routelet.data.dataset import Dataset
from routelet.data.dedup import TextIndex, evaluation_sets, index_rows
from routelet.data.outputs import jsonl_bytes, write_if_changed
from routelet.data.rows import DataError, read_rows
from routelet.data.uncertainty import UncertaintyConfig, rank_by_uncertainty
from routelet.llm.cache import cache_key
from routelet.llm.config import TeacherConfig
from routelet.llm.result import Result
from routelet.llm.teacher import Teacher, make_teacher
from routelet.serving.preprocess import preprocess, redact

QUEUE, REVIEW, CACHE = "queue.jsonl", "review.jsonl", "teacher_cache.jsonl"
LISTED = 100  # evaluation duplicates listed by place in the report (the count covers them all)
DECISION = ("route", "confidence", "abstain", "model_version", "time")  # of the serving router, kept


class IngestConfig(BaseModel):
    """params.yaml `ingest`: the teacher's settings (routelet.llm.config) and the ranking model."""

    model_config = ConfigDict(extra="forbid")

    provider: Literal["anthropic", "openai"] = "anthropic"
    base_url: str | None = None  # None: the provider's API (the SDK honours ANTHROPIC_BASE_URL)
    teacher: dict[str, Any] = Field(default_factory=dict)
    uncertainty: UncertaintyConfig = Field(default_factory=UncertaintyConfig)

    def teacher_config(self) -> TeacherConfig:
        config = TeacherConfig.from_params(self.teacher, where="params.yaml: ingest.teacher")
        if config.granularity != "labels":
            raise ValueError("params.yaml: ingest.teacher.granularity must be `labels`: the pool holds fine labels")
        return config


@dataclass(frozen=True)
class IngestFiles:
    samples: Path  # pull_samples' pulled.jsonl (may not exist yet: nothing pulled)
    collected: Path  # the labeled pool this stage appends to
    state: Path  # folder: queue.jsonl, review.jsonl, the teacher's answer cache
    frozen_evals: Path  # the repository's evals/ folder


@dataclass
class Sample:
    """One pulled row, redacted, with where it came from (`meta.pulled`, else its line)."""

    text: str
    normal: str
    line: int
    origin: dict[str, Any]
    label: str | None = None
    label_source: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    id: str | int | None = None

    @property
    def ref(self) -> str:
        return json.dumps(self.origin, sort_keys=True)

    def base(self) -> dict[str, Any]:
        """The fields every output row of this sample starts with."""
        row: dict[str, Any] = {"text": self.text}
        if self.id is not None:
            row["id"] = self.id
        return row

    def pool_row(self, label: str, provenance: dict[str, Any]) -> dict[str, Any]:
        decision = {key: self.meta[key] for key in DECISION if self.meta.get(key) is not None}
        meta = {"sample": self.origin, "provenance": provenance} | ({"decision": decision} if decision else {})
        return self.base() | {"label": label, "meta": meta}

    def held_row(self, reason: str, **extra: Any) -> dict[str, Any]:
        """A queue or review row: the text, why it is there, the answer if any, where it came from."""
        return self.base() | {"reason": reason} | {k: v for k, v in extra.items() if v is not None} | {
            "sample": self.origin}


@dataclass
class Outcome:
    """What one run found and did; `report()` is report/ingest.json."""

    pulled: int = 0
    unreadable: list[str] = field(default_factory=list)
    already_collected: int = 0
    duplicates: Counter = field(default_factory=Counter)  # eval, dataset, pool
    eval_duplicates: list[dict[str, str]] = field(default_factory=list)
    new_rows: list[dict[str, Any]] = field(default_factory=list)  # appended to the pool this run
    review: list[dict[str, Any]] = field(default_factory=list)
    queue: list[dict[str, Any]] = field(default_factory=list)
    ranked_by: str = "not needed"
    teacher: dict[str, Any] = field(default_factory=dict)
    pool_rows: int = 0
    changed: bool = False  # whether any output file changed

    def report(self) -> dict[str, Any]:
        sources = Counter(row["meta"]["provenance"]["labeler"] for row in self.new_rows)
        labeled = sum(n for labeler, n in sources.items() if labeler != "trusted")
        return {
            "pulled": self.pulled,
            "unreadable": len(self.unreadable),
            "already_collected": self.already_collected,
            "duplicates": {kind: self.duplicates[kind] for kind in ("eval", "dataset", "pool")},
            "labeled": labeled,
            "free_labeled": sources["trusted"],
            "queued": len(self.queue),
            "review": len(self.review),
            "pool_rows": self.pool_rows,
            "calls": self.teacher.get("calls", 0),
            "cost_usd": self.teacher.get("usd", 0.0),
            "cache_hits": self.teacher.get("cache_hits", 0),
            "tokens": self.teacher.get("tokens", {}),
            "teacher": {key: self.teacher.get(key) for key in ("model", "prompt_hash", "stopped")},
            "ranked_by": self.ranked_by,
            "new_labels": dict(sorted(Counter(row["label"] for row in self.new_rows).items())),
            "unreadable_lines": self.unreadable[:LISTED],
            "eval_duplicates": self.eval_duplicates[:LISTED],
        }


# --------------------------------------------------------------------------------------------
# reading


def read_samples(path: Path, max_chars: int) -> tuple[list[Sample], list[str]]:
    """The pulled rows, redacted, and the lines that break the row contract (file:line: reason)."""
    if not path.is_file():
        return [], []
    rows, rejected = read_rows(path, None, max_chars, require_label=False)
    samples = []
    for sourced in rows:
        row, meta = sourced.row, dict(sourced.row.meta or {})
        text = redact(row.text)
        origin = meta.pop("pulled", None) or {"file": str(path), "line": sourced.line}
        samples.append(Sample(text, preprocess(text), sourced.line, origin, row.label, meta.pop("label_source", None),
                              meta, row.id))
    return samples, [str(item) for item in rejected]


def read_pool(path: Path) -> list[dict[str, Any]]:
    """collected.jsonl as written by this stage. A broken line stops the run: guessing could label
    a sample twice or lose a label, and the fix (restore the file) is the user's call."""
    if not path.is_file():
        return []
    rows, rejected = read_rows(path, None, 1 << 30)
    if rejected:
        raise DataError(f"{rejected[0]}: {path} is the labeled pool ingest appends to and was changed by "
                        f"hand or broken: fix the line, or restore it with `dvc checkout {path}`")
    return [row.row.model_dump(exclude_none=True) for row in rows]


# --------------------------------------------------------------------------------------------
# sorting the samples


@dataclass
class Sorted:
    free: list[tuple[Sample, str, dict]] = field(default_factory=list)  # (sample, label, provenance)
    ask: list[Sample] = field(default_factory=list)
    review: list[dict[str, Any]] = field(default_factory=list)


def sort_samples(samples: list[Sample], dataset: Dataset, pool: list[dict], files: IngestFiles,
                 max_chars: int, outcome: Outcome) -> Sorted:
    """Steps 2 to 4 of the module docstring: done, duplicates, trusted labels, what to ask."""
    done = {json.dumps(row["meta"]["sample"], sort_keys=True) for row in pool if "sample" in row.get("meta", {})}
    evals = evaluation_sets(dataset.evals, files.frozen_evals, max_chars)
    known = index_rows(dataset.train + dataset.calib)
    collected = TextIndex()
    for number, row in enumerate(pool, start=1):
        collected.add(row["text"], f"{files.collected}:{number}")
    groups: dict[str, list[Sample]] = {}
    for sample in samples:
        if sample.ref in done:
            outcome.already_collected += 1
            continue
        for kind, index in (("eval", evals), ("dataset", known), ("pool", collected)):
            found = index.find(sample.text, sample.normal)
            if found:
                outcome.duplicates[kind] += 1
                if kind == "eval":
                    outcome.eval_duplicates.append({"sample": f"{files.samples}:{sample.line}", "match": found[0],
                                                    "eval": found[1]})
                break
        else:
            groups.setdefault(sample.normal, []).append(sample)
    result = Sorted()
    for group in groups.values():
        _resolve(group, dataset.taxonomy.labels, result, outcome)
    return result


def _resolve(group: list[Sample], labels: list[str], result: Sorted, outcome: Outcome) -> None:
    """One text pulled one or more times: a trusted label wins over none; the rest are duplicates."""
    trusted = [s for s in group if s.label is not None and s.label_source]
    chosen = trusted[0] if trusted else group[0]
    outcome.duplicates["pool"] += len(group) - 1
    if not trusted:
        result.ask.append(chosen)
        return
    provenance = {"labeler": "trusted", "label_source": chosen.label_source, "time": chosen.meta.get("time")}
    disagree = sorted({s.label for s in trusted})
    if len(disagree) > 1:
        result.review.append(chosen.held_row(f"trusted labels disagree: {disagree}", provenance=provenance))
    elif chosen.label not in labels:
        result.review.append(chosen.held_row(
            f"off_taxonomy: the trusted label {chosen.label[:80]!r} (from {chosen.label_source}) is not a label "
            "of the taxonomy", answer=chosen.label, provenance=provenance))
    else:
        result.free.append((chosen, chosen.label, provenance))


# --------------------------------------------------------------------------------------------
# asking the teacher


def may_fall_short(teacher: Teacher, texts: list[str]) -> bool:
    """Whether this run's budget might not cover one call per text (judged before any call)."""
    config = teacher.config
    if config.max_calls is not None and len(texts) > config.max_calls:
        return True
    return config.max_usd is not None and sum(map(teacher._estimate_usd, texts)) > config.max_usd


def ask_teacher(teacher: Teacher, ask: list[Sample], pool_texts: list[str], pool_labels: list[str],
                config: IngestConfig, seed: int, outcome: Outcome) -> list[Result]:
    """One Result per sample of `ask` (same order); the least certain uncached texts asked first."""
    order = list(range(len(ask)))
    cache = teacher.cache if teacher.cache is not None else {}
    uncached = [i for i, sample in enumerate(ask)
                if cache_key(teacher.cache_model, teacher.prompt.hash, sample.text) not in cache]
    if teacher.stopped:
        outcome.ranked_by = f"not needed: {teacher.stopped}"
    elif len(uncached) > 1 and may_fall_short(teacher, [ask[i].text for i in uncached]):
        ranked = rank_by_uncertainty([ask[i].text for i in uncached], pool_texts, pool_labels, config.uncertainty,
                                     seed)
        if ranked is None:
            outcome.ranked_by = "pulled order: the pool has fewer than two labels to fit a ranking model on"
        else:
            cached = sorted(set(order) - set(uncached))
            order = cached + [uncached[i] for i in ranked]
            outcome.ranked_by = f"uncertainty ({config.uncertainty.measure}) of a TF-IDF model fitted on the pool"
    answers = teacher.label([ask[i].text for i in order])
    results = [None] * len(ask)
    for i, answer in zip(order, answers):
        results[i] = answer
    return results


# --------------------------------------------------------------------------------------------


def ingest(dataset: Dataset, files: IngestFiles, config: IngestConfig, seed: int = 0, max_chars: int = 2000,
           api_key: str | None = None) -> Outcome:
    """Run every step of the module docstring; returns what happened (the stage prints and reports it)."""
    teacher_config = config.teacher_config()
    outcome = Outcome()
    samples, outcome.unreadable = read_samples(files.samples, max_chars)
    outcome.pulled = len(samples) + len(outcome.unreadable)
    pool = read_pool(files.collected)
    found = sort_samples(samples, dataset, pool, files, max_chars, outcome)
    teacher = make_teacher(dataset.taxonomy, teacher_config, files.state / CACHE, provider=config.provider,
                           base_url=config.base_url, api_key=api_key)
    answered: list[tuple[Sample, str, dict]] = list(found.free)
    review, queue = list(found.review), []
    if found.ask:
        pool_pairs = [(s.row.text, s.row.label) for s in dataset.train + dataset.calib]
        pool_pairs += [(row["text"], row["label"]) for row in pool]
        results = ask_teacher(teacher, found.ask, [t for t, _ in pool_pairs], [label for _, label in pool_pairs],
                              config, seed, outcome)
        for sample, result in zip(found.ask, results):
            if result.status == "labeled":
                answered.append((sample, result.label, result.provenance))
            elif result.status == "review":
                review.append(sample.held_row(result.reason, answer=result.raw, provenance=result.provenance))
            else:
                queue.append(sample.held_row(result.reason))
    outcome.teacher = teacher.summary()
    answered.sort(key=lambda item: item[0].line)  # pulled order: the same input appends the same bytes
    outcome.new_rows = [sample.pool_row(label, provenance) for sample, label, provenance in answered]
    outcome.review = sorted(review, key=_pulled_order(samples))
    outcome.queue = sorted(queue, key=_pulled_order(samples))
    outcome.pool_rows = len(pool) + len(outcome.new_rows)
    _write(files, outcome)
    return outcome


def _pulled_order(samples: list[Sample]):
    lines = {sample.ref: sample.line for sample in samples}
    return lambda row: lines[json.dumps(row["sample"], sort_keys=True)]


def _write(files: IngestFiles, outcome: Outcome) -> None:
    """Append the new pool rows; replace the queue and the review file (each only if it changed)."""
    changed = False
    if outcome.new_rows or not files.collected.exists():
        old = files.collected.read_bytes() if files.collected.exists() else b""
        changed |= write_if_changed(files.collected, old + jsonl_bytes(outcome.new_rows))
    changed |= write_if_changed(files.state / REVIEW, jsonl_bytes(outcome.review))
    changed |= write_if_changed(files.state / QUEUE, jsonl_bytes(outcome.queue))
    outcome.changed = changed
