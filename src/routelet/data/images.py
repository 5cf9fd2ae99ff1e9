"""Image rows: `{"image": "relative/path.png", "label": ...}` (optional `id`, `meta`), the path
relative to the dataset folder. Every line and every image is checked; a bad one becomes a
`Rejected` (file, line, reason) for the quarantine file, never a silent drop.

    rows, rejected = read_image_rows("data/screens/train.jsonl", known_labels=taxonomy.labels)
    leaks = image_leaks(pool, {"data/screens/test.jsonl": test})     # exact bytes or perceptual hash
    write_prepared_images(splits, "data/prepared")                   # images/<sha256>.<ext> + jsonl

Reasons an image is refused (routelet.serving.image_input does the decoding, so training and
serving refuse the same files): a path that is absolute, leaves the folder or is missing; an empty,
oversized, non-image, unsupported-format or unsupported-mode file; a decompression bomb (width x
height over max_pixels, read from the header); truncated or corrupt pixel data.

Decoding is most of the cost, so each image's outcome (its dHash, or the reason it is refused) is
cached by content under the cache root (image-checks/, or $ROUTELET_CACHE): ingest, augment and
checkdata decode an unchanged image once, not once each.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
from PIL import Image
from pydantic import ValidationError, field_validator

from routelet.data.outputs import write_if_changed
from routelet.data.rows import DataError, Rejected, RowFields, bounded, json_object, shown, write_jsonl
from routelet.paths import CACHE_ROOT
from routelet.serving.image_input import ImageRejected, open_image
from routelet.serving.router_format import ImageInput

HASH_SIDE = 8  # dHash: 9x8 greyscale, one bit per horizontal neighbour pair = 64 bits
NEAR = 4  # bits of 64 two perceptual hashes may differ by and still be the same screenshot
CHECK_VERSION = "1"  # bump when open_image's guards or dhash change: every cached check is then redone
CHECKS = "image-checks"  # under the cache root: one JSON file per checks_key, sha256 -> dHash or reason


class ImageRow(RowFields):
    image: str

    @field_validator("image")
    @classmethod
    def _relative(cls, image: str) -> str:
        if not image.strip() or any(ord(c) < 32 for c in image):
            raise ValueError("empty or holds control characters: give a path relative to the dataset folder")
        path = Path(image)
        if path.is_absolute() or image.startswith(("/", "\\")) or ":" in path.parts[0]:
            raise ValueError(f"{shown(image)} is absolute: give a path relative to the dataset folder")
        if ".." in path.parts or "\\" in image:
            raise ValueError(f"{shown(image)} leaves the dataset folder (.. or \\): keep images inside it")
        return image


@dataclass(frozen=True)
class ImageSourced:
    """A valid image row, the checked file, its content hashes, and where the row came from."""

    row: ImageRow
    path: Path
    sha256: str
    phash: int
    file: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def dhash(image: Image.Image) -> int:
    """64-bit difference hash: robust to re-encoding, small resizes and mild noise."""
    grey = np.asarray(image.convert("L").resize((HASH_SIDE + 1, HASH_SIDE), Image.BILINEAR, reducing_gap=3.0),
                      dtype=np.int16)
    bits = (grey[:, 1:] > grey[:, :-1]).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def read_image_rows(
    path: str | Path,
    known_labels: Iterable[str] | None = None,
    limits: ImageInput | None = None,
    require_label: bool = True,
) -> tuple[list[ImageSourced], list[Rejected]]:
    """Read an image JSONL file and check every image it names (relative to the file's folder)."""
    path = Path(path)
    limits = limits or ImageInput(height=1, width=1)
    known = set(known_labels) if known_labels is not None else None
    root = path.parent.resolve()
    rows: list[ImageSourced] = []
    rejected: list[Rejected] = []
    cache = Path(CACHE_ROOT) / CHECKS / f"{checks_key(limits)}.json"
    outcomes = _cached_outcomes(cache)
    cached = len(outcomes)
    try:
        lines = path.read_bytes().splitlines()
    except OSError as error:
        raise DataError(f"{path}: cannot read it ({error.strerror or error}): check the path and its permissions"
                        ) from None
    for number, raw in enumerate(lines, start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if not raw.strip():
            continue
        try:
            rows.append(_checked(_parse(raw, known, require_label), root, limits, outcomes, str(path), number))
        except ValueError as error:
            text = raw.decode("utf-8", "replace")
            rejected.append(Rejected(str(path), number, str(error), bounded(text), len(text)))
    if len(outcomes) > cached:
        _save_outcomes(cache, outcomes)
    return rows, rejected


def checks_key(limits: ImageInput) -> str:
    """What a check's outcome depends on besides the bytes: the limits, the guards and Pillow."""
    raw = json.dumps([limits.model_dump(mode="json"), CHECK_VERSION, PIL.__version__], sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def _parse(raw: bytes, known: set[str] | None, require_label: bool) -> ImageRow:
    try:
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=json_object)
    except UnicodeDecodeError as error:
        raise ValueError(f"invalid UTF-8 at byte {error.start + 1}: re-save the file as UTF-8") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"malformed JSON: {error.msg} (column {error.colno})") from None
    except RecursionError:
        raise ValueError("malformed JSON: nested too deeply") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    if "text" in value and "image" not in value:
        raise ValueError("a text row in an image dataset: every row of one dataset has the same modality")
    try:
        row = ImageRow.model_validate(value)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part)[:40] for part in first["loc"]) or "row"
        raise ValueError(f"{field}: {first['msg'].removeprefix('Value error, ')}") from None
    if require_label and row.label is None:
        raise ValueError("label: missing")
    if known is not None and row.label is not None and row.label not in known:
        raise ValueError(f"unknown label {shown(row.label)}: not in the taxonomy (add it there or fix the row)")
    return row


