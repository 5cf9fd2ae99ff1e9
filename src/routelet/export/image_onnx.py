"""Export an image encoder tier: the encoder as its own content-addressed ONNX graph
(pixel_values -> embedding) and the linear head as head.npz, served by
routelet.serving.image_models.OnnxImageModel.

    fields = export_image_tier(encoder, head, temperature, Path("data/router"), options)

The encoder file is named by its key (weights, pooling, pixel recipe, int8 mode, opset, torch):
encoder-<key>.onnx, built once into the cache (.cache/routelet/onnx/<key>/) and copied from there,
so a head-only change (a new class) re-exports only head.npz. int8 (onnxruntime dynamic
quantisation of the MatMul/Gemm weights of a ViT: DINOv2, CLIP, SigLIP) ships when the int8 encoder and
the fp32 encoder give the same top label on at least min_agreement (0.995) of the calibration
images through this head; otherwise fp32 ships, and router.json's tier `quantization` says which,
with the agreement measured. The fp32 graph itself must match torch (embeddings within 1e-3
relative), or the export fails: that is an export bug, not a precision trade-off. A pass is
recorded beside the cached graph (fp32-checked.json: the graph's sha256 and the versions of the
model code and ONNX Runtime), so an unchanged graph is checked once, not on every export. The
calibration images are decoded only when a check runs. The parity gate (routelet.export.ship) reads
the shipped graph's embeddings through `ServedEmbeddings`, so after a head-only change only the new
holdout images run through ONNX Runtime.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from importlib.metadata import version
from pathlib import Path

import numpy as np

from routelet.families.base import ExportOptions
from routelet.families.encoders import CACHE_ROOT
from routelet.families.head import LinearHead
from routelet.families.image_encoders import ImageEncoder, ImageVectorCache, as_image
from routelet.serving import image_input, image_models
from routelet.serving.image_input import open_image, pixel_values
from routelet.serving.onnx_model import _session
from routelet.serving.router_format import ImageInput

OPSET = 17
MIN_AGREEMENT = 0.995
HEAD_FILE = "head.npz"
CHECKED = "fp32-checked.json"
MODEL_CODE = {"efficientnet": "efficientnet-lite-pytorch"}  # the package that builds the torch module; else transformers
CALIBRATION_IMAGES = 200  # calibration images the int8 decision looks at: enough to see 1 in 200
FP32_PROBE = 8  # calibration images the fp32 graph is compared with torch on
# Encoders whose weights sit in convolutions, not MatMuls: dynamic int8 has nothing worth doing.
CONVNETS = {"efficientnet": "a convnet: dynamic int8 would quantise its convolutions, measured on data/screens at "
                            "cosine 0.56 to fp32 and 6x slower (ConvInteger), so fp32 ships"}


def encoder_key(encoder: ImageEncoder, int8: bool) -> str:
    # torch's version from its metadata: importing torch (seconds) only to read it would make every
    # export pay for torch even when the graph is cached.
    raw = json.dumps([encoder.key, int8, OPSET, version("torch")])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def export_image_tier(encoder: ImageEncoder, head: LinearHead, temperature: float, out: Path,
                      options: ExportOptions, min_agreement: float = MIN_AGREEMENT) -> dict:
    """Write encoder-<key>.onnx and head.npz into `out`; return the router.json tier fields."""
    out.mkdir(parents=True, exist_ok=True)
    fp32 = cached_encoder(encoder, int8=False)
    checked_fp32(encoder, fp32, options.calibration)
    quantization = {"int8": "fp32", "agreement": None, "checked_on": 0}
    chosen = fp32
    if options.int8 != "fp32" and encoder.arch in CONVNETS:
        quantization["reason"] = CONVNETS[encoder.arch]
    elif options.int8 != "fp32":
        if not options.calibration:
            warnings.warn("image export: no calibration images, so int8 cannot be checked; shipping fp32", stacklevel=2)
        else:
            images = [as_image(x) for x in options.calibration[:CALIBRATION_IMAGES]]
            int8 = cached_encoder(encoder, int8=True)
            agreement = top_label_agreement(fp32, int8, head, images, encoder)
            quantization = {"int8": "dynamic" if agreement >= min_agreement else "fp32",
                            "agreement": round(agreement, 4), "checked_on": len(images),
                            "fell_back": agreement < min_agreement}
            chosen = int8 if agreement >= min_agreement else fp32
    name = f"encoder-{chosen.parent.name}.onnx"
    _place(chosen, out / name)
    np.savez(out / HEAD_FILE, coef=head.coef / temperature, intercept=head.intercept / temperature)
    return {"kind": "image_onnx", "files": {"model": name, "head": HEAD_FILE}, "quantization": quantization,
            "encoder": {"name": encoder.name, "arch": encoder.arch, "pooling": encoder.pooling, "key": encoder.key}}


def cached_encoder(encoder: ImageEncoder, int8: bool, root: Path | None = None) -> Path:
    """The encoder graph for this key, exported (and quantised) on first use."""
    folder = Path(root or CACHE_ROOT) / "onnx" / encoder_key(encoder, int8)
    path = folder / "encoder.onnx"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / "encoder.tmp.onnx"
    if int8:
        _quantize(cached_encoder(encoder, int8=False, root=root), staging, encoder.arch)
    else:
        _export(encoder, staging)
    os.replace(staging, path)  # a killed export never leaves a half graph under the final name
    return path


def _export(encoder: ImageEncoder, path: Path) -> None:
    import torch

    height, width = encoder.input.crop or (encoder.input.height or encoder.input.shortest_edge,
                                            encoder.input.width or encoder.input.shortest_edge)
    sample = torch.zeros((2, 3, height, width))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(encoder.module, (sample,), str(path), input_names=["pixel_values"],
                          output_names=["embedding"], dynamic_axes={"pixel_values": {0: "batch"}, "embedding": {0: "batch"}},
                          opset_version=OPSET, dynamo=False)


def _quantize(fp32: Path, path: Path, arch: str) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])


def _run(path: Path, images: list, encoder: ImageEncoder) -> np.ndarray:
    session = _session(path, 1)
    return np.concatenate([session.run(["embedding"], {"pixel_values": pixel_values(images[i:i + 16], encoder.input)})[0]
                           for i in range(0, len(images), 16)])


def check_fp32(encoder: ImageEncoder, path: Path, images: list) -> None:
    from PIL import Image

    probe = images[:FP32_PROBE] or [Image.new("RGB", (64, 48), (90, 140, 200))]
    exported, reference = _run(path, probe, encoder), encoder.embed(probe)
    error = np.abs(exported - reference).max() / max(np.abs(reference).max(), 1e-6)
    if not error < 1e-3:
        raise RuntimeError(f"{path}: the ONNX encoder differs from torch by {error:.2e} (relative): an export bug; "
                           "delete the folder to rebuild it, and report it with the encoder's name")


def checked_fp32(encoder: ImageEncoder, path: Path, calibration: tuple) -> None:
    """check_fp32 on the first calibration items (paths, bytes or images), skipped when this very
    graph passed it with the same code on both sides: the skip never builds the torch model nor
    decodes an image."""
    record, expected = path.parent / CHECKED, check_record(encoder, path)
    if record.is_file() and record.read_text() == expected:
        return
    check_fp32(encoder, path, [as_image(x) for x in calibration[:FP32_PROBE]])
    record.write_text(expected)


def check_record(encoder: ImageEncoder, path: Path) -> str:
    """What a passed check holds for: the graph's bytes (its folder's key already names the weights,
    pooling, recipe, opset and torch), the code that builds the torch module, and ONNX Runtime."""
    import onnxruntime

    code = MODEL_CODE.get(encoder.arch, "transformers")
    return json.dumps({"graph_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                       "model_code": f"{code} {version(code)}", "onnxruntime": onnxruntime.__version__},
                      sort_keys=True) + "\n"


def top_label_agreement(fp32: Path, int8: Path, head: LinearHead, images: list, encoder: ImageEncoder) -> float:
    a = head.logits(_run(fp32, images, encoder)).argmax(axis=1)
    b = head.logits(_run(int8, images, encoder)).argmax(axis=1)
    return float((a == b).mean())


class ServedEmbeddings(ImageVectorCache):
    """An exported encoder graph's embeddings as served (OnnxImageModel.embed on the image files
    decoded with router.json `input`), by image content, for the parity gate. A head-only change (a
    new class) ships the same encoder-<key>.onnx, so the gate runs only the images it has not seen
    through ONNX Runtime. Sound because the key holds what the embedding depends on: the graph's
    bytes, the ONNX Runtime, Pillow and numpy versions, the serving code that decodes and runs an
    image, the pixel recipe and the thread count; an image's embedding does not depend on its batch
    (one image per call). The head is not cached: it is what changed, and the gate applies the
    shipped head.npz to these embeddings each time. Not for timing: a cached image costs nothing."""

    def __init__(self, model: image_models.OnnxImageModel, graph: Path, spec: ImageInput, threads: int,
                 root: Path | None = None) -> None:
        super().__init__("served", served_key(graph, spec, threads), root)
        self.model, self.spec = model, spec

    def compute(self, paths: list, batch_size: int) -> np.ndarray:
        return np.concatenate([self.model.embed([open_image(Path(path).read_bytes(), self.spec)
                                                 for path in paths[start:start + batch_size]])
                               for start in range(0, len(paths), batch_size)])

    def _load(self) -> tuple[dict[str, int], np.ndarray | None]:
        """Vectors of another width than the head reads (an edited cache) are recomputed."""
        index, vectors = super()._load()
        width = self.model.head.coef.shape[1]
        return (index, vectors) if vectors is None or vectors.shape[1] == width else ({}, None)


def served_key(graph: Path, spec: ImageInput, threads: int) -> str:
    """What the served embeddings of `graph` depend on, besides the image (ServedEmbeddings)."""
    import onnxruntime

    code = hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in (image_input, image_models))).hexdigest()
    raw = json.dumps({"graph_sha256": hashlib.sha256(graph.read_bytes()).hexdigest(), "serving_code": code,
                      "onnxruntime": onnxruntime.__version__, "pillow": version("pillow"), "numpy": np.__version__,
                      "input": spec.model_dump(mode="json"), "threads": threads}, sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _place(source: Path, target: Path) -> None:
    if target.is_file() and target.stat().st_size == source.stat().st_size:
        return  # content-addressed: the same name is the same graph
    # A copy, not a link: DVC owns the router folder and may move or protect what is in it.
    shutil.copyfile(source, target)
