"""`routelet promote` and `routelet rollback`: a candidate router folder replaces the promoted one
only if nothing fell, and the previous one stays one command away.

    routelet promote data/router                     # settings: params.yaml `promote:`, then flags
    routelet promote data/router --dry-run           # compare only: the table and the exit code
    routelet promote data/router --holdout evals/holdout.jsonl --guards evals/guard_short.jsonl \
        --floor guard_short=0.8 --tolerance 0.01
    routelet rollback                                # back to the router promoted before
    routelet serve --router data/promoted/current    # serves what was promoted (reloads: routelet.serving.reload)

The gate (routelet.serving.gate) scores the candidate and the last promoted router on the holdout
and every guard set through the runtime, paired on the same rows, and refuses (exit 1, a table of
what fell) when accuracy, in-scope accuracy or out-of-scope recall drops by more than the tolerance
beyond the 95% interval of the paired difference, or a guard set is under its floor. The first
promotion (nothing promoted yet) passes whatever the numbers, and says so. A promotion copies the
folder into the registry (routelet.serving.registry) with a selfcheck.jsonl, appends to the
promotions log (model_version, metrics, git commit, time) and then moves `current`.

Exit codes: 0 promoted / rolled back / nothing to do, 1 refused, 2 a usage or input error.
Torch- and sklearn-free: numpy and the runtime, so it runs where the router is served.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from routelet.paths import PARAMS, PREPARED
from routelet.serving import gate
from routelet.serving.gate import METRICS, GateError
from routelet.serving.preprocess import redact
from routelet.serving.registry import Registry, RegistryError, git_commit, now
from routelet.serving.reload import load_checked
from routelet.serving.router_format import RouterError

EXIT_REFUSED, EXIT_USER_ERROR = 1, 2
DEFAULT_TOLERANCE = 0.005
GUARD_GLOB = "guard_*.jsonl"  # in evals/: the guard sets when promote.guards names none
SELFCHECK_PER_ROUTE, SELFCHECK_CONFIDENCE = 2, 0.8  # clear answers only: no flip from float noise


@dataclass
class Settings:
    registry: Path = Path("data/promoted")
    holdout: Path = PREPARED / "test.jsonl"
    guards: dict[str, float | None] = field(default_factory=dict)  # path -> floor
    tolerance: dict[str, float] = field(default_factory=lambda: dict.fromkeys(METRICS, DEFAULT_TOLERANCE))


def _fraction(where: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise GateError(f"{where} is {value!r}: give a number between 0 and 1")
    return float(value)


def params_section(params: Path | None) -> dict:
    """The `promote:` section of the params file ({} without one; no file at the default path is fine)."""
    if params is None or (not params.is_file() and params == PARAMS):
        return {}
    try:
        section = (yaml.safe_load(params.read_text(encoding="utf-8")) or {}).get("promote") or {}
    except (OSError, yaml.YAMLError, AttributeError) as exc:
        raise GateError(f"{params}: cannot read its promote: section ({exc}); fix the file or pass --params") from None
    if not isinstance(section, dict):
        raise GateError(f"{params}: promote: must be a mapping (registry, holdout, tolerance, guards)")
    return section


def settings_from(params: Path | None, args: argparse.Namespace) -> Settings:
    """params.yaml's `promote:` section (when the file has one), then the flags over it."""
    settings, section = Settings(), params_section(params)
    where = f"{params}: promote"
    if unknown := set(section) - {"registry", "holdout", "tolerance", "guards"}:
        raise GateError(f"{where}: unknown keys {sorted(unknown)}; it takes registry, holdout, tolerance, guards")
    settings.registry = Path(args.registry or section.get("registry", settings.registry))
    settings.holdout = Path(args.holdout or section.get("holdout", settings.holdout))
    tolerance = section.get("tolerance", DEFAULT_TOLERANCE)
    if not isinstance(tolerance, dict):
        tolerance = dict.fromkeys(METRICS, tolerance)
    if unknown := set(tolerance) - set(METRICS):
        raise GateError(f"{where}.tolerance: unknown metrics {sorted(unknown)}; choose among {list(METRICS)}")
    if args.tolerance is not None:
        tolerance = dict.fromkeys(METRICS, args.tolerance)
    settings.tolerance = {m: _fraction(f"{where}.tolerance.{m}", tolerance.get(m, DEFAULT_TOLERANCE)) for m in METRICS}
    floors = section.get("guards") or {}
    if not isinstance(floors, dict):
        raise GateError(f"{where}.guards must map each guard file to its floor, e.g. evals/guard_short.jsonl: 0.8")
    guards = args.guards if args.guards is not None else list(floors) or sorted(map(str, Path("evals").glob(GUARD_GLOB)))
    settings.guards = {str(g): floors.get(str(g)) for g in guards}
    for text in args.floor or []:
        name, _, value = text.partition("=")
        matches = [g for g in settings.guards if name in (g, Path(g).stem)]
        if not matches or not value:
            raise GateError(f"--floor {text}: give NAME=VALUE with NAME one of the guard sets {list(settings.guards)} "
                            "(its path or its stem)")
        try:
            settings.guards[matches[0]] = float(value)
        except ValueError:
            raise GateError(f"--floor {text}: {value!r} is not a number") from None
    for guard, floor in settings.guards.items():
        if floor is None:
            raise GateError(f"guard set {guard} has no floor: add `{guard}: 0.9` under promote.guards in "
                            f"{params or PARAMS}, or pass --floor {Path(guard).stem}=0.9")
        settings.guards[guard] = _fraction(f"the floor of {guard}", floor)
    return settings


