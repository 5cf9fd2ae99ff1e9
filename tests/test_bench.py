"""The bench scripts on tiny routers and tiny trained families, with --quick-sized counts: result
structure, counts, zero errors, ordered percentiles, the ratio block, and the torch path running the
family's own (fine-tuned) model. Wall-clock values are never asserted."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from routers import ROUTES, onnx_folder, synthetic_dataset, tfidf_folder  # noqa: F401  (fixtures)
from tiny_encoder import build_tiny_encoder

from routelet.data.taxonomy import Taxonomy
from routelet.export.ship import build_router
from routelet.families import load_trained, save_trained
from routelet.families.base import ExportOptions
from routelet.families.encoders import EncoderSpec
from routelet.families.setfit import SetfitFamily
from routelet.families.tfidf import TfidfFamily
from routelet.serving.router_format import softmax
from routelet.serving.runtime import Router
from scripts import bench, bench_measure, bench_ratios
from scripts.bench_plot import plot
from scripts.bench_routers import Backends, semantic_router_missing
from scripts.loadgen import http_bench

TEXTS = ["what is my account balance", "book a flight from the airport", "tell me a joke", "send money to payee",
         "wire funds to my savings", "boarding pass airline"]
TAXONOMY = Taxonomy.model_validate({"routes": ROUTES, "reject": "oos"})


def assert_ordered(stats: dict) -> None:
    assert stats["p50_ms"] <= stats["p95_ms"] <= stats["p99_ms"] <= stats["max_ms"]
    assert stats["p50_ms"] > 0


def write_jsonl(path, texts, labels):
    path.write_text("".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in zip(texts, labels)))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """What `dvc repro` leaves for the bench, in miniature: prepared splits, trained tfidf and SetFit (on
    a tiny random encoder, a few contrastive steps so its body differs from the base), calibration,
    and a one-tier SetFit router (fp32: the tiny graph is not what int8 is tuned for)."""
    root = tmp_path_factory.mktemp("bench")
    monkey = pytest.MonkeyPatch()
    monkey.setenv("ROUTELET_CACHE", str(root / "cache"))
    prepared = root / "prepared"
    prepared.mkdir()
    TAXONOMY.save(prepared / "taxonomy.json")
    for split, (n, seed) in {"train": (30, 0), "calib": (12, 2), "test": (10, 1)}.items():
        write_jsonl(prepared / f"{split}.jsonl", *synthetic_dataset(n_per_label=n, seed=seed))
    texts, labels = synthetic_dataset(n_per_label=30, seed=0)
    encoder = EncoderSpec("tiny", str(build_tiny_encoder(root / "enc")), max_length=16)
    families = {"tfidf": TfidfFamily(char_ngrams=(2, 4)),
                "setfit": SetfitFamily(encoder, max_steps=6, batch_size=4, learning_rate=0.01, max_seq_length=16,
                                       train_layers=None, precision="fp32", progress=False)}
    calibration = {}
    for name, family in families.items():
        save_trained(name, family.fit(texts, labels), "fine", root / "models" / name)
        calibration[name] = {"temperature": 1.3, "threshold": 0.4, "margin": 0.0, "chosen_on": "test rows"}
    (root / "calibration.json").write_text(json.dumps(calibration))
    trained = load_trained("setfit", root / "models" / "setfit")
    build_router(trained, root / "models" / "setfit", calibration["setfit"], TAXONOMY, ExportOptions(int8="fp32"),
                 root / "router", hashes={})
    yield root
    monkey.undo()


def backends(workspace, tmp_path) -> Backends:
    return Backends(workspace / "router", workspace / "models", workspace / "prepared",
                    json.loads((workspace / "calibration.json").read_text()), tmp_path, utterances_per_route=5)


def test_percentiles():
    stats = bench_measure.percentiles([float(x) for x in range(1, 101)])
    assert stats["n"] == 100 and stats["p50_ms"] == 50.5 and stats["max_ms"] == 100.0
    assert_ordered(stats)
    assert bench_measure.percentiles([])["p50_ms"] is None


def test_host_probe_is_a_duration():
    probe = bench_measure.host_probe_ms(repeats=5)
    assert isinstance(probe, float) and probe > 0


@pytest.mark.parametrize("folder", ["tfidf_folder", "onnx_folder"])
def test_measure_in_process(folder, request):
    spec = {"kind": "router", "folder": str(request.getfixturevalue(folder))}
    result = bench_measure.measure(spec, threads=1, texts=TEXTS, queries=30, warmup=3, batches=2)
    assert result["n"] == 30 and result["threads"] == 1 and result["cpu_ms_per_query"] >= 0
    assert result["routes_per_s"] == pytest.approx(1e3 / result["mean_ms"], rel=1e-2)
    assert_ordered(result)
    assert result["batch64"]["n_texts"] == 2 * bench_measure.BATCH and result["batch64"]["texts_per_s"] > 0
    assert result["peak_rss_mb"] is None or result["peak_rss_mb"] >= result["rss_mb"] > 0


def test_measure_in_subprocess(onnx_folder, tmp_path):
    spec = {"kind": "router", "folder": str(onnx_folder)}
    result = bench_measure.measure_in_subprocess(spec, 2, TEXTS, queries=10, warmup=2, batches=0, scratch=tmp_path)
    assert result["n"] == 10 and result["threads"] == 2 and "batch64" not in result
    assert_ordered(result)
    with pytest.raises(RuntimeError, match="bench worker for nonsense at 1 thread"):
        bench_measure.measure_in_subprocess({"kind": "nonsense"}, 1, TEXTS, 1, 0, 0, tmp_path)


def test_torch_path_runs_the_fine_tuned_family(workspace, tmp_path):
    """torch-fp32 is the trained SetFit (its fine-tuned body and head), as the exported router serves it."""
    spec = backends(workspace, tmp_path).spec("torch-fp32")
    assert spec == {"kind": "torch", "name": "setfit", "folder": str(workspace / "models" / "setfit"),
                    "temperature": 1.3}
    probs = bench_measure.load_backend(spec, threads=1)(TEXTS)
    np.testing.assert_allclose(probs, Router.load(workspace / "router").probs(TEXTS), atol=1e-4)
    model = load_trained("setfit", workspace / "models" / "setfit").model
    base = model.head_.logits(model._cache().encoder.encode(TEXTS, convert_to_numpy=True))  # the base encoder
    assert np.abs(softmax(base, 1.3) - probs).max() > 1e-3, "the torch path must not run the base encoder"


def test_backends_build_each_router(workspace, tmp_path):
    built = backends(workspace, tmp_path)
    assert built.spec("onnx-int8") == {"kind": "router", "folder": str(workspace / "router")}
    for backend in ("onnx-fp32", "tfidf"):
        folder = built.spec(backend)["folder"]
        assert Router.load(folder).tier_names == (["tfidf"] if backend == "tfidf" else ["setfit"])
    tiered = Router.load(built.spec("tiered")["folder"])
    assert tiered.tier_names == ["tfidf", "setfit"] and tiered.info.tiers[0].accept is not None
    assert {r["tier"] for r in tiered.route(TEXTS)} <= {"tfidf", "setfit"}
    utterances = built.utterances()
    assert set(utterances) == {"banking", "travel"} and all(len(u) == 5 for u in utterances.values())
    assert built.base_encoder == str(workspace / "enc" / "encoder")


def test_backends_refuse_a_family_without_an_encoder(workspace, tmp_path):
    with pytest.raises(SystemExit, match="--family 'tfidf' has no encoder"):
        Backends(workspace / "router", workspace / "models", workspace / "prepared",
                 json.loads((workspace / "calibration.json").read_text()), tmp_path, family="tfidf")
    with pytest.raises(SystemExit, match="no trained, calibrated family 'bert'"):
        Backends(workspace / "router", workspace / "models", workspace / "prepared",
                 json.loads((workspace / "calibration.json").read_text()), tmp_path, fast="bert")


@pytest.mark.skipif(semantic_router_missing() is not None, reason="semantic-router is not installed")
def test_semantic_router_peer_runs_offline_on_the_same_encoder(workspace, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = backends(workspace, tmp_path).spec("semantic-router")
    assert spec["kind"] == "semantic-router" and spec["encoder"] == str(workspace / "enc" / "encoder")
    choices = bench_measure.load_backend(spec, threads=1)(TEXTS[:2])
    assert len(choices) == 2 and all(c.name in (None, "banking", "travel") for c in choices)


LOADGENS = ["asyncio", pytest.param("wrk", marks=pytest.mark.skipif(not shutil.which("wrk"), reason="no wrk"))]


@pytest.mark.parametrize("loadgen", LOADGENS)
def test_http_bench(tfidf_folder, tmp_path, loadgen):
    http = http_bench(tfidf_folder, TEXTS, [1, 4], requests=60, loadgen=loadgen, scratch=tmp_path, warmup=10)
    assert [r["concurrency"] for r in http["runs"]] == [1, 4]
    for run in http["runs"]:
        # wrk stops after 60 responses, but requests already in flight on other connections land too.
        assert 60 <= run["requests"] <= 60 + run["concurrency"] and run["completed"] >= 60 and run["errors"] == 0
        assert run["requests_per_s"] > 0 and run["server_cpu_ms_per_request"] > 0
        assert_ordered(run)
    assert http["server_peak_rss_mb"] > 0 and loadgen in http["loadgen"]


def synthetic_results() -> dict:
    single = [{"backend": b, "threads": 1, "p50_ms": p50, "p95_ms": p50 * 2, "p99_ms": p50 * 3, "mean_ms": p50,
               "cpu_ms_per_query": p50, "routes_per_s": 1e3 / p50}
              for b, p50 in (("tiered", 1.0), ("onnx-int8", 5.0), ("torch-fp32", 30.0), ("tfidf", 0.3))]
    runs = [{"concurrency": 1, "p50_ms": 1.8, "p99_ms": 3.0, "errors": 0, "server_cpu_ms_per_request": 1.2},
            {"concurrency": 32, "p50_ms": 30.0, "p99_ms": 60.0, "errors": 0, "requests": 10_000,
             "requests_per_s": 900.0}]
    return {"single_query": single, "http": {"backend": "tiered", "runs": runs, "server_peak_rss_mb": 150.0},
            "meta": {"host_probe_ms_start": 0.10, "host_probe_ms_end": 0.11, "loadavg_start": [0.5, 0.5, 0.5]}}


def test_ratios_say_each_target_met_missed_or_missing():
    ratios = bench_ratios.ratios(synthetic_results())
    assert set(ratios) == set(bench_ratios.TARGETS)
    assert ratios["tiered_over_encoder_int8_p50"] | {"inputs": None} == {
        "what": bench_ratios.TARGETS["tiered_over_encoder_int8_p50"][0], "value": 0.2, "target": "<= 0.25",
        "met": True, "inputs": None}
    assert ratios["tiered_over_torch_p50"]["value"] == pytest.approx(0.0333, abs=1e-4)
    assert ratios["tiered_over_semantic_router_p50"]["met"] is None and "missing" in ratios["tiered_over_semantic_router_p50"]
    assert ratios["http_c1_minus_in_process_p50_ms"]["value"] == pytest.approx(0.8)
    assert ratios["server_cpu_over_in_process_cpu"] == {**ratios["server_cpu_over_in_process_cpu"], "value": 1.2,
                                                        "met": True}
    assert ratios["http_c32_p99_over_p50"]["value"] == 2.0 and ratios["http_c32_errors"]["met"] is True
    assert ratios["http_c32_rps_over_in_process"]["value"] == 0.9 and ratios["http_c32_rps_over_in_process"]["met"]
    assert ratios["host_probe_drift"]["value"] == 1.1 and ratios["server_peak_rss_mb"]["met"] is True
    slow = synthetic_results()
    slow["http"]["runs"][1] |= {"p99_ms": 300.0, "errors": 2}
    missed = bench_ratios.ratios(slow)
    assert missed["http_c32_p99_over_p50"]["met"] is False and missed["http_c32_errors"]["met"] is False
    assert all(entry["met"] is None for entry in bench_ratios.ratios({}).values())
    json.dumps(ratios)  # the report is plain JSON


def test_figure(tmp_path):
    path = plot(synthetic_results(), tmp_path / "figures" / "bench.png", ("tiered", "onnx-int8"))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_hooks_run_when_their_module_exists(tmp_path, monkeypatch):
    (tmp_path / "fake_hook.py").write_text("def measure(router, quick, size=0):\n"
                                          "    return {'router': str(router), 'quick': quick, 'size': size}\n")
    (tmp_path / "broken_hook.py").write_text("def measure():\n    raise OSError('disk gone')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(bench, "HOOKS", {"fake": ("fake_hook", {}, {"size": 7, "requests": 3}),
                                         "broken": ("broken_hook", {}, {}),
                                         "absent": ("no_such_bench_module", {}, {})})
    out = bench.run_hooks(tmp_path / "router", TEXTS, quick=True)
    assert out["fake"] == {"router": str(tmp_path / "router"), "quick": True, "size": 7}
    assert out["broken"] == {"error": "OSError: disk gone"}
    assert out["absent"] == {"skipped": "no_such_bench_module is not in this checkout"}


def test_help_and_missing_inputs(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        bench.main(["--help"])
    assert done.value.code == 0 and "--quick" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no shipped router"):
        bench.main(["--router", str(tmp_path), "--quick"])
    (tmp_path / "router.json").write_text("{}")
    with pytest.raises(SystemExit, match="no calibration"):
        bench.main(["--router", str(tmp_path), "--calibration", str(tmp_path / "none.json"), "--quick"])


@pytest.mark.slow
def test_quick_run_end_to_end(workspace, tmp_path):
    out, figure = tmp_path / "bench.json", tmp_path / "bench.png"
    code = bench.main(["--router", str(workspace / "router"), "--models", str(workspace / "models"),
                       "--prepared", str(workspace / "prepared"), "--calibration", str(workspace / "calibration.json"),
                       "--out", str(out), "--figure", str(figure), "--quick", "--threads", "1",
                       "--concurrency", "1", "32", "--requests", "100", "--loadgen", "asyncio", "--utterances", "5",
                       "--screens", str(tmp_path / "no_screens")])
    assert code == 0 and figure.stat().st_size > 1000
    results = json.loads(out.read_text())
    measured = {r["backend"] for r in results["single_query"]}
    assert measured | set(results["skipped"]) == set(bench.BACKENDS)
    assert results["http"]["backend"] == "tiered" and [r["concurrency"] for r in results["http"]["runs"]] == [1, 32]
    assert all(r["errors"] == 0 for r in results["http"]["runs"])
    assert set(results["ratios"]) == set(bench_ratios.TARGETS)
    assert results["ratios"]["tiered_over_encoder_int8_p50"]["value"] > 0
    assert results["ratios"]["http_c32_errors"]["value"] == 0
    assert results["meta"]["family"] == "setfit" and results["meta"]["host_probe_ms_end"] > 0
    assert "redaction" in results["extra"] and "heavy_batch_rss" in results["extra"]["serve_stress"]
    assert "make screens" in results["images"]["skipped"]["all"]  # the image rows: tests/test_bench_images.py
