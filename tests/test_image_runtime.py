"""An image router folder through the torch-free runtime and `routelet route --image`: files, bytes
and PIL images route; a file that is not an image, missing, or a folder abstains with the reason."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from routelet.families.base import ExportOptions
from routelet.families.pixels import PixelsFamily
from routelet.serving.preprocess import PREPROCESS_VERSION
from routelet.serving.router_format import softmax
from routelet.serving.runtime import Router
from test_pixels import screens

ROUTES = [{"name": "calendar", "labels": ["calendar_month"], "target": "lora.calendar"},
          {"name": "providers", "labels": ["provider_list"], "target": "lora.providers"},
          {"name": "other", "labels": ["chat"], "target": "acme/base-vlm"}]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("image-router")
    images, labels = screens(8, 0)
    family = PixelsFamily(C=1.0).fit(images, labels)
    family.save(root / "model")
    fields = family.export(root / "model", root / "router", 1.0, ExportOptions(int8="fp32"))
    info = {"format_version": 2, "model_version": "pixels-test", "family": "pixels", "labels": family.labels_,
            "routes": ROUTES, "reject_route": "other", "input": family.input_spec().model_dump(),
            "preprocess_version": PREPROCESS_VERSION, "abstain": {"threshold": 0.5},
            "tiers": [{"family": "pixels", "temperature": 1.0, **fields}]}
    (root / "router" / "router.json").write_text(json.dumps(info))
    for i, image in enumerate(screens(2, 1)[0]):
        image.save(root / f"screen{i}.png")
    return root


def test_images_route_as_files_bytes_and_pil_images_alike(folder):
    router = Router.load(folder / "router")
    path = folder / "screen0.png"
    from PIL import Image

    results = router.route([path, path.read_bytes(), str(path), Image.open(path)])
    assert len({(r["route"], round(r["confidence"], 6)) for r in results}) == 1
    family = PixelsFamily.load(folder / "model")
    expected = softmax(family.logits([Image.open(path)]), 1.0)
    np.testing.assert_allclose(router.probs([path]), expected, atol=1e-5)


@pytest.mark.parametrize("bad, reason", [(b"GIF89a broken", "unreadable image"), (b"", "unreadable image"),
                                         ("missing.png", "unreadable image"), (".", "unreadable image")])
def test_an_unreadable_image_abstains_with_the_reason(folder, bad, reason):
    result = Router.load(folder / "router").route_one(bad)
    assert result["abstain"] and result["route"] == "other" and result["abstain_reason"].startswith(reason)


def test_cli_routes_image_files_and_names_the_bad_one(folder):
    script = Path(sys.executable).parent / "routelet"
    done = subprocess.run([str(script), "route", "--router", str(folder / "router"), "--image",
                           str(folder / "screen0.png"), str(folder / "screen1.png"), "/etc/hostname"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["image"] for line in lines] == [str(folder / "screen0.png"), str(folder / "screen1.png"), "/etc/hostname"]
    assert lines[2]["abstain_reason"].startswith("unreadable image")
    text = subprocess.run([str(script), "route", "--router", str(folder / "router"), "hello"],
                          capture_output=True, text=True, timeout=120)
    assert text.returncode == 2 and "routes images: pass --image PATH" in text.stderr
