"""The bench figure: single-query p50/p99 per backend and thread count, HTTP p50/p99 per concurrency.

    python -m scripts.bench_plot report/bench.json report/figures/bench.png    # redraw from a bench run
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

COLORS = {("p50", 0): "#4c72b0", ("p99", 0): "#a1c4e8", ("p50", 1): "#dd8452", ("p99", 1): "#f5c6a0"}


def _single_query_panel(ax, single: list[dict], order: list[str]) -> None:
    backends = [b for b in order if any(r["backend"] == b for r in single)]
    threads = sorted({r["threads"] for r in single})
    series = [(t, q) for t in threads for q in ("p50", "p99")]
    width = 0.8 / len(series)
    for k, (t, q) in enumerate(series):
        xs, ys = [], []
        for i, backend in enumerate(backends):
            row = next((r for r in single if r["backend"] == backend and r["threads"] == t), None)
            if row is not None:
                xs.append(i - 0.4 + width * (k + 0.5))
                ys.append(row[f"{q}_ms"])
        bars = ax.bar(xs, ys, width, label=f"{q}, {t} thread{'s' if t > 1 else ''}",
                      color=COLORS.get((q, threads.index(t) % 2)))
        ax.bar_label(bars, fmt="%.2g", fontsize=6, padding=1)
    ax.set_yscale("log")
    ax.set_ylim(top=max(r["p99_ms"] for r in single) * 8)  # headroom for the legend above the bars
    ax.set_xticks(range(len(backends)), backends, rotation=20, fontsize=7)
    ax.set_ylabel("single-query latency (ms, log)")
    ax.set_title("In-process, one text per call")
    ax.legend(fontsize=7, ncol=2, loc="upper center")


def _http_panel(ax, http: dict) -> None:
    runs = http.get("runs", [])
    if runs:
        cs = [r["concurrency"] for r in runs]
        ax.plot(cs, [r["p50_ms"] for r in runs], "o-", label="p50")
        ax.plot(cs, [r["p99_ms"] for r in runs], "s-", label="p99")
        ax.set_xscale("log", base=2)
        ax.set_xticks(cs, [str(c) for c in cs])
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    ax.set_xlabel("concurrent connections")
    ax.set_ylabel("HTTP latency (ms, log)")
    ax.set_title(f"HTTP /v1/route, {http.get('backend', 'router')}, 1 thread", fontsize=9)


def plot(results: dict, path: str | Path, order: tuple[str, ...] = ()) -> Path:
    """Grouped bars of single-query p50/p99 per backend and thread count (log y); HTTP p50/p99 vs concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    single = results["single_query"]
    order = list(order) + sorted({r["backend"] for r in single} - set(order))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), gridspec_kw={"width_ratios": [2.6, 1]})
    if single:
        _single_query_panel(axes[0], single, order)
    _http_panel(axes[1], results.get("http", {}))
    load = results.get("meta", {}).get("loadavg_start")
    if load:
        fig.suptitle(f"routelet bench ({os.cpu_count()} vCPUs, load avg {load[0]:.2f} at start)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m scripts.bench_plot BENCH.json FIGURE.png")
    print(plot(json.loads(Path(sys.argv[1]).read_text()), sys.argv[2]))
