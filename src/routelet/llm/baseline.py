"""The LLM baseline: ask an LLM to route every holdout row, score it like the trained routers.

    routelet llm-baseline                                    # Claude, params.yaml ingest.teacher
    routelet llm-baseline --provider openai --base-url http://127.0.0.1:8000/v1 --model arch-router
    routelet llm-baseline --limit 500                        # a seeded sample of the holdout
    routelet llm-baseline --holdout data/screens/test.jsonl --taxonomy data/screens/taxonomy.yaml

Writes report/baselines.json, which the report reads (`llm_baselines`) for its `llm:<name>`
column when the holdout hash matches:

    {"holdout": {"sha256": ..., "models": {name: {accuracy, in_scope_accuracy, oos_recall, p50_ms,
     p95_ms, input_tokens_per_request, output_tokens_per_request, cost_per_1k_usd, malformed, n,
     pending}}, "details": {name: {per_class_recall, review, ...}}, "answers": {name: {row: route}}}}

`models` stays small and numeric (dvc exp show); per-class recall sits in `details` and the
per-row answers (0-based row index of the holdout file -> the route answered, null when the
answer was not a route) in `answers`. Answers come through the teacher's cache, so a re-run pays
only for rows not answered before; rows the budget or the API left unanswered are `pending`.

An image holdout ({"image": "relative/path.png", "label"} rows, paths relative to its folder)
asks the model to route each screenshot (routelet.llm.image). Its rows are checked as the
pipeline checks images (routelet.data.images): a missing, corrupt or unsafe image is never sent;
it is counted in `details` (`rejected`, and `rejected_rows`: row, line, reason) and left out of
every figure, as prepare leaves it out of the trained routers' holdout. `details` also maps each
row to its image's sha-256 (`image_sha256`), which joins the answers to the prepared copy
(images/<sha-256>.<ext>).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from routelet.data.rows import shown
from routelet.data.taxonomy import Taxonomy
from routelet.evaluation.scores import route_scores
from routelet.llm.image import ImageRequest
from routelet.llm.result import Result
from routelet.llm.teacher import Teacher

LISTED = 100  # rejected image rows listed by line (the count covers them all)


def read_holdout(path: str | Path, taxonomy: Taxonomy) -> tuple[list[str], list[str]]:
    """Texts and true routes of a {"text", "label"} JSONL file; errors name file and line."""
    texts, routes = [], []
    owner = _owners(taxonomy)
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                text, label = row["text"], row["label"]
            except (ValueError, KeyError, TypeError):
                raise ValueError(f'{path}:{number}: expected a JSON object with "text" and "label"') from None
            if not isinstance(text, str) or label not in owner:
                raise ValueError(f"{path}:{number}: label {label!r} is neither a label nor a route of the taxonomy "
                                 "(is the taxonomy the one this holdout was prepared with?)")
            texts.append(text)
            routes.append(owner[label])
    if not texts:
        raise ValueError(f"{path}: no rows")
    return texts, routes


@dataclass
class ImageHoldout:
    rows: list[int]  # the 0-based row index in the file (blank lines skipped, as read_holdout)
    requests: list[ImageRequest]
    routes: list[str]
    rejected: list[dict]  # {"row", "line", "reason"} of each row whose image cannot be sent


def read_image_holdout(path: str | Path, taxonomy: Taxonomy) -> ImageHoldout:
    """The sendable screenshots of an image JSONL file and their true routes. A line that is not a
    row, or a label outside the taxonomy, stops the run as for texts; an image that cannot be sent
    (unsafe path, missing, corrupt, over the guards) is rejected with its reason."""
    from routelet.llm.image import image_request

    owner, root = _owners(taxonomy), Path(path).parent.resolve()
    holdout = ImageHoldout([], [], [], [])
    with Path(path).open("rb") as handle:
        for row, (number, raw) in enumerate((n, raw) for n, raw in enumerate(handle, start=1) if raw.strip()):
            try:
                value = json.loads(raw.removeprefix(b"\xef\xbb\xbf"))
                image, label = value["image"], value["label"]
            except (ValueError, KeyError, TypeError):
                raise ValueError(f'{path}:{number}: expected a JSON object with "image" and "label"') from None
            if not isinstance(image, str):
                raise ValueError(f'{path}:{number}: "image" must be a path relative to the file\'s folder')
            if label not in owner:
                raise ValueError(f"{path}:{number}: label {label!r} is neither a label nor a route of the taxonomy "
                                 "(is the taxonomy the one this holdout was prepared with?)")
            try:
                request = image_request(_image_path(root, image))
            except ValueError as error:  # ImageRejected, or an unsafe path
                holdout.rejected.append({"row": row, "line": number, "reason": f"image {shown(image)}: {error}"})
                continue
            holdout.rows.append(row)
            holdout.requests.append(request)
            holdout.routes.append(owner[label])
    if not holdout.rows:
        first = f" (line {holdout.rejected[0]['line']}: {holdout.rejected[0]['reason']})" if holdout.rejected else ""
        raise ValueError(f"{path}: no image row can be sent{first}")
    return holdout


def _image_path(root: Path, image: str) -> Path:
    """The file an image row names, with the dataset's own path rules (routelet.data.images)."""
    from pydantic import ValidationError

    from routelet.data.images import ImageRow

    try:
        ImageRow(image=image)
    except ValidationError as error:
        raise ValueError(error.errors()[0]["msg"].removeprefix("Value error, ")) from None
    path = (root / image).resolve()
    if not path.is_relative_to(root):  # a symlink out of the folder
        raise ValueError("resolves outside the dataset folder: copy it in")
    if not path.is_file():
        raise ValueError(f"no such file in {root}")
    return path


