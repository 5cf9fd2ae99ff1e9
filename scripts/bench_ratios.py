"""The speed targets of one bench run, as ratios between figures measured in that same run.

    ratios(results)      # {key: {"what", "value", "target", "met", "inputs"}} for report/bench.json

Absolute milliseconds do not hold on a shared host (the same code measured 2.25, 3.21 and 4.53 ms
p50 on three days), so each target compares the tiered router with another backend, the served
router with itself in process, or the host with itself at the start and end of the run. `met` is
None where a figure is missing (a backend skipped or not asked for): the entry says which.
"""

from __future__ import annotations

import operator

# key: (what, comparison, target)
TARGETS = {
    "tiered_over_encoder_int8_p50": ("tiered p50 / encoder-only int8 p50 (single query, 1 thread)", "<=", 0.25),
    "tiered_over_torch_p50": ("tiered p50 / torch-fp32 p50 (the encoder family's training-side model)", "<=", 0.05),
    "tiered_over_semantic_router_p50": ("tiered p50 / semantic-router p50 (same encoder, same routes)", "<=", 0.05),
    "http_c1_minus_in_process_p50_ms": ("HTTP c=1 p50 - in-process p50 of the served router (ms)", "<=", 1.0),
    "server_cpu_over_in_process_cpu": ("server CPU per request at c=1 / in-process CPU per route", "<=", 1.3),
    "http_c32_errors": ("HTTP errors at concurrency 32", "<=", 0),
    "http_c32_p99_over_p50": ("HTTP p99 / p50 at concurrency 32", "<=", 3.0),
    "http_c32_rps_over_in_process": ("HTTP requests/s at concurrency 32 / in-process routes/s (1 thread)", ">=", 0.8),
    "server_peak_rss_mb": ("server peak RSS (MB)", "<", 400.0),
    "host_probe_drift": ("host probe, slower / faster of start and end (the host held its speed)", "<=", 1.25),
}
COMPARE = {"<=": operator.le, "<": operator.lt, ">=": operator.ge}


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 4)


def _values(results: dict) -> dict[str, tuple[float | None, dict]]:
    """(value, the figures it came from) per target key."""
    single = {r["backend"]: r for r in results.get("single_query", []) if r["threads"] == 1}
    http = results.get("http", {})
    runs = {r["concurrency"]: r for r in http.get("runs", [])}
    served = single.get(http.get("backend"), {})  # the same router in process, 1 thread

    def p50(backend: str) -> float | None:
        return single.get(backend, {}).get("p50_ms")

    def versus(backend: str) -> tuple[float | None, dict]:
        return _ratio(p50("tiered"), p50(backend)), {"tiered_p50_ms": p50("tiered"), f"{backend}_p50_ms": p50(backend)}

    c1, c32 = runs.get(1, {}), runs.get(32, {})
    meta = results.get("meta", {})
    probes = [meta.get("host_probe_ms_start"), meta.get("host_probe_ms_end")]
    gap = None if c1.get("p50_ms") is None or served.get("p50_ms") is None else round(c1["p50_ms"] - served["p50_ms"], 4)
    return {
        "tiered_over_encoder_int8_p50": versus("onnx-int8"),
        "tiered_over_torch_p50": versus("torch-fp32"),
        "tiered_over_semantic_router_p50": versus("semantic-router"),
        "http_c1_minus_in_process_p50_ms": (gap, {"http_c1_p50_ms": c1.get("p50_ms"), "in_process_p50_ms": served.get("p50_ms")}),
        "server_cpu_over_in_process_cpu": (
            _ratio(c1.get("server_cpu_ms_per_request"), served.get("cpu_ms_per_query")),
            {"server_cpu_ms_per_request": c1.get("server_cpu_ms_per_request"),
             "in_process_cpu_ms_per_route": served.get("cpu_ms_per_query")}),
        "http_c32_errors": (c32.get("errors"), {"requests": c32.get("requests")}),
        "http_c32_p99_over_p50": (_ratio(c32.get("p99_ms"), c32.get("p50_ms")),
                                  {"p99_ms": c32.get("p99_ms"), "p50_ms": c32.get("p50_ms")}),
        "http_c32_rps_over_in_process": (
            _ratio(c32.get("requests_per_s"), served.get("routes_per_s")),
            {"http_requests_per_s": c32.get("requests_per_s"), "in_process_routes_per_s": served.get("routes_per_s")}),
        "server_peak_rss_mb": (http.get("server_peak_rss_mb"), {}),
        "host_probe_drift": (_ratio(max(probes), min(probes)) if None not in probes else None,
                             {"start_ms": probes[0], "end_ms": probes[1]}),
    }


def ratios(results: dict) -> dict:
    """Each target with its value, its inputs, and met (None where a figure is missing)."""
    out = {}
    for key, (value, inputs) in _values(results).items():
        what, op, target = TARGETS[key]
        met = None if value is None else bool(COMPARE[op](value, target))
        entry = {"what": what, "value": value, "target": f"{op} {target}", "met": met, "inputs": inputs}
        if value is None:
            entry["missing"] = "a figure it needs was not measured in this run (backend skipped or not asked for)"
        out[key] = entry
    return out
