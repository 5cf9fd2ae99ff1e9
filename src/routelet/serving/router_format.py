"""router.json, the one description of a shipped router, and the decision rules every side shares.

    info = RouterInfo.read("data/router")      # validated; RouterError names the file, field and fix
    info.route_matrix()                         # (labels, routes) 0/1: fine probabilities @ it = routes
    info.abstain.abstains(route_probs, info.reject_index)

The export writes a `RouterInfo`, the runtime reads it, and nothing else parses router.json. The
abstain `Policy`, the label -> route mapping and `softmax` live here once, for calibrate, report and
the runtime alike. Torch-free: numpy and pydantic only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator,
                      model_validator)

from routelet.serving.preprocess import PREPROCESS_VERSION

FORMAT_VERSION = 2
ROUTER_FILE = "router.json"
# A handler name (`billing`, `handlers.billing:v2`) or a hub-style `org/model` id.
TARGET_PATTERN = re.compile(r"^[A-Za-z0-9_][\w.:-]*(/[A-Za-z0-9_][\w.:-]*)?$")
_FIX = "re-run the export stage (`dvc repro`) or point --router at a folder with router.json"


class RouterError(ValueError):
    """A router folder that cannot be served; the message says where and what to do."""


def router_error(where: Path | str, problem: str, fix: str = _FIX) -> RouterError:
    return RouterError(f"{where}: {problem}; {fix}")


# --------------------------------------------------------------------------------------------
# routes and the label -> route mapping


class Route(BaseModel):
    """A route: what the caller runs (`target`) for the fine labels it owns (default: its name)."""

    name: str = Field(min_length=1)
    description: str = ""
    target: str | None = None
    labels: list[str] = Field(default_factory=list)

    @field_validator("target")
    @classmethod
    def _target_shape(cls, target: str | None) -> str | None:
        if target is not None and not TARGET_PATTERN.match(target):
            raise ValueError(f"target {target!r} is neither a handler name (letters, digits, _ . : -) "
                             "nor an org/model id")
        return target

    @model_validator(mode="after")
    def _owns_itself_by_default(self) -> Route:
        if not self.labels:
            self.labels = [self.name]
        return self


def check_routes(routes: list[Route], labels: list[str] | None = None, reject: str | None = None) -> None:
    """Distinct route names, each label owned by exactly one route (and, given `labels`, every one
    of them owned), the reject route among the routes. Raises ValueError saying which."""
    names = [route.name for route in routes]
    if len(set(names)) != len(names):
        raise ValueError(f"route names repeat: {sorted({n for n in names if names.count(n) > 1})}")
    owner: dict[str, str] = {}
    for route in routes:
        for label in route.labels:
            if label in owner:
                raise ValueError(f"label {label!r} belongs to both {owner[label]!r} and {route.name!r}")
            if labels is not None and label not in labels:
                raise ValueError(f"route {route.name!r} owns {label!r}, which is not in labels")
            owner[label] = route.name
    if labels is not None and (orphans := [x for x in labels if x not in owner]):
        raise ValueError(f"labels {orphans} belong to no route, so their probability would be lost")
    if reject is not None and reject not in names:
        raise ValueError(f"reject route {reject!r} is not one of the routes {names}")


def route_matrix(labels: list[str], routes: list[Route]) -> np.ndarray:
    """(len(labels), len(routes)) 0/1 matrix: fine-label probabilities @ it = route probabilities."""
    owner = {label: j for j, route in enumerate(routes) for label in route.labels}
    matrix = np.zeros((len(labels), len(routes)), dtype=np.float64)
    for i, label in enumerate(labels):
        matrix[i, owner[label]] = 1.0
    return matrix


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------
# the abstain rule


class Policy(BaseModel):
    """Abstain when the top route is the reject route (with `reject_class`), or its probability is
    under `threshold`, or it leads the second route by less than `margin`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: float = Field(0.0, ge=0.0, le=1.0 + 1e-6)
    margin: float = Field(0.0, ge=0.0, le=1.0)
    reject_class: bool = True
    chosen_on: str = ""  # how the threshold was picked, for people reading router.json

    def abstains(self, probs: np.ndarray, reject: int | None) -> np.ndarray:
        ordered = np.sort(probs, axis=1)
        top = ordered[:, -1]
        second = ordered[:, -2] if probs.shape[1] > 1 else np.zeros(len(probs))
        gate = (top < self.threshold) | (top - second < self.margin)
        if reject is not None and self.reject_class:
            gate |= probs.argmax(axis=1) == reject
        return gate

    def decide(self, probs: np.ndarray, reject: int | None) -> np.ndarray:
        """The route a caller gets: the top one, or the reject route when the policy abstains
        (with no reject route, the top route stands and `abstains` tells the caller)."""
        chosen = probs.argmax(axis=1)
        return chosen if reject is None else np.where(self.abstains(probs, reject), reject, chosen)


# --------------------------------------------------------------------------------------------
# router.json


class TextInput(BaseModel):
    """Text in: the one preprocess, then the tokenizer (encoder tiers) truncated at max_length."""

    model_config = ConfigDict(extra="forbid")

    modality: Literal["text"] = "text"
    tokenizer: str | None = None
    max_length: int | None = Field(None, ge=1)


