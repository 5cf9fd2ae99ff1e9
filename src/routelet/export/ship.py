"""Pick the families that ship, turn them into the router folder, and gate it on parity.

    name, choice = choose_family(calibration, "auto", {name: trained_class(name) for ...}, tie=0.002)
    names = resolve_tiers(params["export_onnx"]["tiers"], name, list(calibration))   # ["tfidf", "setfit"]
    info, gate, probs = export_router([load_trained(n) for n in names], MODELS, calibration, taxonomy,
                                      options, staged, hashes, holdout_texts, (calib_texts, calib_y), config)

`choose_family` ranks families by the score their abstain policy reached on the calibration split
(never the holdout), ties to the one without an encoder (the faster). `build_router` writes one
family's model files and router.json (routelet.serving.router_format), the one description of a
shipped model. With several tiers each is exported and gated into its own subfolder, then
`routelet.export.tiers.assemble_tiers` chooses the fast tiers' accept thresholds on the calibration
split and writes the folder's router.json; the gate then checks the tiered router's routes and
decisions against the trained model of the tier that answered each row.
"""

from __future__ import annotations

import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from routelet.data.rows import sha256_file
from routelet.export.image_onnx import ServedEmbeddings
from routelet.export.onnx import onnx_probs
from routelet.export.parity import check_parity, route_parity
from routelet.export.tiers import assemble_tiers, pick
from routelet.families import Trained
from routelet.families.base import ExportOptions, Family
from routelet.params import ConfigError
from routelet.serving.preprocess import PREPROCESS_VERSION
from routelet.serving.image_input import open_image
from routelet.serving.image_models import load_image_tier
from routelet.serving.router_format import FORMAT_VERSION, Policy, RouterInfo, TextInput, Tier, softmax
from routelet.serving.runtime import Router

IMAGE_BATCH = 64  # images decoded at once when an image router is checked


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


def resolve_tiers(setting, ship: str, trained: list[str]) -> list[str]:
    """The families of the router folder in answering order: "auto" (or absent) is the shipped family
    alone; a list names trained families, the last answering what the others leave."""
    if setting in (None, "auto"):
        return [ship]
    where = "params.yaml export_onnx.tiers"
    if not isinstance(setting, list) or not setting or not all(isinstance(name, str) for name in setting):
        raise ConfigError(f"{where} is {setting!r}: use auto, or a list of trained families such as [tfidf, setfit]")
    for name in setting:
        if name not in trained:
            raise ConfigError(f"{where}: {name!r} is not a trained family; choose from: {', '.join(trained)}")
    if len(set(setting)) != len(setting):
        raise ConfigError(f"{where}: {setting} names a family twice; each tier is a different family")
    return list(setting)


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
        input=(model.input_spec() if model.modality == "image"
               else TextInput(tokenizer=tier.files.get("tokenizer"), max_length=model.max_length())),
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
                   hashes: dict[str, str], texts: list[str], config: dict,
                   reference: np.ndarray | None = None) -> tuple[RouterInfo, dict, np.ndarray]:
    """build_router, then the parity gate on `texts` (the holdout) through the runtime exactly as
    served: route agreement with the trained model at least `config["min_agreement"]`. For encoder
    families fp32 is checked too (`check_fp32`), to tell int8's loss from an export bug; with
    `fallback_fp32` an int8 router under the floor is replaced by the fp32 export, said in router.json.
    `reference` is trained_probs on `texts` when the caller has it already.
    Returns (router.json, the gate per variant, the shipped fine-label probabilities)."""
    if reference is None:
        reference = trained_probs(trained, texts, calibration["temperature"])
    to_routes = trained.taxonomy_view(taxonomy).label_to_route_matrix(trained.model.labels_)
    info = build_router(trained, folder, calibration, taxonomy, options, out, hashes)
    shipped = served_probs(out, texts)
    kind = info.tiers[0].kind  # an image encoder's export chose int8 or fp32 itself, said in its quantization
    variant = options.int8 if kind == "onnx" else (info.tiers[0].quantization or {}).get("int8", "numpy")
    gate = {variant: route_parity(reference, shipped, to_routes)}
    if kind == "onnx" and variant != "fp32" and (config["check_fp32"] or config["fallback_fp32"]):
        gate["fp32"] = route_parity(reference, fp32_probs(trained, folder, calibration["temperature"], texts), to_routes)
        if gate[variant]["agreement"] < config["min_agreement"] and config["fallback_fp32"]:
            shutil.rmtree(out)
            info = build_router(trained, folder, calibration, taxonomy, ExportOptions(int8="fp32"), out, hashes)
            info.tiers[0].quantization = {"int8": "fp32", "fallback_from": variant,
                                          "int8_agreement": gate[variant]["agreement"]}
            info.write(out)
            shipped, variant = served_probs(out, texts), "fp32"
    check_parity(gate[variant], config["min_agreement"], what=f"{variant} router")
    return info, gate, shipped


