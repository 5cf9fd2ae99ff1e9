"""Build the bundled dataset folders from the public releases (run once; the output is committed).

    python -m scripts.bundled clinc150 --source path/to/clinc150 --out data/clinc150 --evals evals
    python -m scripts.bundled banking77 --source path/to/banking77 --out data/banking77

CLINC150 becomes a domain router: the 150 intents map to their 10 domains, `oos` is the reject
route. `taxonomy.yaml` routes by domain, `taxonomy_intents.yaml` by intent (the harder benchmark,
one params switch away). Rows the checks would reject (a pool text that repeats a test text, a
calibration text that repeats a training text, one text with two labels) are removed from the
pool here, listed in the folder's BUILD.md, and never from the test set.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import yaml

from routelet.data.rows import write_jsonl
from routelet.serving.preprocess import normalise

CLINC_DOMAINS = {
    "banking": "Bank accounts: balances, transfers, bills, PIN, fraud, routing numbers, checks.",
    "credit_cards": "Credit cards: limits, rewards, APR, lost or declined cards, applications.",
    "kitchen_and_dining": "Recipes, cooking, nutrition, restaurants and food.",
    "home": "The home: shopping and to-do lists, reminders, calendar, smart-home devices.",
    "auto_and_commute": "Cars and commuting: traffic, directions, gas, tyres, oil, car rental.",
    "travel": "Travel: flights, hotels, visas, luggage, exchange rates, travel alerts.",
    "utility": "Everyday utilities: time, date, weather, timers, alarms, calculator, spelling.",
    "work": "Work: PTO, payday, meetings, W-2, insurance, direct deposit.",
    "small_talk": "Chit-chat with the assistant: greetings, jokes, questions about itself.",
    "meta": "Controlling the assistant itself: volume, language, speech, repeat, cancel.",
}
OOS_DESCRIPTION = "Anything the assistant does not handle: defer to a general fallback."


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def clean_pool(train: list[dict], valid: list[dict], test: list[dict]) -> tuple[list[dict], list[dict], list[str]]:
    """Drop pool rows that would leak or conflict; return the kept rows and a line per drop."""
    dropped = []
    test_texts = {normalise(r["text"]): r for r in test}

    def keep(rows: list[dict], name: str, banned: dict[str, dict], why: str) -> list[dict]:
        kept = []
        for number, row in enumerate(rows, start=1):
            other = banned.get(normalise(row["text"]))
            if other is None:
                kept.append(row)
            else:
                dropped.append(f"{name} row {number} {row['text']!r} ({row['label']}): {why} ({other['label']})")
        return kept

    train = keep(train, "train", test_texts, "repeats a test text")
    by_text: dict[str, set[str]] = {}
    for row in train:
        by_text.setdefault(normalise(row["text"]), set()).add(row["label"])
    conflicted = {text: {"label": "/".join(sorted(ls))} for text, ls in by_text.items() if len(ls) > 1}
    train = keep(train, "train", conflicted, "carries two labels")
    valid = keep(valid, "valid", test_texts, "repeats a test text")
    valid = keep(valid, "valid", {normalise(r["text"]): r for r in train}, "repeats a train text")
    return train, valid, dropped


def build_clinc150(source: Path, out: Path, evals: Path) -> None:
    domains = json.loads((source / "domains.json").read_text())
    train = _read(source / "train.jsonl") + _read(source / "oos_train.jsonl")
    valid = _read(source / "valid.jsonl") + _read(source / "oos_valid.jsonl")
    test = _read(source / "test.jsonl") + _read(source / "oos_test.jsonl")
    train, valid, dropped = clean_pool(train, valid, test)

    out.mkdir(parents=True, exist_ok=True)
    evals.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "valid.jsonl", valid)
    write_jsonl(evals / "holdout.jsonl", test)
    # The dataset's test set is the frozen holdout in evals/: one copy, linked, never trained on.
    link = out / "test.jsonl"
    link.unlink(missing_ok=True)
    link.symlink_to(Path("..", "..", evals.name, "holdout.jsonl"))

    by_domain = {
        "reject": "oos",
        "routes": [
            {"name": d, "description": CLINC_DOMAINS[d], "target": f"assistant.{d}", "labels": sorted(domains[d])}
            for d in CLINC_DOMAINS
        ]
        + [{"name": "oos", "description": OOS_DESCRIPTION, "target": "assistant.fallback"}],
    }
    owner = {intent: d for d, intents in domains.items() for intent in intents}
    by_intent = {
        "reject": "oos",
        "routes": [
            {"name": i, "description": f"{i.replace('_', ' ')} ({owner[i]})", "target": f"assistant.{owner[i]}.{i}"}
            for i in sorted(owner)
        ]
        + [{"name": "oos", "description": OOS_DESCRIPTION, "target": "assistant.fallback"}],
    }
    header = "# Built by `python -m scripts.bundled clinc150`: CLINC150 (CC BY 3.0), see LICENSE.txt.\n"
    (out / "taxonomy.yaml").write_text(header + yaml.safe_dump(by_domain, sort_keys=False, width=100))
    (out / "taxonomy_intents.yaml").write_text(header + yaml.safe_dump(by_intent, sort_keys=False, width=100))
    _attribute(source, out, dropped, len(train), len(valid), len(test))


def build_banking77(source: Path, out: Path) -> None:
    train, test = _read(source / "train.jsonl"), _read(source / "test.jsonl")
    train, _, dropped = clean_pool(train, [], test)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "test.jsonl", test)
    _attribute(source, out, dropped, len(train), 0, len(test))


def _attribute(source: Path, out: Path, dropped: list[str], n_train: int, n_valid: int, n_test: int) -> None:
    shutil.copy(source / "LICENSE.txt", out / "LICENSE.txt")
    lines = [
        f"# {out.name}: how this folder was built",
        "",
        "Source (with licence and citation):",
        "",
        *[f"    {line}" for line in (source / "SOURCE.txt").read_text().splitlines()],
        "",
        f"Rows: train {n_train}, valid {n_valid or '(none: a seeded stratified split of train)'}, test {n_test}.",
        "",
        f"Removed from the pool so that no training or calibration text repeats a test text or carries "
        f"two labels ({len(dropped)} rows; the test set is untouched):",
        "",
        *[f"- {line}" for line in dropped],
    ]
    (out / "BUILD.md").write_text("\n".join(lines) + "\n")
    print(f"{out}: train {n_train}, valid {n_valid}, test {n_test}; removed {len(dropped)} pool rows:")
    for line in dropped:
        print(f"  {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=["clinc150", "banking77"], help="which public dataset to build")
    parser.add_argument("--source", type=Path, required=True, help="folder of the JSONL release")
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    parser.add_argument("--evals", type=Path, default=Path("evals"), help="where the frozen holdout goes (clinc150)")
    args = parser.parse_args()
    if args.name == "clinc150":
        build_clinc150(args.source, args.out, args.evals)
    else:
        build_banking77(args.source, args.out)


if __name__ == "__main__":
    main()