class ImageInput(BaseModel):
    """Image in (routelet.serving.image_input): decode with the guards below, RGB (transparency on
    white), resize (`shortest_edge`, or exactly `height` x `width`) with PIL filter `resample`,
    centre-crop to `crop` [height, width] when set, then (x * rescale - mean) / std per channel:
    what the encoder's image processor did at training, reproduced with numpy and Pillow."""

    model_config = ConfigDict(extra="forbid")

    modality: Literal["image"] = "image"
    shortest_edge: int | None = Field(None, ge=1)
    height: int | None = Field(None, ge=1)
    width: int | None = Field(None, ge=1)
    crop: tuple[int, int] | None = None
    resample: int = Field(3, ge=0, le=5)  # PIL.Image.Resampling: 2 bilinear, 3 bicubic
    rescale: float = 1 / 255
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    max_bytes: int = Field(20_000_000, ge=1)  # a larger upload or file is refused before decoding
    max_pixels: int = Field(40_000_000, ge=1)  # decompression-bomb guard: width x height, read from the header

    @model_validator(mode="after")
    def _one_size(self) -> ImageInput:
        if (self.shortest_edge is None) == (self.height is None or self.width is None):
            raise ValueError("set either shortest_edge or both height and width")
        if any(s <= 0 for s in self.std):
            raise ValueError("std must be positive")
        return self


def _modality(value) -> str:
    """The `input` block's modality; a block without one is text (format 2 routers before images)."""
    return value.get("modality", "text") if isinstance(value, dict) else getattr(value, "modality", "text")


InputBlock = Annotated[Annotated[TextInput, Tag("text")] | Annotated[ImageInput, Tag("image")],
                       Discriminator(_modality)]


class Tier(BaseModel):
    """One model in the router folder. Tiers answer in order: a tier with `accept` answers alone
    when its top route is not the reject route and its confidence is at least `accept`; the last
    tier (accept null) answers the rest."""

    model_config = ConfigDict(extra="forbid")

    family: str
    kind: Literal["onnx", "tfidf", "image_onnx", "pixels"]
    files: dict[str, str]
    temperature: float = Field(gt=0)  # already folded into the model files; kept for people and re-exports
    accept: float | None = Field(None, ge=0.0, le=1.0)
    quantization: dict | None = None
    encoder: dict | None = None

    @field_validator("files")
    @classmethod
    def _names_model(cls, files: dict[str, str]) -> dict[str, str]:
        if "model" not in files:
            raise ValueError("files.model must name the model file")
        return files


class RouterInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: int
    model_version: str
    family: str  # the family that decides what the fast tiers leave
    labels: list[str] = Field(min_length=1)
    routes: list[Route] = Field(min_length=1)
    reject_route: str | None = None
    input: InputBlock = Field(default_factory=TextInput)
    preprocess_version: str
    abstain: Policy = Field(default_factory=Policy)
    tiers: list[Tier] = Field(min_length=1)
    hashes: dict[str, str] = Field(default_factory=dict)
    metrics: dict = Field(default_factory=dict)
    exported_at: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> RouterInfo:
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be distinct")
        check_routes(self.routes, self.labels, self.reject_route)
        if self.tiers[-1].accept is not None:
            raise ValueError("the last tier answers everything left: its accept must be null")
        if any(tier.accept is None for tier in self.tiers[:-1]):
            raise ValueError("every tier but the last needs an accept threshold")
        return self

    @property
    def route_names(self) -> list[str]:
        return [route.name for route in self.routes]

    @property
    def reject_index(self) -> int | None:
        return None if self.reject_route is None else self.route_names.index(self.reject_route)

    def route_matrix(self) -> np.ndarray:
        return route_matrix(self.labels, self.routes)

    def write(self, folder: str | Path) -> Path:
        path = Path(folder) / ROUTER_FILE
        path.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def read(cls, folder: str | Path) -> RouterInfo:
        """router.json of `folder`, validated; RouterError names the file, the field and the fix."""
        folder = Path(folder)
        if not folder.is_dir():
            raise router_error(folder, "no such router folder")
        path = folder / ROUTER_FILE
        if not path.is_file():
            raise router_error(path, "file is missing")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise router_error(path, f"not valid JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise router_error(path, "router.json must be a JSON object")
        if raw.get("format_version") != FORMAT_VERSION:
            raise router_error(path, f"format_version {raw.get('format_version')!r} is not supported (this "
                               f"routelet reads {FORMAT_VERSION})",
                               "install the routelet version that exported it, or re-export with this one")
        try:
            info = cls.model_validate(raw)
        except ValidationError as error:
            first = error.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or "router.json"
            raise router_error(path, f"{field}: {first['msg'].removeprefix('Value error, ')}") from None
        if info.preprocess_version != PREPROCESS_VERSION:
            raise router_error(
                path, f"preprocess_version {info.preprocess_version!r} differs from this routelet's "
                f"{PREPROCESS_VERSION!r}, so inputs would be prepared differently than in training",
                "serve it with the routelet version that exported it, or retrain and re-export")
        return info
