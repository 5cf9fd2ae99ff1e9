"""dvc.yaml matches the code: every stage depends on each library module its command imports, so a
change there re-runs it, and the artifact paths in dvc.yaml are the ones routelet.paths names.

A stage's modules are the import closure of `stages/<name>.py` inside src/routelet: module-level
imports (a function's lazy import is something the stage may never run), the packages they run on
the way (their __init__.py, unless empty), and the families a stage loads through the registry
(its own for train@<name>, all of them for a stage that loads any family).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from routelet import paths
from routelet.families import registered

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


@pytest.fixture(scope="module")
def stages():
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return {stage.addressing: (stage.cmd, [str(dep.def_path) for dep in stage.deps],
                                   [str(out.def_path) for out in stage.outs])
                for stage in repo.index.stages if stage.cmd}  # not data/screens.dvc: it runs nothing


def module_file(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_imports(path: Path, package: str) -> set[str]:
    """routelet modules imported at module level by the file (absolute or relative imports)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import module`
    return {name for name in found if name.split(".")[0] == "routelet" and module_file(name)}


def closure(roots: set[str]) -> set[Path]:
    """Files of the modules in `roots`, their packages' __init__.py, and everything they import."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ first
            prefix = ".".join(parts[:i])
            if prefix in seen or not module_file(prefix):
                continue
            seen.add(prefix)
            path = module_file(prefix)
            package = prefix if path.name == "__init__.py" else ".".join(prefix.split(".")[:-1])
            todo += module_imports(path, package)
    files = {module_file(name) for name in seen}
    return {f for f in files if f.name != "__init__.py" or ast.parse(f.read_text()).body}


def stage_modules(addressing: str, cmd: str) -> set[Path]:
    script = ROOT / (cmd.split()[2].replace(".", "/") + ".py")  # python -m stages.<name>
    roots = module_imports(script, "stages")
    if addressing.startswith("train@"):
        import yaml

        entry = yaml.safe_load((ROOT / "params.yaml").read_text())["train"][addressing.split("@")[1]]
        roots.add(f"routelet.families.{entry['family']}")
    elif "routelet.families" in roots:  # load_trained / build_family: any registered family
        roots |= {f"routelet.families.{name}" for name in registered()}
    return closure(roots) | {script}


def missing(modules: set[Path], deps: list[str]) -> set[str]:
    covered = [ROOT / dep for dep in deps]
    return {str(m.relative_to(ROOT)) for m in modules if not any(m == c or c in m.parents for c in covered)}


def test_every_stage_depends_on_what_it_imports(stages):
    gaps = {name: sorted(missing(stage_modules(name, cmd), deps)) for name, (cmd, deps, _) in stages.items()}
    assert {name: gap for name, gap in gaps.items() if gap} == {}


def test_the_check_fails_when_a_dependency_is_removed(stages):
    cmd, deps, _ = stages["export_onnx"]
    modules = stage_modules("export_onnx", cmd)
    assert missing(modules, [d for d in deps if d != "src/routelet/export"]) >= {
        "src/routelet/export/ship.py", "src/routelet/export/onnx.py", "src/routelet/export/int8.py"}
    cmd, deps, _ = stages["train@setfit"]
    assert missing(stage_modules("train@setfit", cmd), [d for d in deps if not d.endswith("setfit.py")]) == {
        "src/routelet/families/setfit.py"}


def test_train_stages_load_only_their_own_family(stages):
    cmd, _, _ = stages["train@tfidf"]
    names = {str(m.relative_to(ROOT)) for m in stage_modules("train@tfidf", cmd)}
    assert "src/routelet/families/tfidf.py" in names and "src/routelet/families/setfit.py" not in names


def test_artifact_paths_come_from_one_place(stages):
    outs = {out for _, _, stage_outs in stages.values() for out in stage_outs}
    for path in (paths.PREPARED, paths.ENCODER, paths.ROUTER, paths.CHECKDATA, paths.CHECKDATA_SUMMARY, paths.CALIBRATION, paths.EXPORT,
                 paths.METRICS, paths.TIMINGS, paths.DETAILS):
        assert str(path) in outs, f"routelet.paths has {path}, which no dvc.yaml stage writes"
    assert {f"{paths.MODELS}/{name}" for name in ("tfidf", "setfit")} <= outs
    stage_sources = "".join(p.read_text() for p in (ROOT / "stages").glob("*.py"))
    assert '"data/' not in stage_sources and '"report/' not in stage_sources  # paths come from routelet.paths
