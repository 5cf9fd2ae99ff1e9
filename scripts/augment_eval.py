"""What augment buys: trained routers scored on the holdout and on a voice-like copy of it made by
other perturbations than augment trains on (routelet.data.voice.voice_copy: homophones, dropped
short words, run-together words, run-ons, recogniser number formats).

    python -m scripts.augment_eval --model with=data/models/tfidf --model without=runs/no-augment/tfidf
    python -m scripts.augment_eval --model tfidf=data/models/tfidf --prepared data/prepared --out out.json

Train the "without" models with `augment.enabled: false` (e.g. `dvc exp run -S augment.enabled=false`,
then copy data/models/<family> aside); the calibration split and the holdout are the same either way,
since variants only ever join the train split. Each model gets its temperature and abstain threshold
from the calibration split of --prepared, by the rule of params.yaml `calibrate.policy` (as the
calibrate stage does), so both are judged by the same policy. Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import yaml

from routelet.data.dataset import Prepared, load_prepared
from routelet.data.voice import voice_copy
from routelet.evaluation.calibration import choose_threshold, decisions, fit_temperature_routes
from routelet.families import load_trained
from routelet.paths import PARAMS, PREPARED, REPORT


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, metavar="NAME=FOLDER",
                        help="a trained model folder (data/models/<family>) and the name to show it by; repeat it")
    parser.add_argument("--prepared", default=str(PREPARED),
                        help="checked splits: calib and test (default: %(default)s)")
    parser.add_argument("--params", default=str(PARAMS), help="where calibrate.policy is read (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the voice copy (default: %(default)s)")
    parser.add_argument("--out", default=str(REPORT / "augment_eval.json"), help="JSON results (default: %(default)s)")
    return parser.parse_args(argv)


def read_policy(path: Path) -> dict:
    policy = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("calibrate", {}).get("policy")
    if not isinstance(policy, dict) or "target" not in policy:
        raise ValueError(f"{path}: no calibrate.policy with a target: give --params a params.yaml that has one")
    return {"target": policy["target"], "value": policy.get("value", 0.0), "margin": policy.get("margin", 0.0)}


def scores(probs: np.ndarray, y: np.ndarray, reject: int | None, gate) -> dict[str, float]:
    result = decisions(probs, y, reject, gate)
    accuracy = float((gate.decide(probs, reject) == y).mean())
    return {"accuracy": round(accuracy, 4), "in_scope_accuracy": round(result["in_scope_accuracy"], 4),
            "oos_recall": round(float(np.nan_to_num(result["oos_recall"])), 4)}


def evaluate(folder: Path, prepared: Prepared, policy: dict, voice: list[str]) -> dict:
    """Calibrate on the calibration split, then score the holdout and its voice copy."""
    trained = load_trained(folder.name, folder)
    taxonomy, reject = prepared.taxonomy, prepared.reject_id
    logits, y = trained.model.logits(prepared.texts("calib")), prepared.route_ids("calib")
    temperature = fit_temperature_routes(lambda t: trained.to_routes(logits, taxonomy, t), y)
    gate = choose_threshold(trained.to_routes(logits, taxonomy, temperature), y, reject, policy["target"],
                            policy["value"], policy["margin"])
    y_test = prepared.route_ids("test")
    result = {"folder": str(folder), "temperature": round(temperature, 4), "threshold": round(gate.threshold, 6)}
    for split, texts in (("holdout", prepared.texts("test")), ("voice", voice)):
        result[split] = scores(trained.route_probs(texts, taxonomy, temperature), y_test, reject, gate)
    return result


def table(results: dict[str, dict]) -> str:
    lines = ["| model | holdout in-scope acc | holdout OOS recall | voice in-scope acc | voice OOS recall |",
             "|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['holdout']['in_scope_accuracy']:.4f} | {r['holdout']['oos_recall']:.4f} | "
                     f"{r['voice']['in_scope_accuracy']:.4f} | {r['voice']['oos_recall']:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        models = dict(_named(spec) for spec in args.model)
        prepared = load_prepared(args.prepared)
        policy = read_policy(Path(args.params))
        voice = voice_copy(prepared.texts("test"), seed=args.seed)
        results = {name: evaluate(folder, prepared, policy, voice) for name, folder in models.items()}
    except (ValueError, FileNotFoundError) as error:
        print(f"augment_eval: error: {error}", file=sys.stderr)
        return 2
    changed = sum(a != b for a, b in zip(prepared.texts("test"), voice))
    out = {"prepared": args.prepared, "policy": policy, "voice_seed": args.seed,
           "voice_changed_rows": changed, "rows": len(voice), "models": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(table(results))
    print(f"\nvoice copy: {changed} of {len(voice)} holdout rows changed (seed {args.seed}); policy {policy}; "
          f"-> {args.out}")
    return 0


def _named(spec: str) -> tuple[str, Path]:
    name, sep, folder = spec.partition("=")
    if not sep or not name or not folder:
        raise ValueError(f"--model {spec!r}: write NAME=FOLDER, e.g. with=data/models/tfidf")
    if not (Path(folder) / "family.json").is_file():
        raise ValueError(f"--model {spec!r}: {folder} is not a trained model folder (no family.json)")
    return name, Path(folder)


if __name__ == "__main__":
    sys.exit(main())
