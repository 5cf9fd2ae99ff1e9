"""In-process timing for the bench: one backend in a fresh interpreter, single queries and batches.

    python -m scripts.bench_measure JOB.json RESULT.json     # what measure_in_subprocess runs

A backend is a JSON-able spec, so a subprocess can build it after its thread settings are in place:
  {"kind": "router", "folder"}                       runtime.Router.route (what a caller of the folder gets);
                                                     with "inputs": "image files" the texts are image paths,
                                                     each read to bytes before timing (an image router)
  {"kind": "torch", "name", "folder", "temperature"} the trained family's own model: Family.reference
                                                     (uncached; for SetFit its fine-tuned body) + softmax
  {"kind": "semantic-router", "encoder", "routes"}   aurelio-labs semantic-router: HuggingFaceEncoder on
                                                     the encoder folder, an IndexedRouter over the routes'
                                                     utterances ({route: [texts]}), one query per call
Each job runs with OMP_WAIT_POLICY=PASSIVE and the thread counts in its environment, set before torch
or onnxruntime load, so one configuration's thread pools and spin-waits never leak into the next.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

BATCH = 64
MB = 1_000_000


def percentiles(samples_ms: list[float]) -> dict:
    """p50/p95/p99/mean/max (ms) and n of latency samples."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        return {"n": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "mean_ms": None, "max_ms": None}
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"n": int(a.size), "p50_ms": round(float(p50), 4), "p95_ms": round(float(p95), 4),
            "p99_ms": round(float(p99), 4), "mean_ms": round(float(a.mean()), 4), "max_ms": round(float(a.max()), 4)}


def time_single(predict: Callable[[list[str]], object], texts: list[str], queries: int,
                warmup: int) -> tuple[list[float], float]:
    """(milliseconds per call of predict([text]) over `queries` texts, process CPU ms per call), after
    `warmup` untimed calls. The CPU time counts every thread of this process."""
    for i in range(warmup):
        predict([texts[i % len(texts)]])
    out = []
    cpu = time.process_time()
    for i in range(queries):
        text = [texts[(warmup + i) % len(texts)]]
        start = time.perf_counter()
        predict(text)
        out.append((time.perf_counter() - start) * 1e3)
    return out, (time.process_time() - cpu) * 1e3 / max(queries, 1)


def time_batches(predict: Callable[[list[str]], object], texts: list[str], batches: int, size: int = BATCH) -> dict:
    """Texts per second over `batches` calls of `size` consecutive texts, after one untimed call."""
    def batch(i: int) -> list[str]:
        return [texts[(i * size + j) % len(texts)] for j in range(size)]

    predict(batch(batches))
    start = time.perf_counter()
    for i in range(batches):
        predict(batch(i))
    elapsed = time.perf_counter() - start
    return {"batch": size, "n_texts": batches * size, "seconds": round(elapsed, 4),
            "texts_per_s": round(batches * size / elapsed, 1)}


