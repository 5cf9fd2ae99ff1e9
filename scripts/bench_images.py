"""The image routers in the bench: the weight-free baseline (pixels) and the default encoder
(EfficientNet-Lite0 + LR) trained on an image dataset (data/screens), exported, and timed through
the torch-free runtime like the text routers: Router.route on each image file's bytes (decode +
preprocess + model), 1 thread, each router in a fresh process (scripts/bench_measure.py).

    python -m scripts.bench_images                    # prints the `images` block of report/bench.json
    python -m scripts.bench_images --quick            # smoke run: small counts

Routers (settings from params.yaml: train.pixels, train.image_embed, encoders.effnet-lite0):
  pixels               the pixels family as the export ships it
  effnet-lite0-fp32    image_embed as the export ships it: a convnet's encoder stays fp32 (export/image_onnx.py)
  effnet-lite0-int8    the same router with its encoder graph quantised by onnxruntime's dynamic int8
                       (convolutions included): what the export refuses, measured beside what it ships
The routers are built once per key (the dataset's bytes, the routelet package's code, this script,
the params entries, torch and onnxruntime versions) under <cache>/bench_images/<key>/ and reused by
later runs; the embedding cache makes a rebuild after a code change cost the head, not the encoder
(measured on data/screens, 2-vCPU host: about 25 s added to the bench with the routers cached, 60 s
after a code change). Progress goes to stderr; the JSON to stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
import tempfile
import time
from contextlib import nullcontext
from importlib.metadata import version
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

import routelet
from scripts.bench_measure import measure_in_subprocess

ENCODER = "effnet-lite0"
BATCH = 16
FULL = {"queries": 60, "warmup": 5, "batches": 6}
QUICK = {"queries": 8, "warmup": 2, "batches": 1}
WHAT = {"pixels": "the weight-free baseline (pixels family: thumbnail, colour and gradient histograms + LR), as exported",
        f"{ENCODER}-fp32": "EfficientNet-Lite0 + LR as the export ships it (fp32 encoder graph, the head in numpy)",
        f"{ENCODER}-int8": "the same router, its encoder graph quantised by onnxruntime quantize_dynamic (QInt8, "
                           "every op it quantises, convolutions included): the int8 the export refuses for convnets"}


def dataset_missing(screens: Path) -> str | None:
    """Why the image rows cannot run on this folder, or None."""
    missing = [name for name in ("train.jsonl", "valid.jsonl", "test.jsonl") if not (screens / name).is_file()]
    if missing:
        return (f"{screens}: no {', '.join(missing)}: run `make screens` (or `dvc pull data/screens.dvc`) for the "
                "image rows")
    return None


def build_key(screens: Path, params: dict) -> str:
    """A digest of what the built routers depend on: dataset bytes, code, settings, runtime versions."""
    digest = hashlib.sha256()
    package = Path(routelet.__file__).parent
    for root, paths in ((screens, screens.rglob("*")), (package, package.rglob("*.py"))):
        for path in sorted(p for p in paths if p.is_file()):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    for path in (Path(__file__), Path(__file__).with_name("image_eval.py")):
        digest.update(path.read_bytes())
    settings = [params["train"]["pixels"], params["train"]["image_embed"], params["encoders"][ENCODER]]
    digest.update(json.dumps([settings, version("onnxruntime"), version("torch")], sort_keys=True).encode())
    return digest.hexdigest()[:16]


def quantize_encoder(fp32: Path, out: Path) -> Path:
    """A copy of an image_onnx router folder whose encoder graph is dynamic int8."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from routelet.serving.router_format import RouterInfo

    shutil.copytree(fp32, out)
    info = RouterInfo.read(out)
    tier = info.tiers[0]
    source = out / tier.files["model"]
    target = out / "encoder-int8.onnx"
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its shape-inference warnings, one per padded convolution, would flood the bench
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    source.unlink()
    tier.files = {**tier.files, "model": target.name}
    tier.quantization = {"int8": "dynamic", "ops": "all that quantize_dynamic quantises (Conv included)",
                         "note": "built by the bench for comparison; the export ships fp32 for convnets"}
    info.model_version += "-int8"
    info.write(out)
    return out


