"""params.yaml, read once per stage and checked before any work: every knob of the pipeline lives there.

    params = load_params()          # ConfigError names the key, the bad value and the choices
    run(main)                       # a stage's entry point: a user error is one line and exit 2
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import yaml

from routelet.paths import PARAMS

POLICY_TARGETS = ("in_scope_accuracy", "expected_accuracy", "oos_recall", "precision")
INT8_MODES = ("dynamic", "blockwise", "fp32")


class ConfigError(ValueError):
    """A params.yaml value that cannot work: the message names the key, the value and the choices."""


def load_params(path: str | Path = PARAMS) -> dict[str, Any]:
    path = Path(path)
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; run from the repository root (where dvc.yaml is)") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    check_params(params, path)
    return params


def _choose(where: str, value: Any, choices, path: Path) -> None:
    if value not in choices:
        raise ConfigError(f"{path}: {where} is {value!r}; choose one of: {', '.join(map(str, choices))}")


def check_params(params: dict, path: Path = PARAMS) -> None:
    """Fail before any work on a value no stage could use."""
    from routelet.families import registered

    if not isinstance(params, dict):
        raise ConfigError(f"{path}: must be a mapping of sections")
    for section in ("train", "encoders", "calibrate", "export_onnx"):
        if not isinstance(params.get(section), dict):
            raise ConfigError(f"{path}: section {section!r} is missing or not a mapping")
    _choose("model", params.get("model"), sorted(params["encoders"]), path)
    for name, entry in params["train"].items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: train.{name} must be a mapping of the family's settings")
        for key, what in (("family", "a module of routelet.families with a FAMILY line"),
                          ("input", "data/prepared, or data/encoder.json for a family that uses the encoder")):
            if key not in entry:
                raise ConfigError(f"{path}: train.{name} needs `{key}`: {what}")
        _choose(f"train.{name}.family", entry["family"], registered(), path)
        _choose(f"train.{name}.level", entry.get("level", "fine"), ("fine", "route"), path)
    policy = params["calibrate"].get("policy") or {}
    _choose("calibrate.policy.target", policy.get("target"), POLICY_TARGETS, path)
    export = params["export_onnx"]
    _choose("export_onnx.int8", export.get("int8"), INT8_MODES, path)
    _choose("export_onnx.ship", export.get("ship"), ["auto", *params["train"]], path)
    tiers = export.get("tiers", "auto")
    if tiers != "auto":
        if not isinstance(tiers, list) or not tiers:
            raise ConfigError(f"{path}: export_onnx.tiers is {tiers!r}; use auto or a list such as [tfidf, setfit]")
        for name in tiers:
            _choose("export_onnx.tiers[]", name, list(params["train"]), path)
    for name in params.get("learning_curve", {}).get("families", []):
        _choose("learning_curve.families[]", name, list(params["train"]), path)


def run(main: Callable[[], int | None]) -> None:
    """Run a stage's main(): a ConfigError or another user error (ValueError, FileNotFoundError
    from the library, whose messages name the file and the fix) is one line on stderr and exit 2."""
    stage = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else "stage"
    try:
        sys.exit(main() or 0)
    except (ConfigError, FileNotFoundError) as error:
        print(f"{stage}: error: {error}", file=sys.stderr)
        sys.exit(2)
