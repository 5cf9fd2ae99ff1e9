"""Speed and memory of the shipped router: in-process latency and throughput per backend, HTTP end
to end through the real server, folder sizes; writes report/bench.json and report/figures/bench.png.

    make bench                                   # = python -m scripts.bench
    python -m scripts.bench --quick             # smoke run: small counts, same code paths

Backends, all on real holdout texts (data/prepared/test.jsonl):
  torch-fp32  SentenceTransformer.encode + the logistic head (the training-side model)
  onnx-fp32   the same model exported with build_onnx_router(quantize=False), through runtime.Router
  onnx-int8   the shipped data/router through runtime.Router (preprocess + tokenizer + graph)
  onnx-int8-blockwise  the same model exported with export_onnx.int8=blockwise (MatMulNBits)
  tfidf       the trained TF-IDF family exported with ship.export_model, through runtime.Router
Single queries time one text per call (Router.route for the runtime backends: what a caller gets);
batch throughput times calls of 64 texts. Each (backend, threads) runs in a fresh subprocess with
OMP_WAIT_POLICY=PASSIVE set before torch / onnxruntime load, so thread pools and spin-waits from
one configuration never leak into the next (2 threads with OpenMP's active spin-wait ran far slower
than 1 on this 2-vCPU machine).

HTTP: `routelet serve --threads 1` as a subprocess, then a closed-loop load generator on loopback
(`wrk` with a Lua script when it is on PATH, else the asyncio one below: raw streams, keep-alive),
one POST /v1/route per request with a single holdout text, cycling. Errors are non-200 responses
plus socket errors and timeouts. Peak server RSS is /proc/<pid>/status VmHWM after all runs.
`server_cpu_ms_per_request` is the server's CPU time per request: with one free core, a closed loop
of c connections waits about c times that (Little's law), whatever the server's code does.
Timings depend on the machine's load and on the host's speed at the time, which varied by a third
within minutes on the shared 2-vCPU machine this was built on: the load average and a fixed-work
probe (`host_probe_ms`, one float32 product) are recorded at the start and end beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

BACKENDS = ("torch-fp32", "onnx-fp32", "onnx-int8", "onnx-int8-blockwise", "tfidf")
BATCH = 64
MB = 1_000_000
# Targets from the issue: (key, what, limit, comparison).
TARGETS = {
    "int8_p50_1thread_ms": ("onnx-int8 single-query p50 at 1 thread (ms)", 2.5, "<="),
    "http_p99_c8_ms": ("HTTP p99 at concurrency 8 (ms)", 15.0, "<="),
    "http_errors": ("HTTP errors, all concurrency levels", 0, "<="),
    "server_rss_mb": ("server peak RSS (MB)", 400.0, "<"),
}
FULL = {"queries": 500, "warmup": 50, "batches": 16, "requests": 10_000}
QUICK = {"queries": 40, "warmup": 5, "batches": 2, "requests": 300}


# --------------------------------------------------------------------------------------------
# numbers


def percentiles(samples_ms: list[float]) -> dict:
    """p50/p95/p99/mean/max (ms) and n of latency samples."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        return {"n": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "mean_ms": None, "max_ms": None}
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"n": int(a.size), "p50_ms": round(float(p50), 4), "p95_ms": round(float(p95), 4),
            "p99_ms": round(float(p99), 4), "mean_ms": round(float(a.mean()), 4), "max_ms": round(float(a.max()), 4)}


def time_single(predict: Callable[[list[str]], object], texts: list[str], queries: int, warmup: int) -> list[float]:
    """Milliseconds per call of predict([text]) over `queries` texts, after `warmup` untimed calls."""
    for i in range(warmup):
        predict([texts[i % len(texts)]])
    out = []
    for i in range(queries):
        text = [texts[(warmup + i) % len(texts)]]
        start = time.perf_counter()
        predict(text)
        out.append((time.perf_counter() - start) * 1e3)
    return out


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
    kib = {key: int(value) for key, value in re.findall(r"^(VmHWM|VmRSS):\s+(\d+) kB", status, re.M)}
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


def folder_size_mb(folder: str | Path) -> float:
    return round(sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / MB, 3)


