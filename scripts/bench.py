"""Speed and memory of the shipped router against its parts, its training-side model and a peer, in one
run: writes report/bench.json (raw figures and a `ratios` block, each target met or missed) and
report/figures/bench.png.

    make bench                                   # = python -m scripts.bench
    python -m scripts.bench --quick             # smoke run: small counts, same code paths

Backends (scripts/bench_routers.py says how each is built), all on real holdout texts: tiered,
onnx-int8 (the encoder family alone), onnx-fp32, onnx-int8-blockwise, tfidf, torch-fp32 and
semantic-router (skipped, with the reason, when the `bench` extra is not installed). Single queries
time one text per call (Router.route for the router backends: what a caller gets), with the process
CPU per call; batch throughput times calls of 64 texts. Each (backend, threads) runs in a fresh
subprocess (scripts/bench_measure.py). HTTP serves the tiered router with `routelet serve --threads
1` and loads it at each concurrency (scripts/loadgen.py). Speed targets are ratios inside this run
(scripts/bench_ratios.py); the load average and a fixed-work host probe are recorded at the start
and end beside them. Optional measurements by other modules join when they exist (HOOKS). The image
routers (pixels, EfficientNet-Lite0 fp32 and int8) trained on data/screens are timed in the same run
(scripts/bench_images.py, under `images`; skipped, saying why, without the dataset or the encoder).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import inspect
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from routelet.params import load_params
from scripts import bench_images
from scripts.bench_measure import host_probe_ms, measure_in_subprocess
from scripts.bench_plot import plot
from scripts.bench_ratios import ratios
from scripts.bench_routers import BACKENDS, Backends, semantic_router_missing
from scripts.loadgen import http_bench

FULL = {"queries": 500, "warmup": 50, "batches": 16, "requests": 10_000}
QUICK = {"queries": 40, "warmup": 5, "batches": 2, "requests": 300}
# Measurements other modules provide: key -> (module, keyword arguments for a full run, for --quick).
# Each module's measure() is called with the keywords its signature takes, among these and
# router (the served folder), texts (holdout texts) and quick; a missing module is noted, not an error.
HOOKS = {
    "redaction": ("scripts.redact_bench", {}, {"size": 20_000, "requests": 50}),
    "serve_stress": ("scripts.serve_stress", {}, {}),
}


def holdout_texts(path: str | Path, seed: int = 0) -> list[str]:
    """Every holdout text, in a seeded shuffled order (the file is grouped by label)."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"{path}: no holdout; run `dvc repro` first or pass --prepared")
    texts = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise SystemExit(f"{path}: no texts; run `dvc repro` (checkdata stage) first")
    random.Random(seed).shuffle(texts)
    return texts


def folder_size_mb(folder: str | Path) -> float:
    return round(sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 1e6, 3)


def run_hooks(router: Path, texts: list[str], quick: bool) -> dict:
    """Each HOOKS module's measure(), or why it did not run."""
    out = {}
    for key, (module_name, full, small) in HOOKS.items():
        if importlib.util.find_spec(module_name) is None:
            out[key] = {"skipped": f"{module_name} is not in this checkout"}
            continue
        measure = importlib.import_module(module_name).measure
        offered = {"router": router, "texts": texts, "quick": quick, **(small if quick else full)}
        accepted = inspect.signature(measure).parameters
        print(f"bench: {key} ({module_name}.measure)", flush=True)
        try:
            out[key] = measure(**{k: v for k, v in offered.items() if k in accepted})
        except Exception as error:  # one optional figure must not cost the whole run
            out[key] = {"error": f"{type(error).__name__}: {error}"}
            print(f"bench: {key} failed: {out[key]['error']}", file=sys.stderr, flush=True)
    return out