def evaluation_sets(settings: Settings) -> list[gate.EvalSet]:
    """The holdout, then each guard set with its floor; a file named twice is an error."""
    paths = [settings.holdout, *map(Path, settings.guards)]
    if len({p.resolve() for p in paths}) != len(paths):
        raise GateError(f"an evaluation file is named twice among the holdout and guards {[str(p) for p in paths]}: "
                        "each set is scored once")
    return [gate.read_set(settings.holdout)] + [gate.read_set(path, floor) for path, floor in settings.guards.items()]


def taxonomy_change(candidate, promoted, sets: list[gate.EvalSet]) -> str | None:
    """Why a paired comparison would compare different tasks, or None when it would not."""
    if candidate.reject_route != promoted.reject_route:
        return f"the reject route is {candidate.reject_route!r}, was {promoted.reject_route!r}"
    mine, theirs = gate.label_routes(candidate), gate.label_routes(promoted)
    moved = sorted({label for s in sets for label in s.labels if mine.get(label) != theirs.get(label)})
    return f"labels {moved[:5]} route differently" if moved else None


def selfcheck_rows(router, holdout: gate.EvalSet, outcome: gate.Outcomes) -> list[dict]:
    """A few holdout texts (redacted) the candidate answers right and clearly, per route, as it
    answers them: the registry copy must route them the same way whenever it is loaded."""
    picked, per_route = [], {}
    for index, (truth, route, confidence) in enumerate(zip(outcome.truth, outcome.predicted, outcome.confidence)):
        if route == truth and confidence >= SELFCHECK_CONFIDENCE and per_route.get(route, 0) < SELFCHECK_PER_ROUTE:
            per_route[route] = per_route.get(route, 0) + 1
            picked.append(redact(holdout.texts[index]))
    answers = router.route(picked, top_k=1)  # as stored: the redacted text
    threshold = router.info.abstain.threshold
    return [{"text": text, "route": answer["route"]} for text, answer in zip(picked, answers)
            if answer["confidence"] >= SELFCHECK_CONFIDENCE and abs(answer["confidence"] - threshold) > 0.05]


def metrics_of(sets: list[gate.EvalSet], lines: list[gate.Line]) -> dict:
    out = {s.name: {"sha256": s.sha256, "n": len(s.texts), **({"floor": s.floor} if s.floor is not None else {})}
           for s in sets}
    for line in lines:
        out[line.set][line.metric] = round(line.candidate, 6)
    return out


def compare(candidate, promoted, sets: list[gate.EvalSet], settings: Settings,
            new_taxonomy: bool) -> tuple[list[gate.Line], str | None, dict[str, gate.Outcomes]]:
    """Every check of the candidate (paired with `promoted`, when there is one and it routes the
    same labels the same way), a note on what was not compared, and the candidate's outcomes."""
    cand, prom, note = {s.name: gate.outcomes(candidate, s) for s in sets}, {}, None
    if promoted is None:
        note = ("first promotion: nothing promoted yet, so nothing to compare with; it passes "
                "(floors shown, not enforced)")
    elif (change := taxonomy_change(candidate, promoted, sets)) is None:
        prom = {s.name: gate.outcomes(promoted, s) for s in sets}
    elif new_taxonomy:
        note = f"new taxonomy ({change}): no paired comparison; floors enforced"
    else:
        raise GateError(f"{candidate.folder} and the promoted {promoted.model_version} route differently: "
                        f"{change}, so the paired comparison would compare two tasks; pass "
                        "--new-taxonomy to promote on the floors alone")
    lines = [line for s in sets for line in gate.compare_set(s, cand[s.name], prom.get(s.name), settings.tolerance)]
    if promoted is None:
        for line in lines:
            line.fell = [f"{reason} (not enforced: first promotion)" for reason in line.fell]
    return lines, note, cand


def record(registry: Registry, candidate, source: Path, previous: str | None, sets: list[gate.EvalSet],
           lines: list[gate.Line], holdout: gate.Outcomes, settings: Settings, note: str | None,
           threads: int) -> Path:
    """Copy, check the copy, log, then move `current` (the log first: `repair` finishes a crash)."""
    folder = registry.store(source, candidate.model_version, selfcheck_rows(candidate, sets[0], holdout))
    load_checked(folder, threads)  # the copy must load and pass its own self-check before it is served
    registry.append({
        "event": "promote", "model_version": candidate.model_version, "previous": previous,
        "source": str(source), "folder": str(folder.relative_to(registry.root)), "first": previous is None,
        "note": note, "metrics": metrics_of(sets, lines), "tolerance": settings.tolerance,
        "git": git_commit(), "time": now(),
    })
    registry.point(candidate.model_version)
    return folder


