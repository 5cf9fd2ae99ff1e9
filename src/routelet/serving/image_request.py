"""Images in a POST /v1/route body for an image router (router.json `input.modality: image`):
a multipart/form-data upload or base64 JSON, decoded with image_input's guards before any inference.

    curl -F image=@shot.png localhost:8000/v1/route                          # one result
    curl -F images=@a.png -F images=@b.png -F top_k=2 localhost:8000/v1/route  # {"results": [...]}
    {"image": "<base64>"} or {"images": ["data:image/png;base64,...", ...]}   # the same, as JSON

Field names mirror the text body: `image` is one image and one result back, `images` one or more
and `{"results": [...]}` back. `read_form` turns a multipart body into `(field, bytes)` items and
`ImageRequest` checks a JSON body; `decode` opens every item with `image_input.open_image` and says,
per item, why one is refused: 413 when over the per-image size limit, 422 for everything else (not
base64, not an image, truncated, zero-size, unsupported mode, over the pixel limit).
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from routelet.serving.router_format import ImageInput

if TYPE_CHECKING:
    from PIL import Image

SEND_IMAGES = ('this router routes images, not text: send {"image": "<base64>"} or {"images": [...]} as JSON, '
               'or upload files as multipart/form-data under "image" (one) or "images" (several)')
SEND_TEXT = 'this router routes text, not images: send {"text": "..."} or {"texts": [...]} as JSON'
ONE_OF = 'send exactly one of "image" (one image) or "images" (a list of images)'
_FORM_FIELDS = ("image", "images", "top_k")


class Items(NamedTuple):
    """The images of one request, each with the field name its errors are reported under."""

    items: list[tuple[str, bytes | str]]  # bytes from an upload, str (base64) from JSON
    single: bool  # `image`: answer with one result, not {"results": [...]}
    top_k: int


def image_request_model(max_images: int, max_top_k: int) -> type[BaseModel]:
    """The JSON body for an image router, with this app's limits built into its validators."""

    def check_batch(images: Any) -> Any:
        if isinstance(images, list) and len(images) > max_images:
            raise ValueError(f"batch has {len(images):,} images; the limit is {max_images:,}: "
                             "split them into several requests")
        return images

    class ImageRouteRequest(BaseModel):
        """For an image router: send exactly one of `image` (one result back) or `images`
        (`{"results": [...]}` back), each the base64 of an image file or a data: URL."""

        model_config = ConfigDict(strict=True, extra="forbid")
        image: str | None = Field(None, description="one image file, base64 (or data:image/png;base64,...)")
        images: Annotated[list[str], BeforeValidator(check_batch)] | None = Field(
            None, description=f"a batch of at most {max_images} images, each base64 or a data: URL")
        top_k: int = Field(3, ge=1, le=max_top_k, description="how many top routes to list")

        @model_validator(mode="after")
        def one_of_image_or_images(self):
            if (self.image is None) == (self.images is None):
                raise ValueError(ONE_OF)
            return self

        def items(self) -> Items:
            if self.images is None:
                return Items([("image", self.image)], True, self.top_k)
            return Items([(f"images[{i}]", item) for i, item in enumerate(self.images)], False, self.top_k)

    return ImageRouteRequest


def form_schema(max_images: int, max_top_k: int) -> dict:
    """OpenAPI schema of the multipart/form-data body (image routers only)."""
    return {"type": "object", "description": "For an image router: exactly one of `image` (one file, one result "
            "back) or `images` (one or more files, `{\"results\": [...]}` back).",
            "properties": {
                "image": {"type": "string", "format": "binary", "description": "one image file"},
                "images": {"type": "array", "items": {"type": "string", "format": "binary"}, "maxItems": max_images,
                           "description": f"at most {max_images} image files, the same field repeated"},
                "top_k": {"type": "integer", "minimum": 1, "maximum": max_top_k, "default": 3}}}


async def read_form(request: Request, max_images: int, max_top_k: int) -> Items | list[dict]:
    """The files of a multipart/form-data body, or the reasons ({"field", "reason"}) to refuse it."""
    try:
        async with request.form() as form:
            fields = form.multi_items()
            files = [(key, value) for key, value in fields if key in ("image", "images")]
            uploads = [(key, value.filename, await value.read()) for key, value in files
                       if isinstance(value, UploadFile)]
    except (HTTPException, MultiPartException) as exc:
        return [{"field": "body", "reason": f"malformed multipart/form-data ({getattr(exc, 'detail', exc)})"}]
    reasons = [{"field": key, "reason": _unexpected_form_field(key)} for key, _ in fields if key not in _FORM_FIELDS]
    reasons += [{"field": key, "reason": f"a text field, not a file: upload the image as a file (curl -F {key}=@shot.png)"}
                for key, value in files if not isinstance(value, UploadFile)]
    top_k = [value for key, value in fields if key == "top_k"]
    # ASCII digits only, and few: int() also takes "²"-like digits (then fails) and 5,000-digit numbers.
    if len(top_k) > 1 or (top_k and not (top_k[0].isascii() and top_k[0].isdigit() and len(top_k[0]) <= 6
                                         and 1 <= int(top_k[0]) <= max_top_k)):
        reasons.append({"field": "top_k", "reason": f"give one whole number from 1 to {max_top_k}"})
    names = {key for key, _ in files}
    if len(names) != 1 or (names == {"image"} and len(files) > 1):
        reasons.append({"field": "body", "reason": ONE_OF + ": upload one file under image, or several under images"})
    elif len(files) > max_images:
        reasons.append({"field": "images", "reason": f"batch has {len(files):,} images; the limit is {max_images:,}: "
                        "split them into several requests"})
    if reasons:
        return reasons
    single = names == {"image"}
    items = [(key if single else f"{key}[{i}] ({filename!r:.80})", data)
             for i, (key, filename, data) in enumerate(uploads)]
    return Items(items, single, int(top_k[0]) if top_k else 3)


def _unexpected_form_field(key: str) -> str:
    return SEND_IMAGES if key in ("text", "texts") else "unexpected field; the form takes image, images and top_k"


def from_base64(text: str) -> bytes:
    """The bytes of a base64 string (line breaks and missing padding are fine) or a base64 data: URL."""
    if text.startswith("data:"):
        header, comma, text = text.partition(",")
        if not comma or not header.lower().endswith(";base64"):
            raise ValueError(f"a data: URL must be base64 (data:image/png;base64,...), got {header[:60]!r}")
    compact = "".join(text.split())
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"not valid base64 ({error}): send the image file's bytes base64-encoded "
                         "(standard alphabet), or as a data: URL") from None


def decode(items: list[tuple[str, bytes | str]], spec: ImageInput, max_bytes: int
           ) -> tuple[list[Image.Image], int, list[dict]]:
    """(the decoded images, 200) or ([], 413 or 422, a reason per refused item). Every item is
    checked, so one answer names all the bad ones; 413 when any is over `max_bytes`."""
    from routelet.serving.image_input import open_image  # Pillow loads with the first image, never for a text router

    images, reasons, oversize = [], [], False
    for field, raw in items:
        try:
            data = from_base64(raw) if isinstance(raw, str) else raw
            if len(data) > max_bytes:
                oversize = True
                reasons.append({"field": field, "reason": f"{len(data):,} bytes, over the limit of {max_bytes:,} "
                                "bytes per image: downscale or recompress it"})
                continue
            images.append(open_image(data, spec))  # ImageRejected (a ValueError) says why not
        except ValueError as error:
            reasons.append({"field": field, "reason": str(error)})
    if reasons:
        return [], 413 if oversize else 422, reasons
    return images, 200, []
