"""The serving side stays light: every module of routelet.serving, the CLI and the LLM teacher
imports with torch, sklearn and transformers blocked (what `pip install routelet` without the
train extra gives a server)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

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