def export_router(tiers: list[Trained], models: Path, calibration: dict, taxonomy, options: ExportOptions, out: Path,
                  hashes: dict[str, str], texts: list[str], calib: tuple[list[str], np.ndarray],
                  config: dict) -> tuple[RouterInfo, dict, np.ndarray]:
    """The router folder `out` from `tiers` (trained families in answering order, each in
    models/<name>): one tier is export_checked into `out` itself; several are each export_checked
    into out/<name>, assembled (accepts chosen on `calib`: texts and route ids) and gated as a whole.
    Returns (router.json, the gate: per tier its variants, and "tiered" with "selection" for
    several, the shipped fine-label probabilities on `texts`)."""
    if len(tiers) == 1:
        [trained] = tiers
        info, gate, shipped = export_checked(trained, models / trained.name, calibration[trained.name], taxonomy,
                                             options, out, hashes, texts, config)
        return info, {"tiers": {trained.name: gate}}, shipped
    references, gates = {}, {}
    for trained in tiers:
        references[trained.name] = trained_probs(trained, texts, calibration[trained.name]["temperature"])
        gates[trained.name] = export_checked(trained, models / trained.name, calibration[trained.name], taxonomy,
                                             options, out / trained.name, hashes, texts, config,
                                             references[trained.name])[1]
    info, selection = assemble_tiers(out, [trained.name for trained in tiers], *calib,
                                     oos_tolerance=config.get("tier_oos_tolerance", 0.0))
    shipped, by = Router.load(out).decide(texts)
    gate = {"tiers": gates, "selection": selection,
            "tiered": tiered_parity(info, [references[tier.family] for tier in info.tiers], shipped, by)}
    check_parity(gate["tiered"], config["min_agreement"], what="tiered router")
    return info, gate, shipped


def image_router(out: Path, threads: int = 1, cached: bool = False):
    """An exported image router (one tier) as served, torch-free: image paths -> fine-label probabilities.
    `cached` (the parity gate): an encoder tier's embeddings come from ServedEmbeddings, so only
    images this very graph has not embedded run through ONNX Runtime; the head runs every time.
    Leave it off wherever the time is measured (report's latency): a cached image costs nothing."""
    info = RouterInfo.read(out)
    tier = info.tiers[0]
    model = load_image_tier(out, info, tier, threads=threads)
    if cached and tier.kind == "image_onnx":
        embeddings = ServedEmbeddings(model, out / tier.files["model"], info.input, threads)

        def predict_cached(paths: list[str]) -> np.ndarray:
            if not paths:
                return np.zeros((0, len(info.labels)))
            return model.head.probs(embeddings.embed(paths, IMAGE_BATCH))

        return predict_cached

    def predict(paths: list[str]) -> np.ndarray:
        batches = [model([open_image(Path(path).read_bytes(), info.input) for path in paths[start:start + IMAGE_BATCH]])
                   for start in range(0, len(paths), IMAGE_BATCH)]
        return np.concatenate(batches) if batches else np.zeros((0, len(info.labels)))

    return predict


def served_probs(out: Path, inputs: list[str]) -> np.ndarray:
    """The exported router's fine-label probabilities as served, for the parity gate: a text router
    through the runtime, an image router through its image tier on the decoded files (its encoder's
    embeddings cached by graph and image: image_router `cached`)."""
    if RouterInfo.read(out).input.modality == "image":
        return image_router(out, cached=True)(inputs)
    return Router.load(out).probs(inputs)


def tiered_parity(info: RouterInfo, references: list[np.ndarray], shipped: np.ndarray, by: np.ndarray) -> dict:
    """The shipped tiered router against the trained model of the tier that answered each row
    (`references` per tier, `by` from the runtime): route agreement (the gate) and agreement of the
    decisions after the abstain policy, with the share of rows each tier answered."""
    to_routes, reject = info.route_matrix(), info.reject_index
    expected = pick(references, by)
    report = route_parity(expected, shipped, to_routes)
    decided = [info.abstain.decide(probs @ to_routes, reject) for probs in (expected, shipped)]
    report["decision_agreement"] = round(float((decided[0] == decided[1]).mean()), 6) if len(by) else 1.0
    report["answered_share"] = {tier.family: round(float((by == index).mean()), 4) if len(by) else 0.0
                                for index, tier in enumerate(info.tiers)}
    return report


def trained_probs(trained: Trained, texts: list[str], temperature: float) -> np.ndarray:
    """What the trained model gives, calibrated, over its own labels: the parity reference."""
    return softmax(trained.model.logits(texts), temperature)


def fp32_probs(trained: Trained, folder: Path, temperature: float, texts: list[str]) -> np.ndarray:
    """Export once more without quantisation, to tell int8's loss from an export bug."""
    with tempfile.TemporaryDirectory() as scratch:
        trained.model.export(folder, Path(scratch), temperature, ExportOptions(int8="fp32"))
        return onnx_probs(scratch, texts)