def route_ids(folder: Path, images: list[str]) -> np.ndarray:
    """The exported router's route per image, through the runtime's image tier (batches of BATCH)."""
    from routelet.serving.image_input import open_image
    from routelet.serving.image_models import load_image_tier
    from routelet.serving.router_format import RouterInfo

    info = RouterInfo.read(folder)
    model = load_image_tier(folder, info, info.tiers[0], threads=1)
    probs = [model([open_image(p, info.input) for p in images[i:i + BATCH]]) for i in range(0, len(images), BATCH)]
    return (np.concatenate(probs) @ info.route_matrix()).argmax(axis=1)


def build(screens: Path, out: Path, params: dict) -> dict:
    """Train, calibrate (temperature on the valid split) and export the routers into `out`; return
    per router its route accuracy on the test split (through the runtime) and what was skipped."""
    from routelet.data.taxonomy import Taxonomy
    from routelet.families import build_family
    from routelet.families.encoders import EncoderSpec, EncoderUnavailable
    from scripts.image_eval import evaluate, export, split

    taxonomy = Taxonomy.load(screens / "taxonomy.yaml")
    data = {name: split(screens, name, taxonomy) for name in ("train", "valid", "test")}
    truth = np.array([taxonomy.route_names.index(taxonomy.route_of(label)) for label in data["test"][1]])
    encoder = EncoderSpec.from_registry(ENCODER, params["encoders"])
    built, skipped, accuracy = {}, {}, {}
    for name, router in (("pixels", "pixels"), ("image_embed", f"{ENCODER}-fp32")):
        start = time.perf_counter()
        try:
            family, _ = build_family(name, params["train"][name], params["seed"], encoder)
            family.fit(*data["train"])
        except (EncoderUnavailable, ImportError) as error:
            skipped[router] = str(error)
            continue
        _, temperature = evaluate(family, data, taxonomy)
        built[router] = export(family, name, temperature, taxonomy, data["valid"][0], out / router)
        print(f"bench: images: {router} trained and exported in {time.perf_counter() - start:.0f} s", file=sys.stderr,
              flush=True)
    if f"{ENCODER}-fp32" in built:
        built[f"{ENCODER}-int8"] = quantize_encoder(built[f"{ENCODER}-fp32"], out / f"{ENCODER}-int8")
    else:
        skipped[f"{ENCODER}-int8"] = f"no fp32 router to quantise: {skipped[f'{ENCODER}-fp32']}"
    routes = {router: route_ids(folder, data["test"][0]) for router, folder in built.items()}
    for router in built:
        accuracy[router] = {"route_accuracy": round(float((routes[router] == truth).mean()), 4)}
    if f"{ENCODER}-int8" in routes:
        agreement = (routes[f"{ENCODER}-int8"] == routes[f"{ENCODER}-fp32"]).mean()
        accuracy[f"{ENCODER}-int8"]["route_agreement_with_fp32"] = round(float(agreement), 4)
    return {"routers": accuracy, "skipped": skipped, "test_images": len(truth)}


def cached_build(screens: Path, cache: Path, params: dict) -> tuple[Path, dict]:
    """The built routers for this key: reused when present, else built (older keys are removed)."""
    key = build_key(screens, params)
    folder = cache / key
    if (folder / "built.json").is_file():
        return folder, {**json.loads((folder / "built.json").read_text()), "key": key, "cached": True}
    start = time.perf_counter()
    cache.mkdir(parents=True, exist_ok=True)
    for stale in cache.iterdir():
        shutil.rmtree(stale)
    staging = cache / f"{key}.tmp"
    with threadpool_limits(1, user_api="blas"):  # small LR fits: OpenBLAS threads cost more than they save
        built = build(screens, staging, params)
    (staging / "built.json").write_text(json.dumps(built, indent=2) + "\n")
    staging.rename(folder)  # a killed build leaves only a .tmp folder, removed by the next one
    return folder, {**built, "key": key, "cached": False, "build_s": round(time.perf_counter() - start, 1)}


