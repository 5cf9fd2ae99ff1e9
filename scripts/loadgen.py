"""HTTP load for the bench: the real server as a subprocess, and two closed-loop load generators.

    with running_server("data/router") as server:         # `routelet serve --threads 1` on a free port
        load_asyncio(server["port"], texts, concurrency=8, requests=10_000)
    http_bench("data/router", texts, [1, 8, 32], 10_000, "auto", scratch)   # what `make bench` runs

`wrk` (with scripts/wrk_route.lua) runs the loop when it is on PATH: one C thread on epoll, far
lighter on the shared cores than Python; otherwise the asyncio generator below (raw streams,
keep-alive, in the bench process). Each request is one POST /v1/route with a single holdout text,
cycling. Errors are non-200 responses plus socket errors and timeouts. Peak server RSS is
/proc/<pid>/status VmHWM after all runs. `server_cpu_ms_per_request` is the server's CPU time per
request: with one free core, a closed loop of c connections waits about c times that (Little's
law), whatever the server's code does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from scripts.bench_measure import percentiles, proc_cpu_seconds, proc_memory_mb

WRK_SCRIPT = Path(__file__).with_name("wrk_route.lua")


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
            except TimeoutError:
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


def load_wrk(port: int, texts: list[str], concurrency: int, requests: int, scratch: Path,
             timeout: float = 10.0) -> dict:
    """The same closed loop with wrk: one wrk thread (C + epoll), far lighter on the shared cores than Python."""
    bodies = scratch / "bodies.jsonl"
    bodies.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    duration = max(60, requests // 20)  # a bound only: the run ends at `requests` responses
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{duration}s", f"--timeout={timeout:g}s", "-s", str(WRK_SCRIPT),
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
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
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
