"""Screenshots for the LLM: checked with the serving guards, fitted to the API, ready to send.

    request = image_request(Path("shot.png"))           # ImageRejected (a ValueError) says why not
    teacher = make_teacher(taxonomy, config, cache, modality="image")
    [result] = teacher.label([request])

A file the APIs take (PNG, JPEG, GIF, WebP) whose long side is at most MAX_SIDE is sent byte for
byte. Anything else (BMP, a larger image, one over the API's size limit) is decoded (first frame,
transparency on white, as the image routers see it), downscaled to fit MAX_SIDE and re-encoded:
PNG, lossless, right for screenshots; JPEG when it came as JPEG or the PNG would be too large.
The cache key holds the hash of the file's bytes, never its path: a moved or renamed screenshot
is not asked (or paid for) again.
"""

from __future__ import annotations

import base64
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from routelet.serving.image_input import ImageRejected, open_image, read_bytes, to_rgb
from routelet.serving.router_format import ImageInput

# Anthropic's advice: a longer side is downscaled by the API anyway, adding latency, not accuracy.
MAX_SIDE = 1568
MAX_BASE64 = 5 * 1024 * 1024  # Anthropic refuses an image whose base64 text is longer
MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}
PIXELS_PER_TOKEN = 750  # Anthropic's estimate of an image's input tokens: width * height / 750
LIMITS = ImageInput(height=1, width=1)  # only the decoding guards (max bytes, max pixels) apply


@dataclass(frozen=True)
class ImageRequest:
    """One screenshot as it is sent: the encoded bytes, their media type and pixel size, and the
    sha-256 of the source file's bytes (the cache key's part)."""

    data: bytes
    media_type: str
    width: int
    height: int
    sha256: str

    @property
    def tag(self) -> str:
        """What stands for the image in the cache key and in a Result: its hash, never its bytes.
        MAX_SIDE is part of it, so changing what the model sees asks again."""
        return f"<image sha256={self.sha256} max_side={MAX_SIDE}>"

    def base64(self) -> str:
        return base64.b64encode(self.data).decode("ascii")

    def data_url(self) -> str:
        return f"data:{self.media_type};base64,{self.base64()}"

    @property
    def tokens(self) -> int:
        return self.width * self.height // PIXELS_PER_TOKEN


def image_request(source: bytes | str | Path, limits: ImageInput = LIMITS) -> ImageRequest:
    """The request for one image file or upload; ImageRejected names what is wrong with it."""
    data = read_bytes(source, limits.max_bytes)
    image = open_image(data, limits)
    digest = hashlib.sha256(data).hexdigest()
    width, height = image.size
    media_type = MEDIA_TYPES.get(image.format)
    if media_type and max(width, height) <= MAX_SIDE and _base64_size(len(data)) <= MAX_BASE64:
        return ImageRequest(data, media_type, width, height, digest)
    rgb = to_rgb(image)
    scale = min(1.0, MAX_SIDE / max(width, height))
    if scale < 1:
        rgb = rgb.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.LANCZOS)
    encoded, media_type = _encode(rgb, "JPEG" if image.format == "JPEG" else "PNG")
    if _base64_size(len(encoded)) > MAX_BASE64:  # a noisy PNG: JPEG is a fraction of its size
        encoded, media_type = _encode(rgb, "JPEG")
    if _base64_size(len(encoded)) > MAX_BASE64:
        raise ImageRejected(f"still over the API's {MAX_BASE64} byte limit after downscaling to {rgb.size}")
    return ImageRequest(encoded, media_type, *rgb.size, digest)


def _encode(image: Image.Image, fmt: str) -> tuple[bytes, str]:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue(), MEDIA_TYPES[fmt]


def _base64_size(n: int) -> int:
    return 4 * -(-n // 3)
