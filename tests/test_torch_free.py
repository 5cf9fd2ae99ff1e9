"""The serving side stays light: every module of routelet.serving, the CLI and the LLM teacher
imports with torch, sklearn and transformers blocked (what `pip install routelet` without the
train extra gives a server); a text router and its server load and route without importing Pillow."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest
from routers import image_folder, tfidf_folder  # noqa: F401  (fixtures)

import routelet.llm
import routelet.serving

BLOCKED = ("torch", "sklearn", "transformers", "sentence_transformers", "scipy")
SCRIPT = f'''
import importlib, sys

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ImportError(name + " is blocked: the serving side must not need it")

sys.meta_path.insert(0, Blocked())
for name in sys.argv[1:]:
    importlib.import_module(name)
'''


def modules(package) -> list[str]:
    return [f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__)]


def test_serving_cli_and_llm_import_without_torch_sklearn_or_transformers():
    names = modules(routelet.serving) + modules(routelet.llm) + ["routelet.cli", "routelet.paths"]
    assert "routelet.serving.router_format" in names and "routelet.serving.runtime" in names
    done = subprocess.run([sys.executable, "-c", SCRIPT, *names], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_blocker_blocks():
    done = subprocess.run([sys.executable, "-c", SCRIPT, "routelet.families.setfit"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0 and "is blocked" in done.stderr


@pytest.mark.parametrize("kind, sample, loads_pillow", [("tfidf", "what is my balance", False),
                                                       ("image", b"not an image", True)])
def test_pillow_loads_only_with_an_image_router(request, kind, sample, loads_pillow):
    """A text router's process, server included, never imports Pillow or the image tiers; an image
    router's does."""
    folder = request.getfixturevalue(f"{kind}_folder")
    code = ("import sys\nfrom routelet.serving.runtime import Router\nfrom routelet.serving.server import create_app\n"
            f"router = Router.load({str(folder)!r})\ncreate_app(router)\nrouter.route([{sample!r}])\n"
            "print(sorted(m for m in sys.modules if m == 'PIL' or m.startswith('routelet.serving.image')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    pillow = ["PIL", "routelet.serving.image_input", "routelet.serving.image_models"] if loads_pillow else []
    expected = sorted(pillow + ["routelet.serving.image_request"])  # the server's request models need no Pillow
    assert done.stdout.strip() == repr(expected)