def image_rows(screens: Path, scratch: Path, quick: bool) -> dict:
    """scripts.bench_images.measure, or the error that stopped it (the text figures still count)."""
    print(f"bench: image routers on {screens}", flush=True)
    try:
        return bench_images.measure(screens, scratch, quick)
    except Exception as error:
        print(f"bench: image routers failed: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        return {"error": f"{type(error).__name__}: {error}"}


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in ("onnxruntime", "torch", "sentence-transformers", "semantic-router", "uvicorn", "fastapi"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def _commit() -> str | None:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or None


def _host(moment: str) -> dict:
    return {f"loadavg_{moment}": [round(x, 2) for x in os.getloadavg()], f"host_probe_ms_{moment}": host_probe_ms()}


def single_queries(specs: dict, threads: list[int], texts: list[str], counts: dict, scratch: Path) -> tuple[list, list]:
    """Every (threads, backend) measured in its own subprocess; batch throughput at 1 thread."""
    single, batched = [], []
    for n in threads:
        for backend, spec in specs.items():
            batches = counts["batches"] if n == 1 else 0
            r = measure_in_subprocess(spec, n, texts, counts["queries"], counts["warmup"], batches, scratch)
            batch = r.pop("batch64", None)
            single.append({"backend": backend, **r, "loadavg_1m": round(os.getloadavg()[0], 2)})
            if batch:
                batched.append({"backend": backend, "threads": n, **batch})
            print(f"  {backend:<19} {n} thread(s): p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  CPU "
                  f"{r['cpu_ms_per_query']:.3f} ms/route" + (f"  batch-64 {batch['texts_per_s']:,.0f} texts/s" if batch
                                                              else ""), flush=True)
    return single, batched


def print_table(results: dict) -> None:
    print("\nsingle query (ms)          threads   p50     p95     p99    batch-64 texts/s")
    for r in results["single_query"]:
        tput = next((b["texts_per_s"] for b in results["batch64"]
                     if b["backend"] == r["backend"] and b["threads"] == r["threads"]), None)
        print(f"  {r['backend']:<24} {r['threads']:>3} {r['p50_ms']:>8.3f} {r['p95_ms']:>7.3f} {r['p99_ms']:>7.3f}"
              f"   {'' if tput is None else f'{tput:,.0f}'}")
    for backend, why in results["skipped"].items():
        print(f"  {backend:<24} skipped: {why}")
    print("sizes (MB):", ", ".join(f"{k} {v}" for k, v in results["size_mb"].items()))
    images = results.get("images", {})
    for name, r in images.get("routers", {}).items():
        print(f"  image {name:<18} p50 {r['p50_ms_batch1']:.2f} ms at batch 1, {r['images_per_s_batch16']:,.1f} "
              f"images/s at batch 16 (1 thread)")
    for name, why in images.get("skipped", {}).items():
        print(f"  image {name:<18} skipped: {why}")
    if "error" in images:
        print(f"  image routers failed: {images['error']}")
    print("ratios:")
    for t in results["ratios"].values():
        verdict = {True: "met   ", False: "MISSED", None: "n/a   "}[t["met"]]
        print(f"  {verdict} {t['what']}: {t['value']} (target {t['target']})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--router", default="data/router", help="shipped router folder (default: %(default)s)")
    add("--models", default="data/models", help="trained families (default: %(default)s)")
    add("--prepared", default="data/prepared", help="train/calib/test.jsonl and taxonomy.json (default: %(default)s)")
    add("--calibration", default="report/calibration.json", help="temperatures per family (default: %(default)s)")
    add("--family", help="the encoder family compared (default: the shipped router's last tier)")
    add("--fast", default="tfidf", help="the fast family of the tiered backend when the shipped router has one "
                                        "tier (default: %(default)s)")
    add("--tier-oos-tolerance", type=float, default=None, metavar="R",
        help="out-of-scope recall the tiered backend's fast tier may cost on the calibration split "
        "(default: params export_onnx.tier_oos_tolerance)")
    add("--out", default="report/bench.json", help="results JSON (default: %(default)s)")
    add("--figure", default="report/figures/bench.png", help="figure (default: %(default)s)")
    add("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS), help="in-process backends (default: all)")
    add("--threads", nargs="+", type=int, default=[1, 2], help="thread counts for single queries (default: 1 2)")
    for name, what in (("queries", "timed single queries per configuration"), ("warmup", "untimed queries first"),
                       ("batches", "timed batches of 64, at 1 thread"),
                       ("requests", "HTTP requests per concurrency level")):
        add(f"--{name}", type=int, help=f"{what} (default: {FULL[name]}, with --quick {QUICK[name]})")
    add("--utterances", type=int, default=200, help="semantic-router utterances per route (default: %(default)s)")
    add("--concurrency", nargs="+", type=int, default=[1, 8, 32], help="HTTP concurrency levels (default: 1 8 32)")
    add("--loadgen", choices=("auto", "wrk", "asyncio"), default="auto",
        help="HTTP load generator: wrk if on PATH, else a raw-asyncio one (default: %(default)s)")
    add("--no-http", action="store_true", help="skip the HTTP part")
    add("--no-hooks", action="store_true", help="skip the optional measurements of other modules (HOOKS)")
    add("--screens", default="data/screens", help="image dataset the image routers are trained on and timed with "
                                                   "(default: %(default)s)")
    add("--no-images", action="store_true", help="skip the image routers")
    add("--quick", action="store_true", help="smoke run: small counts, same code paths; not for the report")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    counts = {k: getattr(args, k) if getattr(args, k) is not None else v
              for k, v in (QUICK if args.quick else FULL).items()}
    router = Path(args.router)
    if not (router / "router.json").is_file():
        raise SystemExit(f"{router}/router.json: no shipped router; run `dvc repro` first or pass --router")
    if not Path(args.calibration).is_file():
        raise SystemExit(f"{args.calibration}: no calibration; run `dvc repro` first or pass --calibration")
    texts = holdout_texts(Path(args.prepared) / "test.jsonl")
    results: dict = {"meta": {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": _commit(),
                              "cpu_count": os.cpu_count(), **_host("start"), "quick": args.quick, **counts,
                              "router": str(router), "holdout_texts": len(texts),
                              "env": {"OMP_WAIT_POLICY": "PASSIVE (set in every worker and the server)"},
                              "versions": _versions()}, "skipped": {}}
    print(f"bench: {os.cpu_count()} vCPUs, load average {results['meta']['loadavg_start']}, host probe "
          f"{results['meta']['host_probe_ms_start']} ms", flush=True)
    with tempfile.TemporaryDirectory(prefix="routelet-bench-") as tmp:
        scratch = Path(tmp)
        backends = Backends(router, Path(args.models), Path(args.prepared), json.loads(Path(args.calibration).read_text()),
                            scratch, family=args.family, fast=args.fast, utterances_per_route=args.utterances,
                            oos_tolerance=args.tier_oos_tolerance if args.tier_oos_tolerance is not None
                            else load_params()["export_onnx"].get("tier_oos_tolerance", 0.0))
        results["meta"] |= {"family": backends.family, "fast": backends.fast, "model_version": backends.info.model_version,
                            "tier_oos_tolerance": backends.oos_tolerance}
        specs = {}
        for backend in args.backends:
            if backend == "semantic-router" and (why := semantic_router_missing()):
                results["skipped"][backend] = why
                continue
            print(f"bench: preparing {backend}", flush=True)
            specs[backend] = backends.spec(backend)
        results["size_mb"] = {b: folder_size_mb(s["folder"]) for b, s in specs.items() if s["kind"] == "router"}
        results["single_query"], results["batch64"] = single_queries(specs, args.threads, texts, counts, scratch)
        served = "tiered" if "tiered" in specs else next(iter(specs), None)
        if not args.no_http and served and specs[served]["kind"] == "router":
            print(f"bench: HTTP ({served}), {counts['requests']:,} requests per level", flush=True)
            # The texts the in-process figures timed: a tiered router's CPU per text depends on which tier
            # answers it, so server / in-process must compare the same mix.
            timed = texts[counts["warmup"]:counts["warmup"] + counts["queries"]] or texts
            results["http"] = {"backend": served, **http_bench(specs[served]["folder"], timed, args.concurrency,
                                                               counts["requests"], args.loadgen, scratch,
                                                               warmup=min(200, counts["requests"]))}
        if not args.no_hooks:
            results["extra"] = run_hooks(Path(specs.get(served, {}).get("folder", router)), texts, args.quick)
        if not args.no_images:
            results["images"] = image_rows(Path(args.screens), scratch, args.quick)
    results["meta"] |= _host("end")
    results["ratios"] = ratios(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.figure, BACKENDS)
    print_table(results)
    print(f"bench: load average at end {results['meta']['loadavg_end']}, host probe "
          f"{results['meta']['host_probe_ms_end']} ms; wrote {out} and {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