def promote(candidate_folder: Path, settings: Settings, dry_run: bool = False, new_taxonomy: bool = False,
            threads: int = 1, out=None) -> int:
    out, registry = out or sys.stdout, Registry(settings.registry)
    with registry.locked():
        if fixed := registry.repair():
            print(fixed, file=out)
        history = registry.history()
        candidate = load_checked(candidate_folder, threads)
        registry.folder(candidate.model_version)  # a version that cannot name a folder fails before any work
        if history and history[-1] == candidate.model_version:
            registry.check_same(candidate.model_version, candidate_folder)
            print(f"{candidate.model_version} is already the promoted router: nothing to do", file=out)
            return 0
        sets = evaluation_sets(settings)
        promoted = load_checked(registry.folder(history[-1]), threads) if history else None
        lines, note, outcomes = compare(candidate, promoted, sets, settings, new_taxonomy)
        fell = [line for line in lines if line.fell]
        versus = f"{candidate.model_version} against {promoted.model_version}" if promoted else candidate.model_version
        if note:
            print(note, file=out)
        if fell and promoted is not None:
            print(f"REFUSED: {versus}: {len(fell)} check(s) fell\n\nWhat fell:\n{gate.table(fell)}\n\n"
                  f"Every check:\n{gate.table(lines)}", file=out)
            return EXIT_REFUSED
        print(f"{versus}:\n{gate.table(lines)}", file=out)
        if dry_run:
            print("dry run: nothing promoted", file=out)
            return 0
        folder = record(registry, candidate, candidate_folder, promoted and promoted.model_version, sets, lines,
                        outcomes[sets[0].name], settings, note, threads)
        print(f"promoted {candidate.model_version}: {registry.current} -> {folder}", file=out)
        return 0


def rollback(registry_root: Path, threads: int = 1, out=None) -> int:
    out, registry = out or sys.stdout, Registry(registry_root)
    with registry.locked():
        if fixed := registry.repair():
            print(fixed, file=out)
        history = registry.history()
        if len(history) < 2:
            what = f"only {history[0]} was promoted" if history else "nothing was promoted"
            print(f"nothing to roll back to: {what} in {registry.root}", file=out)
            return EXIT_REFUSED
        target, current = history[-2], history[-1]
        load_checked(registry.folder(target), threads)  # refuse a damaged copy before it is served
        registry.append({"event": "rollback", "model_version": target, "from": current,
                         "git": git_commit(), "time": now()})
        registry.point(target)
        print(f"rolled back {current} -> {target}: {registry.current} -> {registry.folder(target)}", file=out)
        return 0


# --------------------------------------------------------------------------------------------
# the CLI (routelet.cli's COMMANDS entries call these)


def promote_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("candidate", type=Path, help="the router folder to promote (e.g. data/router)")
    parser.add_argument("--params", type=Path, default=PARAMS,
                        help="params file whose `promote:` section gives the settings (default: %(default)s)")
    parser.add_argument("--registry", help="registry folder (default: promote.registry, else data/promoted)")
    parser.add_argument("--holdout", help=f"holdout JSONL (default: promote.holdout, else {PREPARED / 'test.jsonl'})")
    parser.add_argument("--guards", nargs="*",
                        help="guard set JSONL files (default: promote.guards, else evals/guard_*.jsonl)")
    parser.add_argument("--floor", action="append", metavar="NAME=VALUE",
                        help="a guard set's floor, NAME its path or stem (repeatable; over promote.guards)")
    parser.add_argument("--tolerance", type=float,
                        help="allowed drop beyond the 95%% interval, every metric "
                        f"(default: promote.tolerance, else {DEFAULT_TOLERANCE})")
    parser.add_argument("--dry-run", action="store_true", help="compare and print the table; promote nothing")
    parser.add_argument("--new-taxonomy", action="store_true",
                        help="the candidate routes labels differently: skip the paired comparison, keep the floors")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads (default: %(default)s)")


def rollback_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=PARAMS, help="params file (default: %(default)s)")
    parser.add_argument("--registry", help="registry folder (default: promote.registry, else data/promoted)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads (default: %(default)s)")


def _guarded(command: str, run) -> int:
    try:
        return run()
    except (GateError, RegistryError, RouterError) as exc:
        print(f"routelet {command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


def run_promote(args: argparse.Namespace) -> int:
    return _guarded("promote", lambda: promote(args.candidate, settings_from(args.params, args), args.dry_run,
                                               args.new_taxonomy, args.threads))


def run_rollback(args: argparse.Namespace) -> int:
    return _guarded("rollback", lambda: rollback(
        Path(args.registry or params_section(args.params).get("registry", Settings.registry)), args.threads))
