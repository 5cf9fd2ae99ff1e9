"""How fast redaction is, on everyday requests and on hostile input, and what it leaks or changes.

    python -m scripts.redact_bench            # prints the dict below as JSON
    python -m scripts.redact_bench --size 200000 --requests 200

`measure()` returns (for `make bench` to record):
  typical_redact_us / typical_preprocess_us   median time per request over realistic requests (the
                                              bundled CLINC150 and BANKING77 test texts, seeded sample)
  typical_changed_share                       share of those requests that redaction changes at all
  adversarial_s / adversarial_cpu_s           wall / CPU seconds of `redact` on SIZE characters of
                                              each hostile shape in ADVERSARIAL (it must stay linear)
  corpus_survivors                            secrets of tests/secrets_corpus.py that survive preprocess
  load_average                                the host's 1-minute load average before and after
Timings depend on the host's load at the time: compare figures taken minutes apart, not across days.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path
from typing import Callable

from routelet.serving.preprocess import normalise, preprocess, redact

ROOT = Path(__file__).resolve().parent.parent
REQUEST_FILES = (ROOT / "data" / "clinc150" / "test.jsonl", ROOT / "data" / "banking77" / "test.jsonl")
MB = 1_000_000


def _repeat(unit: str) -> Callable[[int], str]:
    return lambda size: (unit * (size // len(unit) + 1))[:size]


def _random_base64(size: int) -> str:
    rng = random.Random(0)
    return "".join(rng.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", k=size))


# Hostile shapes: runs that make backtracking engines retry at every position, and dense runs of
# real matches that make the per-match work count.
ADVERSARIAL: dict[str, Callable[[int], str]] = {
    "dash_digits": _repeat("1-"),
    "dotted_letters": _repeat("a."),
    "spaced_digits": _repeat("1 "),
    "grouped_digits": _repeat("1234-"),
    "digit_run": _repeat("0123456789"),
    "base64_run": _random_base64,
    "at_signs": _repeat("@"),
    "a_at": _repeat("a@"),
    "email_dots": _repeat("a@b."),
    "plus_one": _repeat("+1 "),
    "parens": _repeat("(1) "),
    "keyword_repeat": _repeat("password "),
    "keyword_colon": _repeat("password: "),
    "keyword_assign": _repeat("password="),
    "keyword_quote": _repeat('password: "'),
    "auth_scheme": _repeat("authorization: basic "),
    "pem_begin": _repeat("-----BEGIN RSA PRIVATE KEY-----"),
    "jwt_parts": _repeat("eyJa."),
    "url_userinfo": _repeat("a://b:c"),
    "iban_shape": _repeat("de89 "),
    "dense_emails": _repeat("a@b.cc "),
    "dense_cards": _repeat("4111 1111 1111 1111 "),
    "dense_phones": _repeat("call 555-0132 "),
    "dense_pins": _repeat("my pin is 7731 "),
    "unicode": _repeat("é"),
    "fullwidth_digits": _repeat("１-"),
}


def realistic_requests(count: int, seed: int = 0) -> list[str]:
    """A seeded sample of real user requests from the bundled test sets."""
    texts = [json.loads(line)["text"] for path in REQUEST_FILES for line in path.read_text().splitlines() if line]
    return random.Random(seed).sample(texts, min(count, len(texts)))


def median_us(function: Callable[[str], str], texts: list[str], rounds: int = 5) -> float:
    """Median over texts of the best of `rounds` timings of one call, in microseconds."""
    times = []
    for text in texts:
        best = float("inf")
        for _ in range(rounds):
            start = time.perf_counter()
            function(text)
            best = min(best, time.perf_counter() - start)
        times.append(best)
    return round(statistics.median(times) * 1e6, 2)


def time_adversarial(size: int = MB, rounds: int = 2) -> tuple[dict[str, float], dict[str, float]]:
    """Wall and CPU seconds of one `redact` call (the best of `rounds`) on `size` characters of
    each shape. On a shared host the two differ by how many others want the cores."""
    wall, cpu = {}, {}
    for name, make in ADVERSARIAL.items():
        text = make(size)
        best_wall = best_cpu = float("inf")
        for _ in range(rounds):
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            redact(text)
            best_wall = min(best_wall, time.perf_counter() - start_wall)
            best_cpu = min(best_cpu, time.process_time() - start_cpu)
        wall[name], cpu[name] = round(best_wall, 3), round(best_cpu, 3)
    return wall, cpu


def corpus_survivors() -> int:
    from tests.secrets_corpus import leaks, make_corpus

    return sum(bool(leaks(s, preprocess(s.text))) for s in make_corpus())


def measure(size: int = MB, requests: int = 400) -> dict:
    load_before = os.getloadavg()[0]
    texts = realistic_requests(requests)
    normal = [normalise(t) for t in texts]
    adversarial, adversarial_cpu = time_adversarial(size)
    return {
        "requests": len(texts),
        "typical_redact_us": median_us(redact, normal),
        "typical_preprocess_us": median_us(preprocess, texts),
        "typical_changed_share": round(sum(redact(t) != t for t in normal) / len(normal), 4),
        "adversarial_chars": size,
        "adversarial_s": adversarial,
        "adversarial_max_s": max(adversarial.values()),
        "adversarial_cpu_s": adversarial_cpu,
        "adversarial_cpu_max_s": max(adversarial_cpu.values()),
        "corpus_survivors": corpus_survivors(),
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=MB, help="characters per adversarial input")
    parser.add_argument("--requests", type=int, default=400, help="realistic requests to time")
    args = parser.parse_args()
    result = measure(args.size, args.requests)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
