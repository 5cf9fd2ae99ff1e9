"""The image tiers of a router folder, without torch: `model.read(images)` -> (fine-label
probabilities, known) like the text tiers, for decoded PIL images (routelet.serving.image_input).

  image_onnx  an encoder ONNX graph (pixel_values -> embedding), content-addressed
              (encoder-<key>.onnx, shared by every head trained on that encoder), and the linear
              head in numpy (head.npz: coef, intercept, the temperature already folded in)
  pixels      the weight-free baseline: `pixel_features` below, standardised, then a linear head
              (pixels.npz); the same function computes the features at training

An image's probabilities are bit for bit the same alone or in any batch: the encoder runs one image
per call and the head one row at a time (tests/test_batch_independence.py).

    model = load_image_tier(Path("data/router"), info, info.tiers[0])
    probs, known = model.read([open_image(data, info.input)])
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from routelet.serving.image_input import ImageRejected, open_image, pixel_values, to_rgb
from routelet.serving.router_format import ImageInput, RouterInfo, Tier, router_error, softmax

FEATURES_VERSION = "1"  # bump when pixel_features changes: recorded in pixels.json
_GRID = 64  # greyscale side for the gradient features
_CELLS = 4  # cells per side for the orientation histograms
_BINS = 8  # orientation bins (unsigned, 0..pi)


def pixel_features(image: Image.Image) -> np.ndarray:
    """A fixed-length vector of what a weight-free model can see: a 12x12 colour thumbnail, a
    64-bin colour histogram, orientation histograms of the gradients on a 4x4 grid (HOG-like), and
    the gradient energy per row and per column (layout: grids, lists, bars)."""
    rgb = to_rgb(image)
    thumb = np.asarray(rgb.resize((12, 12), Image.BILINEAR, reducing_gap=3.0), np.float32) / 255.0
    small = np.asarray(rgb.resize((_GRID, _GRID), Image.BILINEAR, reducing_gap=3.0), np.int32)
    levels = small // 64  # 4 levels per channel
    hist = np.bincount((levels[..., 0] * 16 + levels[..., 1] * 4 + levels[..., 2]).ravel(), minlength=64)
    grey = (small @ np.array([299, 587, 114]) / 255000.0).astype(np.float32)
    gx, gy = np.zeros_like(grey), np.zeros_like(grey)
    gx[:, 1:-1], gy[1:-1, :] = grey[:, 2:] - grey[:, :-2], grey[2:, :] - grey[:-2, :]
    magnitude, angle = np.hypot(gx, gy), np.mod(np.arctan2(gy, gx), np.pi)
    bins = np.minimum((angle / np.pi * _BINS).astype(int), _BINS - 1)
    cell = _GRID // _CELLS
    cells = np.zeros((_CELLS, _CELLS, _BINS), np.float32)
    rows, cols = np.indices(grey.shape) // cell
    np.add.at(cells, (rows, cols, bins), magnitude)
    cells /= np.linalg.norm(cells, axis=2, keepdims=True) + 1e-6
    return np.concatenate([thumb.ravel(), hist / hist.sum(), cells.ravel(),
                           magnitude.mean(axis=1), magnitude.mean(axis=0)]).astype(np.float32)


def _features(images: list[Image.Image]) -> np.ndarray:
    if not images:
        return np.zeros((0, len(pixel_features(Image.new("RGB", (1, 1))))), np.float32)
    return np.stack([pixel_features(image) for image in images])


def _npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise router_error(path, "file is missing")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: np.asarray(data[key], np.float32) for key in keys}
    except Exception as exc:
        raise router_error(path, f"not a readable head file with {', '.join(keys)} ({exc})") from None


class _Head:
    """softmax(x @ coef.T + intercept) with the temperature already folded into coef and intercept."""

    def __init__(self, path: Path, labels: list[str]) -> None:
        weights = _npz(path, ("coef", "intercept"))
        self.coef, self.intercept = weights["coef"], weights["intercept"]
        if self.coef.shape[0] != len(labels) or self.intercept.shape != (len(labels),):
            raise router_error(path, f"the head has {self.coef.shape[0]} rows but router.json has {len(labels)} labels")

    def probs(self, x: np.ndarray) -> np.ndarray:
        # One vector-matrix product per row, not one matrix product per batch: BLAS blocks a matrix
        # product by its row count, which moved an image's probabilities by up to 8e-7 with its batch.
        logits = np.array([self.coef @ row for row in x], np.float32).reshape(len(x), len(self.intercept))
        return softmax(logits + self.intercept)


class PixelsModel:
    """The pixels tier: pixel_features -> (x - mean) / scale -> linear head."""

    def __init__(self, folder: Path, files: dict[str, str], labels: list[str]) -> None:
        path = folder / files["model"]
        scaler = _npz(path, ("mean", "scale"))
        self.mean, self.scale = scaler["mean"], scaler["scale"]
        self.head = _Head(path, labels)
        if self.mean.shape != (self.head.coef.shape[1],):
            raise router_error(path, "mean, scale and coef disagree on the feature count")

    def read(self, images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        x = (_features(images) - self.mean) / self.scale
        return self.head.probs(x), np.ones(len(images), dtype=bool)

    def __call__(self, images: list[Image.Image]) -> np.ndarray:
        return self.read(images)[0]


class OnnxImageModel:
    """An encoder graph (pixel_values -> embedding) and the linear head, one image per encoder call."""

    def __init__(self, folder: Path, files: dict[str, str], labels: list[str], spec: ImageInput,
                 threads: int = 1) -> None:
        from routelet.serving.onnx_model import _session

        self.spec = spec
        path = folder / files["model"]
        if not path.is_file():
            raise router_error(path, "file is missing")
        try:
            self.session = _session(path, max(1, int(threads)))
        except Exception as exc:
            raise router_error(path, f"onnxruntime cannot load it ({exc})") from None
        names = [i.name for i in self.session.get_inputs()]
        if names != ["pixel_values"] or "embedding" not in {o.name for o in self.session.get_outputs()}:
            raise router_error(path, f"graph inputs {names} must be ['pixel_values'] and it must output 'embedding'")
        self.head = _Head(folder / files.get("head", "head.npz"), labels)

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        # One image per call keeps an image's embedding independent of its batch: an int8 encoder
        # takes one activation scale per call (batches of 16 moved embeddings by up to 0.12), fp32
        # SigLIP moved by 7e-7. No slower at real sizes, 1 thread, 16 calls of one vs one of 16:
        # 0.6-0.8x the time effnet-lite0 fp32, 0.63x int8 and 0.99-1.05x fp32 ViTs (dinov2-small,
        # clip-base shapes). It also bounds activation memory to one image.
        rows = [self.session.run(["embedding"], {"pixel_values": pixel_values([image], self.spec)})[0]
                for image in images]
        return np.concatenate(rows) if rows else np.zeros((0, self.head.coef.shape[1]), np.float32)

    def read(self, images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        return self.head.probs(self.embed(images)), np.ones(len(images), dtype=bool)

    def __call__(self, images: list[Image.Image]) -> np.ndarray:
        return self.read(images)[0]


def load_image_tier(folder: Path, info: RouterInfo, tier: Tier, threads: int = 1) -> OnnxImageModel | PixelsModel:
    """The model of one image tier (router.json `input.modality` is image)."""
    if not isinstance(info.input, ImageInput):
        raise router_error(folder, f"tier {tier.family!r} is an image tier but router.json input is "
                           f"{info.input.modality}")
    if tier.kind == "pixels":
        return PixelsModel(folder, tier.files, info.labels)
    if tier.kind == "image_onnx":
        return OnnxImageModel(folder, tier.files, info.labels, info.input, threads)
    raise router_error(folder, f"tier {tier.family!r} has kind {tier.kind!r}, which reads text, not images")


def open_images(items: list, spec: ImageInput) -> tuple[list[Image.Image], list[str | None]]:
    """Bytes, paths or PIL images decoded with the guards of image_input, and per item why it cannot
    be read (None: it can); an unreadable one is replaced by probe_image() so the batch keeps its rows."""
    images, problems = [], []
    for item in items:
        try:
            images.append(item if isinstance(item, Image.Image) else open_image(item, spec))
            problems.append(None)
        except (ImageRejected, OSError) as exc:  # OSError: a path that is missing or a folder
            images.append(probe_image())
            problems.append(f"unreadable image: {exc}")
    return images, problems


def probe_image() -> Image.Image:
    """A small grey image: what a router runs once at load so a broken model fails then, not at serve."""
    return Image.new("RGB", (32, 24), (128, 128, 128))
