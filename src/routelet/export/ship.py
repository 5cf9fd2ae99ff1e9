"""Turn a trained, calibrated family into the router folder that ships, and gate it on parity.

`build_router` writes the model files (int8 ONNX for encoder families, numpy arrays for TF-IDF)
and router.json, the one description of a shipped model; `parity_report` compares the exported
router with the trained model on the same texts.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from routelet.data.rows import sha256_file
from routelet.export.onnx import build_onnx_router, onnx_probs, parity
from routelet.export.tfidf import export_tfidf
from routelet.families import Trained
from routelet.families.models import softmax
from routelet.serving.preprocess import PREPROCESS_VERSION
from routelet.data.taxonomy import Taxonomy


def encoder_folder(trained: Trained, model_folder: Path) -> str:
    """Where the family's sentence encoder lives: the frozen one, or SetFit's fine-tuned body."""
    return str(model_folder / "body") if trained.model.family == "setfit" else trained.model.encoder.resolve()


def encoder_layers(trained: Trained) -> int | None:
    """The depth cut a frozen encoder is used at; SetFit saved its body already cut."""
    return None if trained.model.family == "setfit" else trained.model.encoder.layers


def max_length(trained: Trained) -> int:
    """Token truncation the model was trained with: SetFit fine-tunes at its own length."""
    if trained.model.family == "setfit":
        return trained.model.max_seq_length
    return trained.model.encoder.max_length


def export_model(trained: Trained, model_folder: Path, temperature: float, out: Path, keep_fp32: bool = False,
                 int8: str = "dynamic", calibration: list[str] | None = None, outlier_channels: int = 4) -> dict:
    """Write the model files into `out`; return router.json's `kind`, `files` and (encoder families)
    `quantization`. int8, calibration and outlier_channels go to build_onnx_router."""
    if trained.model.family == "tfidf":
        files = export_tfidf(trained.model.pipeline_, out, temperature, labels=trained.model.labels_,
                             coef_dtype="float32")
        return {"kind": "tfidf", "files": files}
    coef, intercept = trained.model.weights
    files = build_onnx_router(encoder_folder(trained, model_folder), coef, intercept, temperature, out,
                              max_length=max_length(trained), keep_fp32=keep_fp32, layers=encoder_layers(trained),
                              int8=int8, calibration=calibration, outlier_channels=outlier_channels)
    quantization = {"int8": int8, "outlier_channels": outlier_channels if calibration and int8 == "dynamic" else 0}
    return {"kind": "onnx", "files": files, "quantization": quantization}


def router_info(trained: Trained, taxonomy: Taxonomy, calibration: dict, exported: dict, hashes: dict,
                metrics: dict, out: Path) -> dict:
    view = trained.taxonomy_view(taxonomy)
    encoder = getattr(trained.model, "encoder", None)
    return {
        "format_version": 1,
        "kind": exported["kind"],
        "family": trained.name,
        "model_version": f"{trained.name}-{sha256_file(out / exported['files']['model'])[:8]}",
        "labels": list(trained.model.labels_),
        "routes": [route.model_dump() for route in view.routes],
        "reject_route": view.reject,
        "temperature": calibration["temperature"],
        "abstain": {"threshold": calibration["threshold"], "margin": calibration["margin"],
                    "chosen_on": calibration["chosen_on"]},
        "max_length": max_length(trained) if encoder is not None else None,
        "preprocess_version": PREPROCESS_VERSION,
        "encoder": None if encoder is None else {"name": encoder.name, "source": encoder.source,
                                                "fine_tuned": trained.model.family == "setfit"},
        "hashes": hashes,
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "metrics": metrics,
        "quantization": exported.get("quantization"),
        "files": exported["files"],
    }


def trained_probs(trained: Trained, texts: list[str], temperature: float) -> np.ndarray:
    """What the trained model gives, calibrated, over its own labels: the parity reference."""
    return softmax(trained.model.logits(texts), temperature)


def fp32_probs(trained: Trained, model_folder: Path, temperature: float, texts: list[str]) -> np.ndarray:
    """Export once more without quantisation, to tell int8's loss from an export bug."""
    with tempfile.TemporaryDirectory() as scratch:
        coef, intercept = trained.model.weights
        build_onnx_router(encoder_folder(trained, model_folder), coef, intercept, temperature, scratch,
                          max_length=max_length(trained), quantize=False, layers=encoder_layers(trained))
        return onnx_probs(scratch, texts)


def replace_folder(staged: Path, target: Path) -> None:
    """Swap the finished router in only after it passed: a failed export never leaves half a folder."""
    if target.exists():
        shutil.rmtree(target)
    shutil.move(str(staged), str(target))


def route_parity(reference: np.ndarray, candidate: np.ndarray, to_routes: np.ndarray) -> dict:
    """Parity of the routes (fine probabilities summed per route), with fine-label agreement beside."""
    report = parity(reference @ to_routes, candidate @ to_routes)
    report["label_agreement"] = parity(reference, candidate)["agreement"]
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in report.items()}