def _owners(taxonomy: Taxonomy) -> dict[str, str]:
    return {label: taxonomy.route_of(label) for label in taxonomy.labels} | {r: r for r in taxonomy.route_names}


def sample_rows(n: int, limit: int | None, seed: int) -> list[int]:
    """All row indices, or a seeded sample of `limit` of them in file order."""
    if limit is None or limit >= n:
        return list(range(n))
    if limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    return sorted(random.Random(seed).sample(range(n), limit))


def run_baseline(teacher: Teacher, holdout: str | Path, out: str | Path, name: str,
                 limit: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Score `teacher` on the holdout and merge its entry into `out`; return its metrics.
    An image teacher (modality "image") takes an image holdout."""
    extra: dict[str, Any] = {}
    if teacher.prompt.modality == "image":
        images = read_image_holdout(holdout, teacher.taxonomy)
        requests, truth, ids = images.requests, images.routes, images.rows
        extra = {"rejected": len(images.rejected), "rejected_rows": images.rejected[:LISTED]}
    else:
        requests, truth = read_holdout(holdout, teacher.taxonomy)
        ids = list(range(len(requests)))
    rows = sample_rows(len(requests), limit, seed)
    if teacher.prompt.modality == "image":
        extra["image_sha256"] = {str(ids[i]): requests[i].sha256 for i in rows}
    results = teacher.label([requests[i] for i in rows])
    answers = [_route(teacher, result) for result in results]
    metrics, details = score(teacher, [truth[i] for i in rows], results, answers)
    details |= {"model": teacher.config.model, "labeler": teacher.labeler, "prompt_hash": teacher.prompt.hash,
                "rows": len(rows), "limit": limit, "seed": seed,
                "pending_reason": next((r.reason for r in results if r.status == "queued"), "")} | extra
    if metrics["n"]:
        by_row = {str(ids[i]): answer for i, answer, result in zip(rows, answers, results)
                  if result.status != "queued"}
        write_entry(out, _sha256(holdout), name, metrics, details, by_row)
    return {"metrics": metrics, "details": details}


def _route(teacher: Teacher, result: Result) -> str | None:
    if result.status != "labeled":
        return None
    return result.label if teacher.config.granularity == "routes" else teacher.taxonomy.route_of(result.label)


def score(teacher: Teacher, truth: list[str], results: list[Result], answers: list[str | None]) -> tuple[dict, dict]:
    """Headline metrics over the answered rows; pending rows are counted, not scored."""
    done = [i for i, result in enumerate(results) if result.status != "queued"]
    y = np.array([truth[i] for i in done], dtype=object)
    predicted = np.array([answers[i] for i in done], dtype=object)
    correct = predicted == y
    reject = teacher.taxonomy.reject
    metrics: dict[str, Any] = {"n": len(done), "pending": len(results) - len(done)}
    if done:  # abstaining = answering the reject route
        metrics |= route_scores(list(predicted), list(y), reject) | _costs(teacher, [results[i] for i in done])
    reviews = Counter(results[i].reason.split(":")[0] for i in done if results[i].status == "review")
    metrics["malformed"] = sum(reviews.values())
    recall = {route: round(float(correct[y == route].mean()), 4) for route in teacher.taxonomy.route_names
              if (y == route).any()}
    details = {"per_class_recall": recall, "review": dict(reviews),
               "per_class_n": {route: int((y == route).sum()) for route in recall}}
    return metrics, details


def _costs(teacher: Teacher, results: list[Result]) -> dict[str, float]:
    """Latency percentiles, tokens and cost per request, from the answers' provenance.

    Cost is recomputed from the recorded usage with today's price table, so a price change in
    params shows up without asking again."""
    provenance = [result.provenance or {} for result in results]
    latency = [p["latency_ms"] for p in provenance if p.get("latency_ms") is not None]
    usage = [p.get("usage") or {} for p in provenance]
    prices = teacher.config.prices
    cost = [prices.cost(u, batch=bool(p.get("batch"))) for u, p in zip(usage, provenance)]
    inputs = [u.get("input_tokens", 0) + u.get("cache_creation_input_tokens", 0) + u.get("cache_read_input_tokens", 0)
              for u in usage]
    out = {
        "input_tokens_per_request": round(float(np.mean(inputs)), 1),
        "output_tokens_per_request": round(float(np.mean([u.get("output_tokens", 0) for u in usage])), 1),
        "cost_per_1k_usd": round(1000 * float(np.mean(cost)), 4),
    }
    if latency:
        out["p50_ms"] = round(float(np.percentile(latency, 50)), 1)
        out["p95_ms"] = round(float(np.percentile(latency, 95)), 1)
    return out


def write_entry(out: str | Path, holdout_sha256: str, name: str, metrics: dict, details: dict,
                answers: dict[str, str | None]) -> None:
    """Merge one model's entry into the baselines file (replaced whole, never half-written)."""
    out = Path(out)
    entry = {"sha256": holdout_sha256, "models": {}, "details": {}, "answers": {}}
    if out.is_file():
        try:
            existing = json.loads(out.read_text(encoding="utf-8"))["holdout"]
            same = existing["sha256"] == holdout_sha256
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{out}: not a baselines file ({type(exc).__name__}: {exc}); move it away "
                             "and run again") from None
        if same:
            entry |= {key: dict(existing.get(key) or {}) for key in ("models", "details", "answers")}
        else:
            print(f"{out}: measured on another holdout; its models ({', '.join(existing.get('models', {}))}) "
                  "are replaced", file=sys.stderr)
    entry["models"][name], entry["details"][name], entry["answers"][name] = metrics, details, answers
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = out.with_name(out.name + ".tmp")
    temp.write_text(json.dumps({"holdout": entry}, indent=2) + "\n", encoding="utf-8")
    os.replace(temp, out)


def _sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
