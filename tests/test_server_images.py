"""The HTTP server with an image router: multipart uploads and base64 JSON route like the runtime,
every kind of bad image gets a 4xx naming the item and why (and the server keeps serving), and a
text router and an image router each say what they expect when sent the other kind."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from routers import image_folder, tfidf_folder  # noqa: F401  (fixtures)
from test_pixels import screens

from routelet.serving.runtime import Router
from routelet.serving.server import Limits, create_app


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb's shape) with almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def shots() -> dict[str, bytes]:
    """One rendered screen per label, as PNG files (calendar_month, provider_list, chat)."""
    images, labels = screens(1, 1)
    return {label: png(image) for image, label in zip(images, labels)}


@pytest.fixture(scope="module")
def router(image_folder) -> Router:
    return Router.load(image_folder)


@pytest.fixture(scope="module")
def client(router) -> TestClient:
    return TestClient(create_app(router))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def assert_still_serving(client, shots):
    response = client.post("/v1/route", files={"image": ("cal.png", shots["calendar_month"], "image/png")})
    assert response.status_code == 200 and response.json()["route"] == "calendar"


def test_one_upload_routes_like_the_runtime(client, router, shots):
    response = client.post("/v1/route", files={"image": ("cal.png", shots["calendar_month"], "image/png")},
                           data={"top_k": "2"})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result == router.route_one(shots["calendar_month"], top_k=2)
    assert result["route"] == "calendar" and result["target"] == "lora.calendar" and not result["abstain"]
    assert set(result) >= {"route", "target", "p", "confidence", "abstain", "tier"} and len(result["top_k"]) == 2
    assert 0 <= float(response.headers["X-Queue-Ms"]) < 60_000


def test_a_batch_upload_answers_in_order(client, router, shots):
    files = [("images", (f"{label}.png", data, "application/octet-stream")) for label, data in shots.items()]
    response = client.post("/v1/route", files=files)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert results == router.route(list(shots.values()))
    assert [r["route"] for r in results][:2] == ["calendar", "providers"]


def test_base64_json_and_data_urls(client, router, shots):
    data = shots["provider_list"]
    expected = router.route_one(data)
    assert client.post("/v1/route", json={"image": b64(data)}).json() == expected
    wrapped = "\n".join(b64(data)[i:i + 76] for i in range(0, len(b64(data)), 76)).rstrip("=")  # MIME lines, no pad
    urls = [f"data:image/png;base64,{b64(data)}", wrapped]
    response = client.post("/v1/route", json={"images": urls, "top_k": 1})
    assert response.status_code == 200, response.text
    assert [r["route"] for r in response.json()["results"]] == [expected["route"]] * 2
    assert client.post("/v1/route", json={"images": []}).json() == {"results": []}


def _mode_16bit() -> bytes:
    return png(Image.new("I;16", (8, 8), 300))


BAD_IMAGES = {
    "not an image": (b"%PDF-1.7 not an image", 422, "not an image Pillow can read (starts with '%PDF-1.7"),
    "zero-size file": (b"", 422, "empty file (0 bytes)"),
    "huge dimensions (bomb)": (png_header(7000, 7000), 422, "7000x7000 = 49000000 pixels, over the limit of 40000000"),
    "pillow's own bomb limit": (png_header(50_000, 50_000), 422, "over the pixel limit (decompression-bomb guard)"),
    "zero width": (png_header(0, 10), 422, "not an image Pillow can read"),
    "16-bit mode": (_mode_16bit(), 422, "mode I;16 is not supported"),
}


@pytest.mark.parametrize("name", list(BAD_IMAGES))
def test_a_bad_upload_is_refused_naming_it(client, shots, name):
    data, status, reason = BAD_IMAGES[name]
    response = client.post("/v1/route", files={"image": ("x.png", data, "image/png")})
    assert response.status_code == status, response.text
    assert response.json()["detail"].startswith("image: ") and reason in response.json()["detail"]
    assert_still_serving(client, shots)


def test_a_truncated_png_in_a_batch_names_its_item_and_nothing_is_routed(client, shots):
    good = shots["calendar_month"]
    files = [("images", ("a.png", good, "image/png")), ("images", ("cut.png", good[: len(good) // 2], "image/png"))]
    response = client.post("/v1/route", files=files)
    assert response.status_code == 422
    (error,) = response.json()["errors"]
    assert error["field"] == "images[1] ('cut.png')" and error["reason"].startswith("truncated or corrupt PNG data")
    json_body = client.post("/v1/route", json={"images": [b64(good), b64(good[:200])]})
    assert json_body.status_code == 422 and json_body.json()["errors"][0]["field"] == "images[1]"


BAD_REQUESTS = {
    "base64 garbage": ({"json": {"image": "!!not base64!!"}}, 422, "image: not valid base64"),
    "base64 of non-ASCII": ({"json": {"image": "ÿÿÿÿ"}}, 422, "image: not valid base64"),
    "base64 of text": ({"json": {"images": [b64(b"hello")]}}, 422, "images[0]: not an image Pillow can read"),
    "data URL not base64": ({"json": {"image": "data:image/png,%89PNG"}}, 422, "a data: URL must be base64"),
    "image not a string": ({"json": {"image": 42}}, 422, "image: Input should be a valid string"),
    "both fields": ({"json": {"image": "x", "images": ["x"]}}, 422, 'send exactly one of "image"'),
    "no field": ({"json": {"top_k": 2}}, 422, 'send exactly one of "image"'),
    "unknown field": ({"json": {"img": "x"}}, 422, "img: unexpected field; the body takes image, images and top_k"),
    "too many images": ({"json": {"images": ["x"] * 17}}, 422, "images: batch has 17 images; the limit is 16"),
    "17 files": ({"files": [("images", (f"{i}.png", b"1")) for i in range(17)]}, 422,
                 "images: batch has 17 images; the limit is 16"),
    "two files under image": ({"files": [("image", ("a.png", b"1")), ("image", ("b.png", b"2"))]}, 422,
                              "upload one file under image, or several under images"),
    "image as a text field": ({"data": {"image": "abc"}, "files": {"top_k": (None, "1")}}, 422,
                              "image: a text field, not a file"),
    "top_k not a number": ({"data": {"top_k": "three"}, "files": {"image": ("a.png", b"1")}}, 422,
                           "top_k: give one whole number from 1 to 100"),
    "top_k a superscript digit": ({"data": {"top_k": "\u00b2"}, "files": {"image": ("a.png", b"1")}}, 422,
                                  "top_k: give one whole number"),
    "top_k of 5,000 digits": ({"data": {"top_k": "9" * 5000}, "files": {"image": ("a.png", b"1")}}, 422,
                              "top_k: give one whole number"),
    "form without files": ({"data": {"top_k": "2"}, "files": {"other": (None, "1")}}, 422, "other: unexpected field"),
    "multipart without boundary": ({"content": b"--x\r\n", "headers": {"content-type": "multipart/form-data"}}, 422,
                                   "body: malformed multipart/form-data"),
    "text/plain": ({"content": b"hi", "headers": {"content-type": "text/plain"}}, 415,
                   "Content-Type is 'text/plain'; this router routes images: upload them as multipart/form-data"),
    "form-urlencoded": ({"content": b"image=x", "headers": {"content-type": "application/x-www-form-urlencoded"}}, 415,
                        "this router routes images"),
    "image/png body": ({"content": b"\x89PNG", "headers": {"content-type": "image/png"}}, 415,
                       "this router routes images: upload them as multipart/form-data"),
    "text to an image router": ({"json": {"text": "book a flight"}}, 422, "text: this router routes images, not text"),
    "texts to an image router": ({"json": {"texts": ["a"]}}, 422, "texts: this router routes images, not text"),
    "text field in a form": ({"data": {"text": "hi"}, "files": {"image": ("a.png", b"1")}}, 422,
                             "text: this router routes images, not text"),
    "a form from another site's page": ({"files": {"image": ("a.png", b"1")}, "headers": {"origin": "http://evil.test"}},
                                        403, "another site's page"),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_a_bad_request_gets_a_reason_and_the_server_keeps_serving(client, shots, name):
    kwargs, status, reason = BAD_REQUESTS[name]
    response = client.post("/v1/route", **kwargs)
    assert response.status_code == status, response.text
    assert reason in response.json()["detail"]
    assert_still_serving(client, shots)


def test_a_form_from_this_servers_own_page_is_taken(client, shots):
    files = {"image": ("cal.png", shots["calendar_month"], "image/png")}
    for headers in ({"sec-fetch-site": "same-origin", "origin": "http://testserver"}, {"origin": "http://testserver"}):
        assert client.post("/v1/route", files=files, headers=headers).status_code == 200
    assert client.post("/v1/route", files=files, headers={"sec-fetch-site": "cross-site"}).status_code == 403


def test_size_limits_per_image_and_per_request(router, shots):
    size = len(shots["calendar_month"])
    client = TestClient(create_app(router, limits=Limits(max_image_bytes=size - 1, max_image_body_bytes=3 * size)))
    one = client.post("/v1/route", files={"image": ("cal.png", shots["calendar_month"], "image/png")})
    assert one.status_code == 413
    assert one.json()["detail"] == f"image: {size:,} bytes, over the limit of {size - 1:,} bytes per image: " \
                                   "downscale or recompress it"
    small = png(Image.new("RGB", (16, 16), (200, 10, 10)))
    mixed = client.post("/v1/route", json={"images": [b64(small), b64(shots["calendar_month"]), "@@"]})
    assert mixed.status_code == 413 and [e["field"] for e in mixed.json()["errors"]] == ["images[1]", "images[2]"]
    whole = client.post("/v1/route", files=[("images", (f"{i}.png", shots["calendar_month"], "image/png"))
                                            for i in range(4)])
    assert whole.status_code == 413 and f"the limit is {3 * size:,} bytes: send fewer or smaller images" in \
        whole.json()["detail"]
    assert client.post("/v1/route", files={"image": ("s.png", small, "image/png")}).status_code == 200


def test_the_default_body_limit_of_an_image_router_holds_images_not_megabytes_of_anything(client, shots):
    big = client.post("/v1/route", content=b"x" * (33 * 1024 * 1024), headers={"content-type": "application/json"})
    assert big.status_code == 413 and "the limit is 33,554,432 bytes: send fewer or smaller images" in \
        big.json()["detail"]
    assert_still_serving(client, shots)


def test_a_text_router_says_it_routes_text(tfidf_folder, shots):
    client = TestClient(create_app(Router.load(tfidf_folder)))
    upload = client.post("/v1/route", files={"image": ("cal.png", shots["calendar_month"], "image/png")})
    assert upload.status_code == 415 and "this router routes text, not images: send the body as JSON" in \
        upload.json()["detail"]
    as_json = client.post("/v1/route", json={"image": b64(shots["calendar_month"])})
    assert as_json.status_code == 422 and as_json.json()["detail"].startswith("image: this router routes text, not images")
    # Its body limit stays the text one: 256 KB.
    assert client.post("/v1/route", json={"text": "a" * 300_000}).status_code == 413


def test_docs_describe_both_bodies(client):
    body = client.get("/openapi.json").json()["paths"]["/v1/route"]["post"]["requestBody"]["content"]
    titles = [schema["title"] for schema in body["application/json"]["schema"]["oneOf"]]
    assert titles == ["RouteRequest", "ImageRouteRequest"]
    form = body["multipart/form-data"]["schema"]["properties"]
    assert form["image"]["format"] == "binary" and form["images"]["maxItems"] == 16
