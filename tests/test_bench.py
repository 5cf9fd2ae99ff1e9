"""The bench's building blocks on tiny router folders, with --quick-sized counts: result structure,
counts, zero errors and ordered percentiles. Wall-clock values are never asserted."""

from __future__ import annotations

import json
import shutil

import pytest
from routers import onnx_folder, tfidf_folder  # noqa: F401  (fixtures)

from scripts import bench

TEXTS = ["what is my account balance", "book a flight from the airport", "tell me a joke", "send money to payee",
         "wire funds to my savings", "boarding pass airline"]


def assert_ordered(stats: dict) -> None:
    assert stats["p50_ms"] <= stats["p95_ms"] <= stats["p99_ms"] <= stats["max_ms"]
    assert stats["p50_ms"] > 0


def test_percentiles():
    stats = bench.percentiles([float(x) for x in range(1, 101)])
    assert stats["n"] == 100 and stats["p50_ms"] == 50.5 and stats["max_ms"] == 100.0
    assert_ordered(stats)
    assert bench.percentiles([])["p50_ms"] is None


def test_host_probe_is_a_duration():
    probe = bench.host_probe_ms(repeats=5)
    assert isinstance(probe, float) and probe > 0


@pytest.mark.parametrize("folder", ["tfidf_folder", "onnx_folder"])
def test_measure_in_process(folder, request):
    spec = {"kind": "router", "folder": str(request.getfixturevalue(folder))}
    result = bench.measure(spec, threads=1, texts=TEXTS, queries=30, warmup=3, batches=2)
    assert result["n"] == 30 and result["threads"] == 1
    assert_ordered(result)
    assert result["batch64"]["n_texts"] == 2 * bench.BATCH and result["batch64"]["texts_per_s"] > 0
    assert result["peak_rss_mb"] is None or result["peak_rss_mb"] >= result["rss_mb"] > 0


def test_measure_in_subprocess(onnx_folder, tmp_path):
    spec = {"kind": "router", "folder": str(onnx_folder)}
    result = bench.measure_in_subprocess(spec, 2, TEXTS, queries=10, warmup=2, batches=0, scratch=tmp_path)
    assert result["n"] == 10 and result["threads"] == 2 and "batch64" not in result
    assert_ordered(result)


LOADGENS = ["asyncio", pytest.param("wrk", marks=pytest.mark.skipif(not shutil.which("wrk"), reason="no wrk"))]


@pytest.mark.parametrize("loadgen", LOADGENS)
def test_http_bench(tfidf_folder, tmp_path, loadgen):
    http = bench.http_bench(tfidf_folder, TEXTS, [1, 4], requests=60, loadgen=loadgen, scratch=tmp_path, warmup=10)
    assert [r["concurrency"] for r in http["runs"]] == [1, 4]
    for run in http["runs"]:
        # wrk stops after 60 responses, but requests already in flight on other connections land too.
        assert 60 <= run["requests"] <= 60 + run["concurrency"] and run["completed"] >= 60 and run["errors"] == 0
        assert run["requests_per_s"] > 0
        assert_ordered(run)
    assert http["server_peak_rss_mb"] > 0 and loadgen in http["loadgen"]


def test_targets_and_figure(tmp_path, tfidf_folder):
    single = [{"backend": b, "threads": t, "p50_ms": 1.0 + t, "p95_ms": 2.0 + t, "p99_ms": 3.0 + t}
              for b in bench.BACKENDS for t in (1, 2)]
    runs = [{"concurrency": c, "p50_ms": c, "p99_ms": 2 * c, "errors": 0} for c in (1, 8, 32)]
    results = {"single_query": single, "http": {"runs": runs, "server_peak_rss_mb": 150.0}}
    targets = bench.check_targets(results)
    assert set(targets) == set(bench.TARGETS)
    assert targets["int8_p50_1thread_ms"] == {**targets["int8_p50_1thread_ms"], "value": 2.0, "pass": True}
    assert targets["http_p99_c8_ms"]["value"] == 16 and targets["http_p99_c8_ms"]["pass"] is False
    assert targets["http_errors"]["pass"] is True and targets["server_rss_mb"]["pass"] is True
    assert bench.check_targets({})["http_errors"]["pass"] is None
    path = bench.plot(results, tmp_path / "figures" / "bench.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.dumps(targets)  # the report is plain JSON
    assert bench.folder_size_mb(tfidf_folder) > 0


def test_help_and_missing_router(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        bench.main(["--help"])
    assert done.value.code == 0 and "--quick" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no shipped router"):
        bench.main(["--router", str(tmp_path), "--quick"])