def holdout_texts(path: str | Path, seed: int = 0) -> list[str]:
    """Every holdout text, in a seeded shuffled order (the file is grouped by label)."""
    texts = [json.loads(line)["text"] for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise SystemExit(f"{path}: no texts; run `dvc repro` (prepare stage) first")
    random.Random(seed).shuffle(texts)
    return texts


# --------------------------------------------------------------------------------------------
# backends: a spec (JSON-able, so a subprocess can build it) -> predict(texts)


def load_backend(spec: dict, threads: int) -> Callable[[list[str]], object]:
    """{"kind": "router", "folder"} -> Router.route; {"kind": "torch", "model", "temperature"} ->
    encode + head + softmax. Call only after the thread environment is set."""
    if spec["kind"] == "router":
        from routelet.serving.runtime import Router

        router = Router.load(spec["folder"], threads=threads)
        return router.route
    if spec["kind"] == "torch":
        import torch

        from routelet.families.encoders import load_sentence_encoder
        from routelet.families import load_trained
        from routelet.families.models import softmax
        from routelet.serving.preprocess import preprocess

        torch.set_num_threads(threads)
        model = load_trained(spec["name"], spec["model"]).model
        encoder = load_sentence_encoder(model.encoder)
        coef, intercept = model.weights
        temperature = spec["temperature"]

        def predict(texts: list[str]) -> np.ndarray:
            embedded = encoder.encode([preprocess(t) for t in texts], batch_size=BATCH, convert_to_numpy=True,
                                      show_progress_bar=False)
            return softmax(embedded @ coef.T + intercept, temperature)

        return predict
    raise ValueError(f"backend spec kind {spec['kind']!r} is not 'router' or 'torch'")


def measure(spec: dict, threads: int, texts: list[str], queries: int, warmup: int, batches: int) -> dict:
    """Single-query latency, and batch-64 throughput (when batches > 0), of one backend in this process."""
    start = time.perf_counter()
    predict = load_backend(spec, threads)
    loaded = time.perf_counter() - start
    samples = time_single(predict, texts, queries, warmup)
    result = {"threads": threads, "load_s": round(loaded, 3), **percentiles(samples)}
    if batches > 0:
        result["batch64"] = time_batches(predict, texts, batches)
    return {**result, **proc_memory_mb()}


def measure_in_subprocess(spec: dict, threads: int, texts: list[str], queries: int, warmup: int, batches: int,
                          scratch: Path) -> dict:
    """measure() in a fresh interpreter with OMP_WAIT_POLICY=PASSIVE and thread counts in the env."""
    job = scratch / f"job-{os.getpid()}-{time.monotonic_ns()}.json"
    needed = warmup + queries + (batches + 1) * BATCH
    job.write_text(json.dumps({"spec": spec, "threads": threads, "texts": texts[:needed], "queries": queries,
                               "warmup": warmup, "batches": batches}))
    result_path = job.with_suffix(".out.json")
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-m", "scripts.bench", "--worker", str(job), str(result_path)], env=env)
    if done.returncode != 0 or not result_path.is_file():
        raise RuntimeError(f"bench worker for {spec} at {threads} thread(s) failed (exit {done.returncode}); "
                           "its error is printed above")
    return json.loads(result_path.read_text())


def _worker(job_path: str, result_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    result = measure(job["spec"], job["threads"], job["texts"], job["queries"], job["warmup"], job["batches"])
    Path(result_path).write_text(json.dumps(result))
    return 0


# --------------------------------------------------------------------------------------------
# exporting the comparison routers (the shipped int8 one already exists)


def export_variant(router_folder: Path, models: Path, out: Path, suffix: str, **build) -> Path:
    """The shipped family's encoder + head exported again with other build_onnx_router options
    (quantize=False: fp32; int8="blockwise"); router.json copied from the shipped one."""
    from routelet.export.onnx import build_onnx_router
    from routelet.families import load_trained
    from routelet.export.ship import encoder_folder, encoder_layers, max_length

    info = json.loads((router_folder / "router.json").read_text())
    trained = load_trained(info["family"], models / info["family"])
    coef, intercept = trained.model.weights
    files = build_onnx_router(encoder_folder(trained, models / info["family"]), coef, intercept,
                              info["temperature"], out, max_length=max_length(trained),
                              layers=encoder_layers(trained), **build)
    info = {**info, "files": files, "model_version": f"{info['model_version']}-{suffix}"}
    (out / "router.json").write_text(json.dumps(info))
    return out


def export_tfidf_router(models: Path, prepared: Path, calibration: Path, out: Path, name: str = "tfidf") -> Path:
    """The trained TF-IDF family as a router folder, exactly as the export stage would ship it."""
    from routelet.data.dataset import load_prepared
    from routelet.families import load_trained
    from routelet.export.ship import export_model, router_info

    trained = load_trained(name, models / name)
    calib = json.loads(calibration.read_text())[name]
    exported = export_model(trained, models / name, calib["temperature"], out)
    info = router_info(trained, load_prepared(prepared).taxonomy, calib, exported, {}, {}, out)
    (out / "router.json").write_text(json.dumps(info, indent=2))
    return out


# --------------------------------------------------------------------------------------------
# HTTP: the real server as a subprocess, and two load generators


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(folder: str | Path, threads: int = 1, log: Path | None = None,
                   timeout: float = 120.0) -> Iterator[dict]:
    """`routelet serve` on a free loopback port until the block ends; yields {"port", "pid", "command"}."""
    port = free_port()
    command = [sys.executable, "-m", "routelet.cli", "serve", "--router", str(folder), "--port", str(port),
               "--threads", str(threads)]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop("ROUTELET_API_KEY", None)
    with open(log or os.devnull, "wb") as sink:
        # The server log goes to a file, not a pipe: a full pipe would stall the server.
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"server exited with {process.returncode} before /healthz answered: "
                                       f"{' '.join(command)} (log: {log})")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server gave no /healthz within {timeout:.0f} s: {' '.join(command)}")
                time.sleep(0.1)
            yield {"port": port, "pid": process.pid, "command": " ".join(["routelet"] + command[3:])}
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _request_bytes(port: int, text: str) -> bytes:
    body = json.dumps({"text": text}).encode()
    head = (f"POST /v1/route HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


async def _load_asyncio(port: int, texts: list[str], concurrency: int, requests: int, timeout: float) -> dict:
    payloads = [_request_bytes(port, t) for t in texts]
    latencies: list[float] = []
    counts = {"next": 0, "non200": 0, "socket": 0, "timeout": 0}

    async def one_connection() -> None:
        reader = writer = None
        while counts["next"] < requests:
            index = counts["next"]
            counts["next"] += 1
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                start = time.perf_counter()
                writer.write(payloads[index % len(payloads)])
                status, close = await asyncio.wait_for(_read_response(reader), timeout)
                latencies.append((time.perf_counter() - start) * 1e3)
                counts["non200"] += status != 200
                if close:
                    writer.close()
                    writer = None
            except asyncio.TimeoutError:
                counts["timeout"] += 1
                writer = _drop(writer)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                counts["socket"] += 1
                writer = _drop(writer)
        _drop(writer)

    start = time.perf_counter()
    await asyncio.gather(*(one_connection() for _ in range(concurrency)))
    seconds = time.perf_counter() - start
    return {"completed": len(latencies), "seconds": seconds, "latencies_ms": latencies,
            "errors": {"non200": counts["non200"], "socket": counts["socket"], "timeout": counts["timeout"]}}


def _drop(writer):
    if writer is not None:
        writer.close()
    return None


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, server closes?) of one HTTP/1.1 response with a Content-Length body."""
    status_line = await reader.readline()
    if not status_line:
        raise ValueError("connection closed")
    status = int(status_line.split(b" ", 2)[1])
    length, close = 0, False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"connection":
            close = value.strip().lower() == b"close"
    await reader.readexactly(length)
    return status, close


def load_asyncio(port: int, texts: list[str], concurrency: int, requests: int, timeout: float = 10.0) -> dict:
    """Closed loop: `concurrency` keep-alive connections share `requests` POST /v1/route, one text each."""
    return _summarize_load(asyncio.run(_load_asyncio(port, texts, concurrency, requests, timeout)), concurrency)


def _summarize_load(raw: dict, concurrency: int) -> dict:
    stats = percentiles(raw["latencies_ms"])
    errors = sum(raw["errors"].values())
    failed = raw["errors"]["socket"] + raw["errors"]["timeout"]  # attempts that got no response
    return {"concurrency": concurrency, "requests": raw["completed"] + failed,
            "completed": raw["completed"], "errors": errors, "error_kinds": raw["errors"],
            "p50_ms": stats["p50_ms"], "p95_ms": stats["p95_ms"], "p99_ms": stats["p99_ms"],
            "mean_ms": stats["mean_ms"], "max_ms": stats["max_ms"],
            "requests_per_s": round(raw["completed"] / raw["seconds"], 1), "seconds": round(raw["seconds"], 3)}


WRK_SCRIPT = r"""
-- POST /v1/route with one holdout text per request, cycling. At `limit` responses the thread stops
-- and says so on stdout; the bench then interrupts wrk (whose main thread sleeps for -d) so done()
-- reports. The elapsed time is the thread's own monotonic clock from first request to last response.
local ffi = require("ffi")
ffi.cdef[[ typedef struct { long tv_sec; long tv_nsec; } bench_timespec; int clock_gettime(int, bench_timespec *); ]]
local function now_us()
  local ts = ffi.new("bench_timespec")
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3
end
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  bodies = {}
  for line in io.lines(args[1]) do
    bodies[#bodies + 1] = wrk.format("POST", nil, {["Content-Type"] = "application/json"}, line)
  end
  limit, next_body, responses, non200, t_start, t_end = tonumber(args[2]), 0, 0, 0, 0, 0
end
function request()
  if t_start == 0 then t_start = now_us() end
  next_body = next_body % #bodies + 1
  return bodies[next_body]
end
function response(status, headers, body)
  responses = responses + 1
  if status ~= 200 then non200 = non200 + 1 end
  if responses == limit then
    t_end = now_us()
    wrk.thread:stop()
    io.write("BENCH_LIMIT\n")
    io.flush()
  end
end
function done(summary, latency, requests)
  local non200_total, t0, t1 = 0, math.huge, 0
  for _, t in ipairs(threads) do
    non200_total = non200_total + t:get("non200")
    t0 = math.min(t0, t:get("t_start"))
    t1 = math.max(t1, t:get("t_end"))
  end
  local e = summary.errors
  io.write(string.format('BENCH_JSON {"completed": %d, "duration_us": %d, "elapsed_us": %d, "connect": %d, ' ..
    '"read": %d, "write": %d, "timeout": %d, "non200": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "mean_us": %.1f}\n', summary.requests, summary.duration, t1 - t0, e.connect, e.read, e.write,
    e.timeout, non200_total, latency:percentile(50), latency:percentile(95), latency:percentile(99),
    latency.max, latency.mean))
end
"""


def load_wrk(port: int, texts: list[str], concurrency: int, requests: int, scratch: Path,
             timeout: float = 10.0) -> dict:
    """The same closed loop with wrk: one wrk thread (C + epoll), far lighter on the shared cores than Python."""
    bodies = scratch / "bodies.jsonl"
    bodies.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    script = scratch / "route.lua"
    script.write_text(WRK_SCRIPT)
    duration = max(60, requests // 20)  # a bound only: the run ends at `requests` responses
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{duration}s", f"--timeout={timeout:g}s", "-s", str(script),
               f"http://127.0.0.1:{port}/v1/route", "--", str(bodies), str(requests)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("BENCH_LIMIT"):
            process.send_signal(signal.SIGINT)  # ends wrk's sleep: it joins its thread and runs done()
    process.wait()
    stderr = process.stderr.read()
    found = [x for x in lines if x.startswith("BENCH_JSON ")]
    if process.returncode != 0 or not found:
        raise RuntimeError(f"wrk failed (exit {process.returncode}): {stderr.strip() or ''.join(lines).strip()}")
    raw = json.loads(found[0].removeprefix("BENCH_JSON "))
    # A run that hit -d before `requests` responses has no end mark: fall back to wrk's own duration.
    seconds = (raw["elapsed_us"] if raw["elapsed_us"] > 0 else raw["duration_us"]) / 1e6
    errors = {"non200": raw["non200"], "socket": raw["connect"] + raw["read"] + raw["write"], "timeout": raw["timeout"]}
    ms = {k: round(raw[f"{k}_us"] / 1e3, 4) for k in ("p50", "p95", "p99", "max", "mean")}
    return {"concurrency": concurrency, "requests": raw["completed"] + errors["socket"] + errors["timeout"],
            "completed": raw["completed"], "errors": sum(errors.values()), "error_kinds": errors,
            "p50_ms": ms["p50"], "p95_ms": ms["p95"], "p99_ms": ms["p99"], "mean_ms": ms["mean"], "max_ms": ms["max"],
            "requests_per_s": round(raw["completed"] / seconds, 1), "seconds": round(seconds, 3)}


def wrk_version() -> str | None:
    if not shutil.which("wrk"):
        return None
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    match = re.search(r"wrk (\S+)", out.stdout + out.stderr)
    return f"wrk {match.group(1)}" if match else "wrk"


def http_bench(folder: str | Path, texts: list[str], concurrencies: list[int], requests: int, loadgen: str,
               scratch: Path, warmup: int = 200) -> dict:
    """Serve `folder`, warm it up, run each concurrency level, then read the server's peak RSS."""
    if loadgen == "auto":
        loadgen = "wrk" if shutil.which("wrk") else "asyncio"
    if loadgen == "wrk" and not shutil.which("wrk"):
        raise SystemExit("--loadgen wrk: wrk is not on PATH (Debian: apt-get install -y wrk), or use --loadgen asyncio")

    def run(port: int, concurrency: int, n: int) -> dict:
        if loadgen == "wrk":
            return load_wrk(port, texts, concurrency, n, scratch)
        return load_asyncio(port, texts, concurrency, n)

    with running_server(folder, threads=1, log=scratch / "server.log") as server:
        idle = proc_memory_mb(server["pid"])
        run(server["port"], max(concurrencies), warmup)  # first requests load lazy code paths: not counted
        runs = []
        for concurrency in concurrencies:
            cpu_before = proc_cpu_seconds(server["pid"])
            result = run(server["port"], concurrency, requests)
            cpu_after = proc_cpu_seconds(server["pid"])
            # CPU the server spent per request: its capacity on one core, whatever the wall clock did.
            cpu_ms = None if cpu_before is None or not result["completed"] else \
                round((cpu_after - cpu_before) * 1e3 / result["completed"], 3)
            runs.append({**result, "server_cpu_ms_per_request": cpu_ms, "loadavg_1m": round(os.getloadavg()[0], 2)})
            print(f"  http c={concurrency:<3} p50 {result['p50_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms  "
                  f"{result['requests_per_s']:.0f} req/s  server CPU {cpu_ms} ms/request  errors {result['errors']}",
                  flush=True)
        memory = proc_memory_mb(server["pid"])
    name = wrk_version() if loadgen == "wrk" else "asyncio (raw streams, keep-alive, in the bench process)"
    return {"loadgen": name, "server_command": server["command"], "server_threads": 1,
            "server_rss_idle_mb": idle["rss_mb"], "server_peak_rss_mb": memory["peak_rss_mb"],
            "requests_per_level": requests, "warmup_requests": warmup, "runs": runs}


# --------------------------------------------------------------------------------------------
# targets, figure, report


def check_targets(results: dict) -> dict:
    """Each issue target: value, limit, pass (None where the value was not measured)."""
    single = {(r["backend"], r["threads"]): r for r in results.get("single_query", [])}
    runs = {r["concurrency"]: r for r in results.get("http", {}).get("runs", [])}
    values = {
        "int8_p50_1thread_ms": single.get(("onnx-int8", 1), {}).get("p50_ms"),
        "http_p99_c8_ms": runs.get(8, {}).get("p99_ms"),
        "http_errors": sum(r["errors"] for r in runs.values()) if runs else None,
        "server_rss_mb": results.get("http", {}).get("server_peak_rss_mb"),
    }
    out = {}
    for key, (what, limit, op) in TARGETS.items():
        value = values[key]
        passed = None if value is None else (value <= limit if op == "<=" else value < limit)
        out[key] = {"what": what, "value": value, "limit": f"{op} {limit}", "pass": passed}
    return out


def plot(results: dict, path: str | Path) -> Path:
    """Grouped bars of single-query p50/p99 per backend and thread count (log y); HTTP p50/p99 vs concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    single = results["single_query"]
    backends = [b for b in BACKENDS if any(r["backend"] == b for r in single)] or sorted({r["backend"] for r in single})
    threads = sorted({r["threads"] for r in single})
    runs = results.get("http", {}).get("runs", [])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [2.4, 1]})
    ax = axes[0]
    series = [(t, q) for t in threads for q in ("p50", "p99")]
    width = 0.8 / len(series)
    colors = {("p50", 0): "#4c72b0", ("p99", 0): "#a1c4e8", ("p50", 1): "#dd8452", ("p99", 1): "#f5c6a0"}
    for k, (t, q) in enumerate(series):
        xs, ys = [], []
        for i, backend in enumerate(backends):
            row = next((r for r in single if r["backend"] == backend and r["threads"] == t), None)
            if row is not None:
                xs.append(i - 0.4 + width * (k + 0.5))
                ys.append(row[f"{q}_ms"])
        bars = ax.bar(xs, ys, width, label=f"{q}, {t} thread{'s' if t > 1 else ''}",
                      color=colors.get((q, threads.index(t) % 2)))
        ax.bar_label(bars, fmt="%.2g", fontsize=6, padding=1)
    ax.set_yscale("log")
    top = max(r["p99_ms"] for r in single)
    ax.set_ylim(top=top * 8)  # headroom for the legend above the bars
    ax.set_xticks(range(len(backends)), backends)
    ax.set_ylabel("single-query latency (ms, log)")
    ax.set_title("In-process, one text per call")
    ax.axhline(TARGETS["int8_p50_1thread_ms"][1], color="gray", ls=":", lw=1, label="int8 p50 target (1 thread)")
    ax.legend(fontsize=7, ncol=3, loc="upper center")
    ax = axes[1]
    if runs:
        cs = [r["concurrency"] for r in runs]
        ax.plot(cs, [r["p50_ms"] for r in runs], "o-", label="p50")
        ax.plot(cs, [r["p99_ms"] for r in runs], "s-", label="p99")
        ax.axhline(TARGETS["http_p99_c8_ms"][1], color="gray", ls=":", lw=1, label="p99 target at c=8")
        ax.set_xscale("log", base=2)
        ax.set_xticks(cs, [str(c) for c in cs])
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    ax.set_xlabel("concurrent connections")
    ax.set_ylabel("HTTP latency (ms, log)")
    ax.set_title("HTTP /v1/route, onnx-int8, 1 thread")
    load = results.get("meta", {}).get("loadavg_start")
    if load:
        fig.suptitle(f"routelet bench ({os.cpu_count()} vCPUs, load avg {load[0]:.2f} at start)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in ("onnxruntime", "torch", "sentence-transformers", "uvicorn", "fastapi"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def _commit() -> str | None:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or None


def print_table(results: dict) -> None:
    print("\nsingle query (ms)          threads   p50     p95     p99    batch-64 texts/s")
    for r in results["single_query"]:
        tput = next((b["texts_per_s"] for b in results["batch64"]
                     if b["backend"] == r["backend"] and b["threads"] == r["threads"]), None)
        print(f"  {r['backend']:<24} {r['threads']:>3} {r['p50_ms']:>8.2f} {r['p95_ms']:>7.2f} {r['p99_ms']:>7.2f}"
              f"   {'' if tput is None else f'{tput:,.0f}'}")
    print("sizes (MB):", ", ".join(f"{k} {v}" for k, v in results["size_mb"].items()))
    print("targets:")
    for key, t in results["targets"].items():
        verdict = {True: "PASS", False: "FAIL", None: "n/a "}[t["pass"]]
        print(f"  {verdict}  {t['what']}: {t['value']} (target {t['limit']})")


# --------------------------------------------------------------------------------------------
# main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--router", default="data/router",
        help="shipped router folder: the onnx-int8 backend and the one served over HTTP (default: %(default)s)")
    add("--models", default="data/models",
        help="trained families, for torch-fp32, onnx-fp32 and tfidf (default: %(default)s)")
    add("--prepared", default="data/prepared", help="test.jsonl texts and taxonomy.json (default: %(default)s)")
    add("--calibration", default="report/calibration.json", help="temperatures per family (default: %(default)s)")
    add("--out", default="report/bench.json", help="results JSON (default: %(default)s)")
    add("--figure", default="report/figures/bench.png", help="figure (default: %(default)s)")
    add("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS), help="in-process backends (default: all)")
    add("--threads", nargs="+", type=int, default=[1, 2], help="thread counts for single queries (default: 1 2)")
    for name, what in (("queries", "timed single queries per configuration"), ("warmup", "untimed queries first"),
                       ("batches", "timed batches of 64, at 1 thread"),
                       ("requests", "HTTP requests per concurrency level")):
        add(f"--{name}", type=int, help=f"{what} (default: {FULL[name]}, with --quick {QUICK[name]})")
    add("--concurrency", nargs="+", type=int, default=[1, 8, 32], help="HTTP concurrency levels (default: 1 8 32)")
    add("--loadgen", choices=("auto", "wrk", "asyncio"), default="auto",
        help="HTTP load generator: wrk if on PATH, else a raw-asyncio one (default: %(default)s)")
    add("--no-http", action="store_true", help="skip the HTTP part")
    add("--quick", action="store_true", help="smoke run: small counts, same code paths; not for the report")
    add("--worker", nargs=2, metavar=("JOB", "RESULT"), help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        return _worker(*args.worker)
    counts = QUICK if args.quick else FULL
    counts = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in counts.items()}
    router, models = Path(args.router), Path(args.models)
    if not (router / "router.json").is_file():
        raise SystemExit(f"{router}/router.json: no shipped router; run `dvc repro` first or pass --router")
    texts = holdout_texts(Path(args.prepared) / "test.jsonl")
    shipped = json.loads((router / "router.json").read_text())
    results: dict = {"meta": {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": _commit(), "cpu_count": os.cpu_count(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()], "host_probe_ms_start": host_probe_ms(),
        "quick": args.quick, **counts,
        "router": str(router), "model_version": shipped["model_version"], "holdout_texts": len(texts),
        "env": {"OMP_WAIT_POLICY": "PASSIVE (set in every worker and the server)"}, "versions": _versions()}}
    print(f"bench: {os.cpu_count()} vCPUs, load average {results['meta']['loadavg_start']}, host probe "
          f"{results['meta']['host_probe_ms_start']} ms", flush=True)

    with tempfile.TemporaryDirectory(prefix="routelet-bench-") as tmp:
        scratch = Path(tmp)
        specs: dict[str, dict] = {}
        for backend in args.backends:
            print(f"bench: preparing {backend}", flush=True)
            if backend == "onnx-int8":
                specs[backend] = {"kind": "router", "folder": str(router)}
            elif backend == "onnx-fp32":
                folder = export_variant(router, models, scratch / "fp32", "fp32", quantize=False)
                specs[backend] = {"kind": "router", "folder": str(folder)}
            elif backend == "onnx-int8-blockwise":
                folder = export_variant(router, models, scratch / "blockwise", "blockwise", int8="blockwise")
                specs[backend] = {"kind": "router", "folder": str(folder)}
            elif backend == "tfidf":
                folder = export_tfidf_router(models, Path(args.prepared), Path(args.calibration), scratch / "tfidf")
                specs[backend] = {"kind": "router", "folder": str(folder)}
            else:
                specs[backend] = {"kind": "torch", "name": shipped["family"], "model": str(models / shipped["family"]),
                                  "temperature": shipped["temperature"]}
        results["size_mb"] = {b: folder_size_mb(s["folder"]) for b, s in specs.items() if s["kind"] == "router"}

        results["single_query"], results["batch64"] = [], []
        for threads in args.threads:
            for backend, spec in specs.items():
                batches = counts["batches"] if threads == 1 else 0
                r = measure_in_subprocess(spec, threads, texts, counts["queries"], counts["warmup"], batches, scratch)
                batch = r.pop("batch64", None)
                results["single_query"].append({"backend": backend, **r, "loadavg_1m": round(os.getloadavg()[0], 2)})
                if batch:
                    results["batch64"].append({"backend": backend, "threads": threads, **batch})
                print(f"  {backend:<19} {threads} thread(s): p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms"
                      + (f"  batch-64 {batch['texts_per_s']:,.0f} texts/s" if batch else ""), flush=True)

        if not args.no_http:
            print(f"bench: HTTP, {counts['requests']:,} requests per level", flush=True)
            results["http"] = http_bench(router, texts, args.concurrency, counts["requests"], args.loadgen, scratch,
                                         warmup=min(200, counts["requests"]))
    results["meta"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["meta"]["host_probe_ms_end"] = host_probe_ms()
    results["targets"] = check_targets(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.figure)
    print_table(results)
    print(f"bench: load average at end {results['meta']['loadavg_end']}, host probe "
          f"{results['meta']['host_probe_ms_end']} ms; wrote {out} and {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
