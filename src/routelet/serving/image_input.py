"""Images in, without torch: decode with guards, then resize, crop and normalise exactly as the
encoder's image processor (transformers' PIL backend) did at training.

    from routelet.serving.image_input import open_image, pixel_values
    image = open_image(Path("shot.png").read_bytes(), spec)     # ImageRejected says why not
    batch = pixel_values([image], spec)                         # (1, 3, H, W) float32

`spec` is the router.json `input` block (router_format.ImageInput). The training side
(routelet.families.image_encoders) runs these same two functions, so the served pixels are the
trained pixels; tests/test_image_encoders.py checks them against AutoImageProcessor.

Guards, in order (each refusal is an ImageRejected whose message is the reason): empty input; over
`max_bytes`; not an image Pillow reads; a format outside FORMATS; a zero or over-`max_pixels`
width x height read from the header before any pixel is decoded (a decompression bomb); a mode
outside MODES (16-bit, float, CMYK); pixel data that is truncated or corrupt.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from routelet.serving.router_format import ImageInput

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "La", "RGBa")


class ImageRejected(ValueError):
    """An input that is not a usable image; str() is the reason, fit for a quarantine line or a 4xx."""


def read_bytes(source: bytes | str | Path, max_bytes: int) -> bytes:
    """The bytes of an upload or a file, refusing empty and oversized ones before reading them all."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        path = Path(source)
        try:
            size = path.stat().st_size
        except OSError as error:
            raise ImageRejected(f"cannot read the image file ({error.strerror or error})") from None
        if size > max_bytes:
            raise ImageRejected(f"{size} bytes, over the limit of {max_bytes} bytes")
        data = path.read_bytes()
    if not data:
        raise ImageRejected("empty file (0 bytes)")
    if len(data) > max_bytes:
        raise ImageRejected(f"{len(data)} bytes, over the limit of {max_bytes} bytes")
    return data


def open_image(source: bytes | str | Path, spec: ImageInput) -> Image.Image:
    """A fully decoded, checked image (its first frame), or ImageRejected with the reason."""
    data = read_bytes(source, spec.max_bytes)
    with warnings.catch_warnings():
        # Pillow's own bomb warning/error: our max_pixels check below is the rule, raise on both.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise ImageRejected(_open_failure(data, error)) from None
        except Exception as error:  # a malformed header can raise nearly anything inside a plugin
            raise ImageRejected(f"corrupt image header ({type(error).__name__}: {str(error)[:120]})") from None
        _check_header(image, spec.max_pixels)
        try:
            image.load()
        except Exception as error:
            raise ImageRejected(f"truncated or corrupt {image.format} data ({str(error)[:120] or type(error).__name__})"
                                ) from None
    return image


def _open_failure(data: bytes, error: Exception) -> str:
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"over the pixel limit (decompression-bomb guard): {error}"
    head = data[:16]
    text = head.decode("ascii", "replace") if all(32 <= b < 127 or b in (9, 10, 13) for b in head) else head.hex()
    return f"not an image Pillow can read (starts with {text!r}): formats accepted are {', '.join(FORMATS)}"


def _check_header(image: Image.Image, max_pixels: int) -> None:
    if image.format not in FORMATS:
        raise ImageRejected(f"format {image.format} is not accepted: use one of {', '.join(FORMATS)}")
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageRejected(f"the image is {width}x{height} pixels: nothing to route")
    if width * height > max_pixels:
        raise ImageRejected(f"{width}x{height} = {width * height} pixels, over the limit of {max_pixels} "
                            "(decompression-bomb guard): downscale it first")
    if image.mode not in MODES:
        raise ImageRejected(f"mode {image.mode} is not supported (16-bit, float or CMYK): "
                            "save it as 8-bit RGB, RGBA or greyscale")


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB with any transparency composited on white: transformers' convert_to_rgb."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def resized_size(width: int, height: int, spec: ImageInput) -> tuple[int, int]:
    """(width, height) after resizing; shortest_edge keeps the aspect ratio as transformers does."""
    if spec.shortest_edge is None:
        return spec.width, spec.height
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = spec.shortest_edge, int(spec.shortest_edge * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def _center_crop(array: np.ndarray, crop: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) -> (crop_h, crop_w, 3), zero-padded where the image is smaller (as transformers)."""
    height, width = array.shape[:2]
    crop_h, crop_w = crop
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    if top >= 0 and left >= 0:
        return array[top:top + crop_h, left:left + crop_w]
    out = np.zeros((max(crop_h, height), max(crop_w, width), array.shape[2]), dtype=array.dtype)
    pad_top, pad_left = -(-(out.shape[0] - height) // 2), -(-(out.shape[1] - width) // 2)
    out[pad_top:pad_top + height, pad_left:pad_left + width] = array
    top, left = (out.shape[0] - crop_h) // 2, (out.shape[1] - crop_w) // 2
    return out[top:top + crop_h, left:left + crop_w]


def pixels(image: Image.Image, spec: ImageInput) -> np.ndarray:
    """One image as the encoder sees it: (3, H, W) float32."""
    rgb = to_rgb(image)
    rgb = rgb.resize(resized_size(*rgb.size, spec), resample=spec.resample)
    array = np.asarray(rgb)
    if spec.crop is not None:
        array = _center_crop(array, spec.crop)
    # transformers' order and precision: rescale in float64, cast to float32, then normalise.
    scaled = (array.astype(np.float64) * spec.rescale).astype(np.float32)
    normed = (scaled - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(normed.transpose(2, 0, 1))


def pixel_values(images: list[Image.Image], spec: ImageInput) -> np.ndarray:
    """(n, 3, H, W) float32 for a batch of decoded images."""
    if not images:
        height, width = spec.crop or (spec.height or spec.shortest_edge, spec.width or spec.shortest_edge)
        return np.zeros((0, 3, height, width), np.float32)
    return np.stack([pixels(image, spec) for image in images])