def proc_memory_mb(pid: int | str = "self") -> dict:
    """VmHWM (peak) and VmRSS of a process, in MB, from /proc (None where /proc is missing)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {"peak_rss_mb": None, "rss_mb": None}
    kib = {key: int(value) for key, value in re.findall(r"^(VmHWM|VmRSS):\s+(\d+) kB", status, re.MULTILINE)}
    return {"peak_rss_mb": round(kib.get("VmHWM", 0) * 1024 / MB, 1),
            "rss_mb": round(kib.get("VmRSS", 0) * 1024 / MB, 1)}


def proc_cpu_seconds(pid: int | str = "self") -> float | None:
    """User + system CPU seconds a process has used so far (None where /proc is missing)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def host_probe_ms(repeats: int = 200) -> float:
    """Median ms of one fixed float32 product (64 x 384 @ 384 x 1536, one BLAS thread): how fast this
    host is right now, so runs on different days (or minutes) can be compared beside their latencies."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((64, 384), np.float32), rng.standard_normal((384, 1536), np.float32)
    samples = []
    with threadpool_limits(1):
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            samples.append(time.perf_counter() - start)
    return round(float(np.median(samples)) * 1e3, 4)


# --------------------------------------------------------------------------------------------
# backends


def _router(spec: dict, threads: int):
    from routelet.serving.runtime import Router

    return Router.load(spec["folder"], threads=threads).route


def _torch(spec: dict, threads: int):
    import torch

    from routelet.families import load_trained
    from routelet.serving.router_format import softmax

    torch.set_num_threads(threads)
    model = load_trained(spec["name"], spec["folder"]).model
    return lambda texts: softmax(model.reference(texts), spec["temperature"])


def _semantic_router(spec: dict, threads: int):
    import torch
    from semantic_router import IndexedRouter, Route
    from semantic_router.encoders import HuggingFaceEncoder

    torch.set_num_threads(threads)
    encoder = HuggingFaceEncoder(name=str(spec["encoder"]), device="cpu")
    router = IndexedRouter(encoder=encoder, routes=[Route(name=name, utterances=utterances)
                                                    for name, utterances in spec["routes"].items()])
    return lambda texts: [router(text) for text in texts]


LOADERS = {"router": _router, "torch": _torch, "semantic-router": _semantic_router}


def load_backend(spec: dict, threads: int) -> Callable[[list[str]], object]:
    """predict(texts) for a spec (see the module docstring). Call only after the thread environment is set."""
    if spec["kind"] not in LOADERS:
        raise ValueError(f"backend spec kind {spec['kind']!r} is not one of {', '.join(LOADERS)}")
    return LOADERS[spec["kind"]](spec, threads)


def measure(spec: dict, threads: int, texts: list[str], queries: int, warmup: int, batches: int,
            batch: int = BATCH) -> dict:
    """Single-query latency and CPU, and batch throughput (`batch` inputs a call, when batches > 0), of one
    backend here."""
    start = time.perf_counter()
    predict = load_backend(spec, threads)
    loaded = time.perf_counter() - start
    if spec.get("inputs") == "image files":  # decode, preprocess and model are timed; the disk is not
        texts = [Path(path).read_bytes() for path in texts]
    samples, cpu_ms = time_single(predict, texts, queries, warmup)
    result = {"threads": threads, "load_s": round(loaded, 3), **percentiles(samples),
              "cpu_ms_per_query": round(cpu_ms, 4)}
    if result["mean_ms"]:
        result["routes_per_s"] = round(1e3 / result["mean_ms"], 1)  # one text per call, back to back
    if batches > 0:
        result[f"batch{batch}"] = time_batches(predict, texts, batches, batch)
    return {**result, **proc_memory_mb()}


def measure_in_subprocess(spec: dict, threads: int, texts: list[str], queries: int, warmup: int, batches: int,
                          scratch: Path, batch: int = BATCH) -> dict:
    """measure() in a fresh interpreter with OMP_WAIT_POLICY=PASSIVE and thread counts in the env."""
    job = scratch / f"job-{os.getpid()}-{time.monotonic_ns()}.json"
    needed = warmup + queries + (batches + 1) * batch
    job.write_text(json.dumps({"spec": spec, "threads": threads, "texts": texts[:needed], "queries": queries,
                               "warmup": warmup, "batches": batches, "batch": batch}))
    result_path = job.with_suffix(".out.json")
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "scripts.bench_measure", str(job), str(result_path)], env=env, check=False)
    if done.returncode != 0 or not result_path.is_file():
        raise RuntimeError(f"bench worker for {spec['kind']} at {threads} thread(s) failed (exit {done.returncode}); "
                           "its error is printed above")
    return json.loads(result_path.read_text())


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m scripts.bench_measure JOB.json RESULT.json (written by scripts.bench)", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[0]).read_text())
    result = measure(job["spec"], job["threads"], job["texts"], job["queries"], job["warmup"], job["batches"],
                     job["batch"])
    Path(argv[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
