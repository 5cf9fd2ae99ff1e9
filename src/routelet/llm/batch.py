"""Bulk labeling through the Message Batches API (half price; answers within 24 hours).

`label_in_batches(teacher, {key: text})` collects the batches an earlier run left pending, then
submits what is still unanswered (within the budget), polls until the batches end or
`batch_max_wait_s` passes, and records every answer in the cache. A batch is written to the
pending file (beside the cache: `<cache>.batches.json`) the moment it is created, so a run killed
while waiting picks the batch up next time instead of paying for it again. Each request's
custom_id is its cache key.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from routelet.llm.result import Result
from routelet.llm.retry import CallFailed, with_retries
from routelet.llm.teacher import ClaudeTeacher, answer_from_message, now_iso, sdk_errors, shown


def label_in_batches(teacher: ClaudeTeacher, todo: dict[str, str]) -> dict[str, Result]:
    if teacher.cache is None:
        raise ValueError("batch mode needs a cache file: batch answers arrive after the run that asked")
    pending = PendingBatches(teacher.cache.path.with_name(teacher.cache.path.name + ".batches.json"))
    notes: dict[str, str] = {}
    try:
        _collect(teacher, pending, pending.mine(teacher), notes, reserved=False)
        unasked = [key for key in todo if key not in teacher.cache and key not in pending.keys()]
        created = _submit(teacher, pending, {key: todo[key] for key in unasked}, notes)
        _collect(teacher, pending, created, notes, reserved=True)
    except CallFailed as failure:
        reason = f"{failure.kind}: {failure}"
        notes.update({key: reason for key in todo if key not in notes})
    results = {}
    for key, text in todo.items():
        cached = teacher._cached(text, key)
        results[key] = cached if cached is not None else Result(
            shown(text), "queued", reason=notes.get(key) or pending.waiting_reason(key), key=key)
        if cached is not None:
            cached.cached = False  # answered in this run, not a hit from an earlier one
    return results


def _submit(teacher: ClaudeTeacher, pending: PendingBatches, todo: dict[str, str],
            notes: dict[str, str]) -> list[dict]:
    """Create batches for the texts the budget covers; the rest are noted as queued."""
    config, created = teacher.config, []
    keys = []
    for key, text in todo.items():  # in order: once the budget is spent, nothing later is asked
        if not teacher.stopped and teacher.budget.reserve(teacher._estimate_usd(text) * config.prices.batch_discount):
            keys.append(key)
        else:
            teacher.stopped = notes[key] = teacher.stopped or teacher.budget.exhausted_reason()
    for start in range(0, len(keys), config.batch_chunk):
        chunk = keys[start:start + config.batch_chunk]
        requests = [{"custom_id": key, "params": teacher.request_params(todo[key])} for key in chunk]
        try:
            batch = with_retries(lambda: _create(teacher, requests), config)
        except CallFailed:
            teacher.budget.release(len(keys) - start)
            raise
        entry = {"id": batch.id, "model": teacher.cache_model, "prompt_hash": teacher.prompt.hash,
                 "keys": chunk, "created": now_iso()}
        pending.add(entry)
        created.append(entry)
    return created


def _create(teacher: ClaudeTeacher, requests: list[dict]):
    try:
        with sdk_errors():
            return teacher.client.messages.batches.create(requests=requests)
    except CallFailed as failure:
        if failure.kind in ("timeout", "connection", "broken"):
            # The batch may exist without us knowing its id: creating it again could pay twice.
            raise CallFailed(failure.kind, f"{failure}; the batch may have been created anyway: check the "
                             "console's batch list before the next run", stops_run=True) from None
        raise


def _collect(teacher: ClaudeTeacher, pending: PendingBatches, batches: list[dict], notes: dict[str, str],
             reserved: bool) -> None:
    """Poll these batches until they end (or the wait runs out), then record their answers.

    `reserved`: this run reserved budget for them, to give back for requests that gave no answer."""
    config = teacher.config
    give_up = time.monotonic() + config.batch_max_wait_s
    waiting = list(batches)
    while waiting:
        still = []
        for entry in waiting:
            batch = with_retries(lambda e=entry: _retrieve(teacher, e["id"]), config)
            if batch.processing_status == "ended":
                unanswered = _record_results(teacher, entry, notes)
                if reserved:
                    teacher.budget.release(unanswered)
                pending.remove(entry["id"])
            else:
                still.append(entry)
        waiting = still
        if not waiting or time.monotonic() + config.batch_poll_s > give_up:
            break
        time.sleep(config.batch_poll_s)


def _retrieve(teacher: ClaudeTeacher, batch_id: str):
    with sdk_errors():
        return teacher.client.messages.batches.retrieve(batch_id)


def _record_results(teacher: ClaudeTeacher, entry: dict, notes: dict[str, str]) -> int:
    """Cache every answer of an ended batch; note why the others failed; return how many failed."""
    with sdk_errors():
        lines = list(teacher.client.messages.batches.results(entry["id"]))
    seen = set()
    for line in lines:
        key, outcome = line.custom_id, line.result
        seen.add(key)
        if outcome.type == "succeeded":
            # The text is not needed to cache an answer: the key already names it.
            teacher.record("", key, answer_from_message(outcome.message, None, batch=True))
        else:
            error = getattr(getattr(outcome, "error", None), "error", None)
            notes[key] = f"batch {entry['id']}: request {outcome.type}" + (f" ({error.message})" if error else "")
    missing = set(entry["keys"]) - seen
    for key in missing:
        notes[key] = f"batch {entry['id']}: no result for this request"
    return len(missing) + sum(line.result.type != "succeeded" for line in lines)


class PendingBatches:
    """The batches created but not yet collected: a small JSON file, replaced whole on each change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: list[dict] = []
        if path.is_file():
            try:
                self.entries = json.loads(path.read_text(encoding="utf-8"))["batches"]
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}: not a pending-batches file ({exc}); it lists Message Batch ids "
                                 "still to collect: fix it, or delete it to give those batches up") from None

    def mine(self, teacher: ClaudeTeacher) -> list[dict]:
        mine = (teacher.cache_model, teacher.prompt.hash)
        return [e for e in self.entries if (e["model"], e["prompt_hash"]) == mine]

    def keys(self) -> set[str]:
        return {key for entry in self.entries for key in entry["keys"]}

    def waiting_reason(self, key: str) -> str:
        ids = [entry["id"] for entry in self.entries if key in entry["keys"]]
        return f"in batch {ids[0]}, still processing: the next run collects it" if ids else "not answered"

    def add(self, entry: dict) -> None:
        self.entries.append(entry)
        self._save()

    def remove(self, batch_id: str) -> None:
        self.entries = [e for e in self.entries if e["id"] != batch_id]
        self._save()

    def _save(self) -> None:
        temp = self.path.with_name(self.path.name + ".tmp")
        temp.write_text(json.dumps({"batches": self.entries}, indent=1) + "\n", encoding="utf-8")
        os.replace(temp, self.path)
