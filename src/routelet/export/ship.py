"""Pick the family that ships, turn it into the router folder, and gate it on parity.

    name, choice = choose_family(calibration, "auto", {name: trained.model for ...}, tie=0.002)
    info = build_router(trained, MODELS / name, calibration[name], taxonomy, options, staged, hashes)

`choose_family` ranks families by the score their abstain policy reached on the calibration split
(never the holdout), ties to the one without an encoder (the faster). `build_router` writes the
family's model files and router.json (routelet.serving.router_format), the one description of a
shipped model.
"""

from __future__ import annotations

import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from routelet.data.rows import sha256_file
from routelet.export.onnx import onnx_probs
from routelet.export.parity import check_parity, route_parity
from routelet.families import Trained
from routelet.families.base import ExportOptions, Family
from routelet.serving.preprocess import PREPROCESS_VERSION
from routelet.serving.router_format import FORMAT_VERSION, Policy, RouterInfo, TextInput, Tier, softmax
from routelet.serving.runtime import Router


def choose_family(calibration: dict, ship: str, families: dict[str, Family], tie: float = 0.0) -> tuple[str, dict]:
    """The family to ship and why: `ship` itself unless it is "auto". Auto: among the families whose
    policy met its target on the calibration split (all, if none did), those within `tie` of the
    best score; of those, one without an encoder if any (faster), then the best score."""
    scores = {name: calibration[name]["selection"] for name in families}
    if ship != "auto":
        return ship, {"rule": "export_onnx.ship", "scores": scores}
    pool = [n for n in families if scores[n]["meets_target"]] or list(families)
    best = max(scores[n]["score"] for n in pool)
    tied = [n for n in pool if scores[n]["score"] >= best - tie]
    winner = min(tied, key=lambda n: (families[n].uses_encoder, -scores[n]["score"]))
    others = sorted((scores[n]["score"] for n in families if n != winner), reverse=True)
    return winner, {"rule": "auto: best calibration-split score under the abstain policy, ties to the faster",
                    "score": scores[winner]["score"], "metric": scores[winner]["metric"],
                    "margin_over_next": round(scores[winner]["score"] - others[0], 6) if others else None,
                    "scores": scores}


def build_router(trained: Trained, folder: Path, calibration: dict, taxonomy, options: ExportOptions, out: Path,
                 hashes: dict[str, str], metrics: dict | None = None) -> RouterInfo:
    """Export `trained` (its trained folder is `folder`) into `out` and write router.json there."""
    model = trained.model
    exported = model.export(folder, out, calibration["temperature"], options)
    tier = Tier(family=trained.name, temperature=calibration["temperature"], **exported)
    view = trained.taxonomy_view(taxonomy)
    info = RouterInfo(
        format_version=FORMAT_VERSION,
        model_version=f"{trained.name}-{sha256_file(out / tier.files['model'])[:8]}",
        family=trained.name,
        labels=list(model.labels_),
        routes=view.routes,
        reject_route=view.reject,
        input=TextInput(tokenizer=tier.files.get("tokenizer"), max_length=model.max_length()),
        preprocess_version=PREPROCESS_VERSION,
        abstain=Policy(threshold=calibration["threshold"], margin=calibration["margin"],
                       chosen_on=calibration["chosen_on"]),
        tiers=[tier],
        hashes=hashes,
        metrics=metrics or {},
        exported_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    info.write(out)
    return info


def export_checked(trained: Trained, folder: Path, calibration: dict, taxonomy, options: ExportOptions, out: Path,
                   hashes: dict[str, str], texts: list[str], config: dict) -> tuple[RouterInfo, dict, np.ndarray]:
    """build_router, then the parity gate on `texts` (the holdout) through the runtime exactly as
    served: route agreement with the trained model at least `config["min_agreement"]`. For encoder
    families fp32 is checked too (`check_fp32`), to tell int8's loss from an export bug; with
    `fallback_fp32` an int8 router under the floor is replaced by the fp32 export, said in router.json.
    Returns (router.json, the gate per variant, the shipped fine-label probabilities)."""
    reference = trained_probs(trained, texts, calibration["temperature"])
    to_routes = trained.taxonomy_view(taxonomy).label_to_route_matrix(trained.model.labels_)
    info = build_router(trained, folder, calibration, taxonomy, options, out, hashes)
    shipped = Router.load(out).probs(texts)
    variant = options.int8 if info.tiers[0].kind == "onnx" else "numpy"
    gate = {variant: route_parity(reference, shipped, to_routes)}
    if variant not in ("numpy", "fp32") and (config["check_fp32"] or config["fallback_fp32"]):
        gate["fp32"] = route_parity(reference, fp32_probs(trained, folder, calibration["temperature"], texts), to_routes)
        if gate[variant]["agreement"] < config["min_agreement"] and config["fallback_fp32"]:
            shutil.rmtree(out)
            info = build_router(trained, folder, calibration, taxonomy, ExportOptions(int8="fp32"), out, hashes)
            info.tiers[0].quantization = {"int8": "fp32", "fallback_from": variant,
                                          "int8_agreement": gate[variant]["agreement"]}
            info.write(out)
            shipped, variant = Router.load(out).probs(texts), "fp32"
    check_parity(gate[variant], config["min_agreement"], what=f"{variant} router")
    return info, gate, shipped


def trained_probs(trained: Trained, texts: list[str], temperature: float) -> np.ndarray:
    """What the trained model gives, calibrated, over its own labels: the parity reference."""
    return softmax(trained.model.logits(texts), temperature)


def fp32_probs(trained: Trained, folder: Path, temperature: float, texts: list[str]) -> np.ndarray:
    """Export once more without quantisation, to tell int8's loss from an export bug."""
    with tempfile.TemporaryDirectory() as scratch:
        trained.model.export(folder, Path(scratch), temperature, ExportOptions(int8="fp32"))
        return onnx_probs(scratch, texts)