def _checked(row: ImageRow, root: Path, limits: ImageInput, outcomes: dict[str, int | str], file: str,
             line: int) -> ImageSourced:
    path = (root / row.image).resolve()
    if not path.is_relative_to(root):  # a symlink pointing out of the folder: DVC would not track it
        raise ValueError(f"image {shown(row.image)} resolves outside the dataset folder: copy it in")
    if not path.is_file():
        raise ValueError(f"image {shown(row.image)}: no such file in {root}")
    # An oversized file is not read (open_image refuses it from its size), so it is not cached either.
    data = path.read_bytes() if path.stat().st_size <= limits.max_bytes else None
    sha256 = hashlib.sha256(data or b"").hexdigest()
    outcome = outcomes.get(sha256) if data is not None else None
    if outcome is None:
        outcome = _outcome(path if data is None else data, limits)
        if data is not None:
            outcomes[sha256] = outcome
    if isinstance(outcome, str):
        raise ValueError(f"image {shown(row.image)}: {outcome}")
    return ImageSourced(row, path, sha256, outcome, file, line)


def _outcome(source: bytes | Path, limits: ImageInput) -> int | str:
    """The image's dHash, or the reason open_image refuses it."""
    try:
        return dhash(open_image(source, limits))
    except ImageRejected as error:
        return str(error)


def _cached_outcomes(cache: Path) -> dict[str, int | str]:
    """sha256 -> dHash or reason. A file that cannot be read or holds anything else (truncated,
    edited) is redone, not fatal."""
    try:
        outcomes = json.loads(cache.read_bytes())
    except (OSError, ValueError, RecursionError):
        return {}
    valid = isinstance(outcomes, dict) and all(
        isinstance(value, str) or (type(value) is int and 0 <= value < 2**64) for value in outcomes.values())
    return outcomes if valid else {}


def _save_outcomes(cache: Path, outcomes: dict[str, int | str]) -> None:
    """Replaced whole (routelet.data.outputs), so a killed run never leaves half a file. A cache that
    cannot be written (read-only, full disk) only costs the next run the decoding: not fatal."""
    try:
        write_if_changed(cache, json.dumps(outcomes, separators=(",", ":")).encode())
    except OSError:
        pass


# --------------------------------------------------------------------------------------------
# checks across rows


@dataclass(frozen=True)
class ImageLeak:
    pool: ImageSourced
    held: ImageSourced
    kind: str  # "same bytes" or "near duplicate (d bits)"

    def __str__(self) -> str:
        return f"{self.pool.where}: image {self.pool.row.image} repeats {self.held.where} ({self.kind})"


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) bit distances between two arrays of 64-bit hashes."""
    return np.bitwise_count(a[:, None] ^ b[None, :]).astype(np.int64)


def image_leaks(pool: list[ImageSourced], evals: dict[str, list[ImageSourced]], near: int = NEAR) -> list[ImageLeak]:
    """Pool images that repeat an evaluation image: the same bytes, or a perceptual hash within
    `near` bits (re-encoded, resized, lightly edited copies). One leak per pool row, exact first."""
    held = [row for rows in evals.values() for row in rows]
    if not pool or not held:
        return []
    by_bytes = {row.sha256: row for row in held}
    held_hashes = np.array([row.phash for row in held], dtype=np.uint64)
    leaks = []
    for start in range(0, len(pool), 512):  # bounded memory: 512 x len(held) distances at a time
        chunk = pool[start:start + 512]
        distances = hamming(np.array([row.phash for row in chunk], dtype=np.uint64), held_hashes)
        for row, row_distances in zip(chunk, distances):
            best = int(row_distances.argmin())
            if row.sha256 in by_bytes:
                leaks.append(ImageLeak(row, by_bytes[row.sha256], "same bytes"))
            elif row_distances[best] <= near:
                leaks.append(ImageLeak(row, held[best], f"near duplicate ({int(row_distances[best])} bits apart)"))
    return leaks


def image_conflicts(rows: list[ImageSourced]) -> dict[str, list[ImageSourced]]:
    """Identical image bytes under two or more labels: sha256 -> the rows, for the user to resolve."""
    by_hash: dict[str, list[ImageSourced]] = {}
    for row in rows:
        by_hash.setdefault(row.sha256, []).append(row)
    return {h: group for h, group in by_hash.items() if len({r.row.label for r in group}) > 1}


# --------------------------------------------------------------------------------------------
# the prepared splits

IMAGES = "images"  # the prepared folder's content-addressed copies


def write_prepared_images(splits: dict[str, list[ImageSourced]], folder: str | Path) -> None:
    """Copy each image to `folder`/images/<sha256><suffix> (identical files once) and write
    <split>.jsonl rows {"image": "images/<sha256><suffix>", "label", "source"}."""
    folder = Path(folder)
    (folder / IMAGES).mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        records = []
        for row in rows:
            name = f"{IMAGES}/{row.sha256}{row.path.suffix.lower()}"
            if not (folder / name).is_file():
                _copy(row.path, folder / name)
            records.append({"image": name, "label": row.row.label, "source": row.where})
        write_jsonl(folder / f"{split}.jsonl", records)


def _copy(source: Path, target: Path) -> None:
    temporary = target.with_name(target.name + ".tmp")
    shutil.copyfile(source, temporary)
    os.replace(temporary, target)  # a killed run never leaves half an image under its final name


def prepared_images(folder: str | Path, records: list[dict]) -> list[str]:
    """The image paths of prepared rows, as the image families take them."""
    return [str(Path(folder) / record["image"]) for record in records]