def measure(screens: str | Path = "data/screens", scratch: Path | None = None, quick: bool = False,
            params: dict | None = None, cache: Path | None = None) -> dict:
    """The `images` block of report/bench.json (see the module docstring), or why it was skipped."""
    from routelet.data.taxonomy import Taxonomy
    from routelet.families.encoders import CACHE_ROOT
    from routelet.params import load_params
    from scripts.bench import folder_size_mb
    from scripts.image_eval import split

    screens = Path(screens)
    if why := dataset_missing(screens):
        return {"skipped": {"all": why}}
    params = params or load_params()
    folder, built = cached_build(screens, Path(cache or CACHE_ROOT / "bench_images"), params)
    counts = QUICK if quick else FULL
    images = split(screens, "test", Taxonomy.load(screens / "taxonomy.yaml"))[0]
    routers = {}
    with tempfile.TemporaryDirectory(prefix="routelet-bench-images-") if scratch is None else nullcontext(scratch) as work:
        for name, scores in built["routers"].items():
            spec = {"kind": "router", "folder": str(folder / name), "inputs": "image files"}
            r = measure_in_subprocess(spec, 1, images, counts["queries"], counts["warmup"], counts["batches"],
                                      Path(work), batch=BATCH)
            batch = r.pop(f"batch{BATCH}")
            info = json.loads((folder / name / "router.json").read_text())
            routers[name] = {"what": WHAT[name], "p50_ms_batch1": r["p50_ms"],
                             "images_per_s_batch16": batch["texts_per_s"], **scores,
                             "quantization": info["tiers"][0]["quantization"], "size_mb": folder_size_mb(folder / name),
                             "batch1": {k: r[k] for k in ("n", "p50_ms", "p95_ms", "p99_ms", "mean_ms", "max_ms")}
                             | {"cpu_ms_per_image": r["cpu_ms_per_query"]},
                             "batch16": {"images": batch["n_texts"], "seconds": batch["seconds"]},
                             "load_s": r["load_s"], "peak_rss_mb": r["peak_rss_mb"]}
            print(f"  image {name:<20} 1 thread: p50 {r['p50_ms']:.2f} ms at batch 1, "
                  f"{batch['texts_per_s']:,.1f} images/s at batch {BATCH}, route accuracy {scores['route_accuracy']}",
                  file=sys.stderr, flush=True)
    return {"what": "image routers trained on the dataset's train split, calibrated on valid, exported, then timed "
                    "through the torch-free runtime: Router.route on each test image's bytes (read before timing), "
                    "1 thread, one router per fresh process; p50 of single-image calls, images/s of 16-image calls",
            "data": str(screens), "test_images": built["test_images"], "threads": 1, **counts, "batch": BATCH,
            "build": {k: built[k] for k in ("key", "cached", "build_s") if k in built} | {"folder": str(folder)},
            "routers": routers, "ratios": ratios(routers), "skipped": built["skipped"]}


def ratios(routers: dict) -> dict:
    """p50 ratios between the image routers measured in this run (None where one is missing)."""
    def p50(name: str) -> float | None:
        return routers.get(name, {}).get("p50_ms_batch1")

    def ratio(a: str, b: str) -> float | None:
        return None if p50(a) is None or not p50(b) else round(p50(a) / p50(b), 4)

    return {"effnet_int8_over_fp32_p50": ratio(f"{ENCODER}-int8", f"{ENCODER}-fp32"),
            "pixels_over_effnet_fp32_p50": ratio("pixels", f"{ENCODER}-fp32")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench_images", description=__doc__.split("\n\n")[0])
    parser.add_argument("--screens", default="data/screens", help="image dataset folder (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="smoke run: small counts, same code paths")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.screens, quick=args.quick), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
