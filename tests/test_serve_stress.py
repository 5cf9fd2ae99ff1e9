"""scripts/serve_stress.py, the heavy-load measurements `make bench` calls, on the tiny tfidf router:
they run, and what they report hangs together (the figures themselves belong to the bench)."""

from __future__ import annotations

import pytest
from routers import tfidf_folder  # noqa: F401  (fixture)

from scripts.serve_stress import heavy_batch_rss, small_under_heavy


def test_heavy_batch_rss(tfidf_folder):
    report = heavy_batch_rss(tfidf_folder, rounds=1, threads=2)
    assert report["threads"] == 2 and report["texts_routed"] == 1024
    assert 0 < report["rss_fresh_mb"] <= report["rss_loaded_mb"] <= report["peak_rss_mb"]


@pytest.mark.slow
def test_small_under_heavy(tfidf_folder):
    report = small_under_heavy(tfidf_folder, heavy_clients=2, small_requests=20)
    assert report["heavy"]["requests"] >= 2 and report["server_peak_rss_mb"] > 0
    assert 0 < report["small_idle"]["p50_ms"] <= report["small_idle"]["p99_ms"]
    assert report["small_under_heavy"]["p99_ms"] < report["heavy"]["p50_ms"]  # it never waits for a whole heavy one
