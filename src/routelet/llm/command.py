"""`routelet llm-baseline`: score an LLM on the prepared holdout into report/baselines.json.

    routelet llm-baseline                                   # Claude; settings from params.yaml ingest.teacher
    routelet llm-baseline --limit 500 --max-usd 1           # a seeded sample, a hard spending cap
    routelet llm-baseline --provider openai --base-url http://127.0.0.1:8000/v1 --model arch-router
    routelet llm-baseline --holdout data/screens/test.jsonl --taxonomy data/screens/taxonomy.yaml  # screenshots

This module imports only argparse at the top, so building the CLI parser stays cheap; `run`
imports the teacher. Exit status: 0 when rows were scored (some may still be pending: run again),
2 when nothing could be scored (no API key, API down, bad input) with the reason on stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from routelet.paths import BASELINES, PARAMS, PREPARED

DEFAULT_CACHE = Path("data/llm_baseline_cache.jsonl")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--holdout", default=str(PREPARED / "test.jsonl"),
        help="JSONL rows {text, label}, or {image, label} with image paths relative to the file's folder "
             "(default: %(default)s)")
    add("--taxonomy", default=str(PREPARED / "taxonomy.json"), help="taxonomy file (default: %(default)s)")
    add("--out", default=str(BASELINES), help="baselines file to merge the scores into (default: %(default)s)")
    add("--cache", default=str(DEFAULT_CACHE),
        help="answer cache: a re-run pays only for new rows (default: %(default)s)")
    add("--provider", choices=["anthropic", "openai"], default="anthropic",
        help="anthropic (Claude, $ANTHROPIC_API_KEY) or openai (any OpenAI-compatible chat-completions endpoint)")
    add("--base-url", help="API base URL; required for --provider openai (e.g. http://127.0.0.1:8000/v1)")
    add("--model", help="model name (default: params.yaml ingest.teacher.model for anthropic)")
    add("--name", help="column name in the report, as llm:<name> (default: the model name)")
    add("--limit", type=int, help="score a seeded sample of this many rows instead of all")
    add("--seed", type=int, default=0, help="seed of the --limit sample (default: %(default)s)")
    add("--max-usd", type=float, help="stop asking once this much is spent (default: params, else 5)")
    add("--max-calls", type=int, help="stop asking after this many requests (default: no cap; --max-usd still holds)")
    add("--max-tokens", type=int, help="answer length cap (default: params, else 256)")
    add("--timeout", type=float, help="seconds per request (default: params, else 30)")
    add("--price-input", type=float, help="USD per million input tokens (openai default: 0, a local model)")
    add("--price-output", type=float, help="USD per million output tokens (openai default: 0)")
    add("--params", default=str(PARAMS), help="params file holding ingest.teacher (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    from routelet.data.dataset import detect_modality
    from routelet.data.taxonomy import Taxonomy
    from routelet.llm.baseline import run_baseline
    from routelet.llm.teacher import make_teacher

    try:
        config = _config(args)
        taxonomy = Taxonomy.load(args.taxonomy)
        modality = detect_modality(Path(args.holdout))  # the first row names an image: an image holdout
        teacher = make_teacher(taxonomy, config, args.cache, provider=args.provider, base_url=args.base_url,
                               modality=modality)
        name = args.name or config.model
        outcome = run_baseline(teacher, args.holdout, args.out, name, limit=args.limit, seed=args.seed)
    except (ValueError, OSError) as exc:
        print(f"routelet llm-baseline: error: {exc}", file=sys.stderr)
        return 2
    metrics, rejected = outcome["metrics"], outcome["details"].get("rejected_rows", [])
    for row in rejected:
        print(f"{args.holdout}:{row['line']}: not sent: {row['reason']}", file=sys.stderr)
    if rejected:
        print(f"routelet llm-baseline: {outcome['details']['rejected']} image rows rejected (listed above; "
              "fix or remove them): not scored", file=sys.stderr)
    print(f"llm:{name}: {metrics}")
    print(f"teacher: {teacher.summary()}")
    if not metrics["n"]:
        print(f"routelet llm-baseline: error: no row was answered ({outcome['details']['pending_reason']}); "
              f"{args.out} is unchanged", file=sys.stderr)
        return 2
    if metrics["pending"]:
        print(f"routelet llm-baseline: {metrics['pending']} rows still pending "
              f"({outcome['details']['pending_reason']}); run again to finish: answered rows are cached",
              file=sys.stderr)
    return 0


def _config(args: argparse.Namespace):
    """params.yaml ingest.teacher (when present), then the flags; the answer is a route.

    Another provider keeps the retry, timeout and budget settings but not Claude's model or prices."""
    from routelet.llm.config import TeacherConfig

    values = _params_block(Path(args.params))
    if args.provider == "openai":
        if not args.model:
            raise ValueError("--provider openai needs --model (the name the endpoint serves)")
        values["prices"] = {"input": 0.0, "output": 0.0, "cache_write": 0.0, "cache_read": 0.0}
    values["max_calls"] = args.max_calls  # ingest's per-run call cap is not meant for a whole holdout
    flags = {"model": args.model, "max_usd": args.max_usd, "max_tokens": args.max_tokens, "timeout_s": args.timeout}
    values |= {key: value for key, value in flags.items() if value is not None}
    prices = dict(values.get("prices") or {})
    prices |= {key: value for key, value in (("input", args.price_input), ("output", args.price_output))
               if value is not None}
    values |= {"prices": prices, "granularity": "routes", "batch": False}  # latency needs one-by-one calls
    return TeacherConfig.from_params(values, where=f"{args.params}: ingest.teacher (or its flag)")


def _params_block(path: Path) -> dict:
    """Only the ingest.teacher block: the rest of params.yaml is the pipeline's business."""
    import yaml

    if not path.is_file():
        return {}
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {error}") from None
    ingest = params.get("ingest") if isinstance(params, dict) else None
    block = ingest.get("teacher") if isinstance(ingest, dict) else None
    if block is not None and not isinstance(block, dict):
        raise ValueError(f"{path}: ingest.teacher must be a mapping of teacher settings")
    return dict(block or {})
