"""Heavy load against a router: peak memory under heavy batches, and a small request's latency while
heavy requests are in flight. For `make bench` (scripts.bench can call both functions) or by hand:

    python -m scripts.serve_stress rss --router data/router
    python -m scripts.serve_stress latency --router data/router

heavy_batch_rss(folder): a fresh process loads the router, then one thread per core routes batches
of 2,000-character texts (16 at a time, as the server's batcher sends them, and 256 in one library
call); it reports RSS fresh, loaded and peak (VmHWM), in MB.
small_under_heavy(folder): `routelet serve` in a subprocess; `heavy_clients` clients keep requests of
250 texts of 255 characters (the most Limits allows: 64,000 characters) in flight while one client
sends one-text requests; it reports the small request's p50/p99 latency idle and under load, its
X-Queue-Ms, the heavy requests' latency and the server's peak RSS. Compare the ratios, not the ms.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

WORDS = ("please send money to my savings account and check the balance of my airline miles then book a "
         "flight to paris for tomorrow morning and set an alarm at seven").split()


def memory_mb(pid: int | str = "self") -> dict:
    """VmRSS and VmHWM (peak) of a process, in MB, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    kib = dict(re.findall(r"^(VmHWM|VmRSS):\s+(\d+) kB", status, re.M))
    return {"rss_mb": round(int(kib["VmRSS"]) / 1024, 1), "peak_rss_mb": round(int(kib["VmHWM"]) / 1024, 1)}


def _long_texts(rng: np.random.Generator, n: int, chars: int) -> list[str]:
    return [" ".join(rng.choice(WORDS, chars // 4))[:chars] for _ in range(n)]


def _rss_in_this_process(folder: str, rounds: int, threads: int) -> dict:
    fresh = memory_mb()
    from routelet.serving.runtime import Router

    router = Router.load(folder)
    loaded = memory_mb()

    def heavy(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(rounds):
            texts = _long_texts(rng, 256, 2000)
            for start in range(0, len(texts), 16):
                router.route(texts[start : start + 16])
            router.route(texts)

    workers = [threading.Thread(target=heavy, args=(seed,)) for seed in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    after = memory_mb()
    return {"rss_fresh_mb": fresh["rss_mb"], "rss_loaded_mb": loaded["rss_mb"], "peak_rss_mb": after["peak_rss_mb"],
            "rss_after_mb": after["rss_mb"], "threads": threads, "texts_routed": threads * rounds * 512}


def heavy_batch_rss(router_folder: str | Path, rounds: int = 6, threads: int | None = None) -> dict:
    """Peak RSS of a fresh process routing heavy batches on one thread per core (see the docstring)."""
    threads = threads or os.cpu_count() or 1
    done = subprocess.run([sys.executable, "-m", "scripts.serve_stress", "rss", "--router", str(router_folder),
                           "--rounds", str(rounds), "--threads", str(threads)],
                          capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    return json.loads(done.stdout.splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# HTTP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port: int, body: bytes) -> tuple[float, float | None]:
    """(seconds, X-Queue-Ms) of one POST /v1/route on a fresh connection; raises on a non-200."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    started = time.perf_counter()
    connection.request("POST", "/v1/route", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    response.read()
    elapsed = time.perf_counter() - started
    connection.close()
    if response.status != 200:
        raise RuntimeError(f"POST /v1/route answered {response.status}")
    queue = response.getheader("X-Queue-Ms")
    return elapsed, None if queue is None else float(queue)


def _serve(folder: str | Path, port: int, log) -> subprocess.Popen:
    script = Path(sys.executable).parent / "routelet"
    process = subprocess.Popen([str(script), "serve", "--router", str(folder), "--port", str(port)],
                               stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"routelet serve did not start (exit {process.poll()})") from None
            time.sleep(0.2)


def _percentiles(seconds: list[float]) -> dict:
    ms = 1000 * np.asarray(seconds)
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def small_under_heavy(router_folder: str | Path, heavy_clients: int = 6, small_requests: int = 200) -> dict:
    """A small request's latency idle and with `heavy_clients` heavy requests in flight (see the docstring)."""
    small = json.dumps({"text": "my flight from the airport"}).encode()
    heavy = json.dumps({"texts": [t[:255] for t in _long_texts(np.random.default_rng(0), 250, 300)]}).encode()
    port = _free_port()
    with open(os.devnull, "w") as log:
        process = _serve(router_folder, port, log)
        try:
            for _ in range(20):
                _post(port, small)
            idle = [_post(port, small)[0] for _ in range(small_requests)]
            stop, heavy_seconds = threading.Event(), []

            def client() -> None:
                while not stop.is_set():
                    heavy_seconds.append(_post(port, heavy)[0])

            clients = [threading.Thread(target=client) for _ in range(heavy_clients)]
            for thread in clients:
                thread.start()
            time.sleep(0.5)
            loaded = [_post(port, small) for _ in range(small_requests)]
            stop.set()
            for thread in clients:
                thread.join()
            peak = memory_mb(process.pid)["peak_rss_mb"]
        finally:
            process.terminate()
            process.wait(timeout=30)
    idle_stats, loaded_stats = _percentiles(idle), _percentiles([s for s, _ in loaded])
    return {"small_idle": idle_stats, "small_under_heavy": loaded_stats,
            "small_queue_ms_p99": round(float(np.percentile([q or 0.0 for _, q in loaded], 99)), 2),
            "heavy": {**_percentiles(heavy_seconds), "requests": len(heavy_seconds)},
            "p99_ratio_loaded_to_idle": round(loaded_stats["p99_ms"] / idle_stats["p99_ms"], 1),
            "server_peak_rss_mb": peak, "heavy_clients": heavy_clients}


def measure(router: str | Path, quick: bool = False) -> dict:
    """For `make bench`: peak RSS under heavy batches, and a small request's latency while heavy
    requests are in flight (the head-of-line test), against the served router folder."""
    return {"heavy_batch_rss": heavy_batch_rss(router, rounds=2 if quick else 6),
            "small_under_heavy": small_under_heavy(router, small_requests=30 if quick else 200)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["rss", "latency"], help="rss: heavy_batch_rss; latency: small_under_heavy")
    parser.add_argument("--router", default="data/router", help="router folder (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=6, help="rss: rounds of 512 texts per thread")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="rss: routing threads")
    parser.add_argument("--heavy-clients", type=int, default=6, help="latency: heavy requests kept in flight")
    args = parser.parse_args(argv)
    if args.what == "rss":
        print(json.dumps(_rss_in_this_process(args.router, args.rounds, args.threads)))
    else:
        print(json.dumps(small_under_heavy(args.router, args.heavy_clients)))


if __name__ == "__main__":
    main()
