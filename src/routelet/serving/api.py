"""The HTTP API's contract: the request limits, the POST /v1/route body (with the limits built into
its validators), the documented result shapes, and 422 reasons that name the field.

    RouteRequest = request_model(Limits())
    reasons = validation_reasons(error, RouteRequest)   # [{"field": "texts[3]", "reason": "text is empty"}]
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Annotated, Any

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError,
                      model_validator)

from routelet.serving.image_request import SEND_IMAGES, SEND_TEXT


@dataclass(frozen=True)
class Limits:
    """Request limits (anything above them is refused before inference) and the batching and
    deadline settings that keep one client from holding up the others."""

    max_body_bytes: int = 256 * 1024
    max_batch: int = 256
    max_text_chars: int = 2000
    max_total_chars: int = 64_000  # all texts of one request together
    max_top_k: int = 100
    batch_texts: int = 8  # texts per inference call, taken fairly from the waiting requests (2 per turn)
    header_timeout_s: float = 10.0  # from connecting (or a request's first byte) to the end of its head
    body_timeout_s: float = 10.0  # from the end of the head to the end of the body
    # An image router's requests (multipart or base64 JSON): each image is decoded whole before routing.
    max_images: int = 16
    max_image_bytes: int = 10 * 1024 * 1024  # one image file (router.json input.max_bytes may be lower)
    max_image_body_bytes: int = 32 * 1024 * 1024  # the whole body, in place of max_body_bytes (base64 adds 1/3)

    def __post_init__(self):
        for spec in fields(self):
            value = getattr(self, spec.name)
            integer = spec.type in (int, "int")
            if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) or value <= 0:
                kind = "a positive integer" if integer else "a positive number of seconds"
                raise ValueError(f"Limits.{spec.name} must be {kind}, got {value!r}")


class TopRoute(BaseModel):
    route: str
    target: str | None
    p: float


class RouteResult(BaseModel):
    route: str | None = Field(description="chosen route; the reject route (or null) when abstaining")
    target: str | None
    p: float | None = Field(description="probability of `route` (the reject route's own when abstaining)")
    confidence: float = Field(description="probability of the most likely route")
    abstain: bool
    abstain_reason: str | None = Field(
        description='why it abstains: "no readable content", "no known tokens", "reject route" or '
        '"low confidence"; null when it does not')
    top_k: list[TopRoute]
    tier: str = Field(description="the tier (model family) that answered")
    model_version: str
    deferred: bool | None = Field(None, description="with deferral on: true when the LLM chose `route`")
    deferred_reason: str | None = Field(
        None, description="why an abstention deferred to the LLM fell back to the router's answer "
        "(timeout, budget, concurrency, the API's error)")


class RouteResults(BaseModel):
    results: list[RouteResult]


def request_model(limits: Limits) -> type[BaseModel]:
    """The POST /v1/route body, with this app's limits built into its validators."""

    def check_text(text: str) -> str:
        if not text.strip():
            raise ValueError("text is empty")
        if len(text) > limits.max_text_chars:
            raise ValueError(f"text is {len(text):,} characters; the limit is {limits.max_text_chars:,}")
        return text

    def check_batch(texts: Any) -> Any:
        if isinstance(texts, list) and len(texts) > limits.max_batch:
            raise ValueError(f"batch has {len(texts):,} texts; the limit is {limits.max_batch:,}: "
                             "split it into several requests")
        return texts

    def check_total(texts: list[str] | None) -> list[str] | None:
        total = sum(map(len, texts or ()))
        if total > limits.max_total_chars:
            raise ValueError(f"the texts total {total:,} characters; the limit is {limits.max_total_chars:,}: "
                             "split them into several requests")
        return texts

    Text = Annotated[str, AfterValidator(check_text)]

    class RouteRequest(BaseModel):
        """Send exactly one of `text` (one result back) or `texts` (`{"results": [...]}` back)."""

        model_config = ConfigDict(strict=True, extra="forbid")
        text: Text | None = Field(None, description=f"one text, at most {limits.max_text_chars} characters")
        texts: Annotated[list[Text], BeforeValidator(check_batch), AfterValidator(check_total)] | None = Field(
            None, description=f"a batch of at most {limits.max_batch} texts, {limits.max_total_chars} "
            "characters in all")
        top_k: int = Field(3, ge=1, le=limits.max_top_k, description="how many top routes to list")

        @model_validator(mode="after")
        def one_of_text_or_texts(self):
            if (self.text is None) == (self.texts is None):
                raise ValueError('send exactly one of "text" (a string) or "texts" (a list of strings)')
            return self

    return RouteRequest


def _field(loc: tuple) -> str:
    """('texts', 3) -> 'texts[3]'; () -> 'body'."""
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "body"


def validation_reasons(error: ValidationError, model: type[BaseModel]) -> list[dict]:
    reasons = []
    for e in error.errors(include_url=False):
        if e["type"] == "json_invalid":
            reasons.append({"field": "body", "reason": f"malformed JSON ({e['msg']})"})
            continue
        message = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            *names, last = model.model_fields
            # A text field sent to an image router, or an image field to a text router: say what it expects.
            message = _OTHER_MODALITY.get(e["loc"][0], f"unexpected field; the body takes {', '.join(names)} and {last}")
        reasons.append({"field": _field(e["loc"]), "reason": message})
    return reasons


_OTHER_MODALITY = {"text": SEND_IMAGES, "texts": SEND_IMAGES, "image": SEND_TEXT, "images": SEND_TEXT}
