"""The promotion gate: a worse candidate is refused with the table of what fell, an equal or better
one is promoted, rollback restores the previous router; the paired interval, the registry's log and
link, hostile inputs (bad lines, path-like versions, a damaged log), and the repository's guard sets."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from routers import LABELS, make_onnx_router, router_json, synthetic_dataset, tfidf_pipeline, write_router_json

from routelet.cli import main
from routelet.serving import gate
from routelet.serving.preprocess import preprocess
from routelet.serving.promote import Settings, promote, rollback
from routelet.serving.registry import Registry
from routelet.serving.reload import SELFCHECK_FILE, load_checked

ROOT = Path(__file__).resolve().parents[1]
GUARDS = {"guard_short.jsonl": "short", "guard_oos_probes.jsonl": "oos", "guard_regressions.jsonl": "regressions"}


def train_router(folder: Path, version: str, shuffle: float = 0.0, **overrides) -> Path:
    """The tests' tfidf router; `shuffle` reassigns that share of the training labels at random."""
    from routelet.export.tfidf import export_tfidf

    texts, labels = synthetic_dataset()
    rng = random.Random(1)
    labels = [rng.choice(LABELS) if rng.random() < shuffle else label for label in labels]
    pipeline = tfidf_pipeline().fit([preprocess(t) for t in texts], labels)
    folder.mkdir(parents=True, exist_ok=True)
    files = export_tfidf(pipeline, folder, temperature=1.0, labels=LABELS)
    return write_router_json(folder, router_json("tfidf", files, model_version=version, **overrides))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def routers(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("candidates")
    return {
        "good": train_router(base / "good", "good-1"),
        "same": train_router(base / "same", "good-2"),  # the same model under a new version
        "shuffled": train_router(base / "shuffled", "shuffled-1", shuffle=0.7),
        "strict": train_router(base / "strict", "strict-1", abstain={"threshold": 0.99, "margin": 0.0}),
        "onnx": make_onnx_router(base / "onnx", model_version="onnx-1"),
    }


@pytest.fixture
def settings(tmp_path) -> Settings:
    texts, labels = synthetic_dataset(n_per_label=30, seed=7)
    holdout = write_jsonl(tmp_path / "holdout.jsonl", [{"text": t, "label": y} for t, y in zip(texts, labels)])
    short = write_jsonl(tmp_path / "guard_short.jsonl", [{"text": t, "label": y} for t, y in [
        ("balance", "balance"), ("my savings", "balance"), ("wire it", "transfer"), ("send to payee", "transfer"),
        ("airline", "flight"), ("boarding now", "flight")]])
    probes = write_jsonl(tmp_path / "guard_oos.jsonl", [{"text": t, "label": "oos"} for t in [
        "a joke", "the weather", "a recipe please", "sing a song"]])
    return Settings(registry=tmp_path / "promoted", holdout=holdout, guards={str(short): 0.8, str(probes): 0.75},
                    tolerance=dict.fromkeys(gate.METRICS, 0.005))


def run(candidate: Path, settings: Settings, capsys, **options) -> tuple[int, str]:
    code = promote(candidate, settings, **options)
    return code, capsys.readouterr().out


def table_rows(text: str) -> list[dict[str, str]]:
    """The rows of the first Markdown table in `text`, as {column: cell}."""
    lines = [line for line in text.split("\n\n")[0].splitlines() if line.startswith("|")]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return [dict(zip(cells[0], row)) for row in cells[2:]]


def fallen(out: str) -> list[dict[str, str]]:
    return table_rows(out.split("What fell:\n")[1])


def current(settings: Settings) -> str:
    return Registry(settings.registry).current_version()


# ---- the paired interval


def test_paired_interval_is_newcombes():
    # With no correlation it is Newcombe's independent-samples interval: 56/70 - 48/80 -> [0.0524, 0.3339].
    low, high = gate.square_and_add(56 / 70, gate.wilson(56, 70), 48 / 80, gate.wilson(48, 80), 0.0)
    assert (round(low, 4), round(high, 4)) == (0.0524, 0.3339)
    # Fagerland et al. 2014's paired example (a, b, c, d) = (1, 1, 7, 12): estimate -6/21, inside.
    x = np.array([1, 1] + [0] * 19, bool)
    y = np.array([1, 0] + [1] * 7 + [0] * 12, bool)
    difference, low, high = gate.paired_interval(x, y)
    assert difference == pytest.approx(-6 / 21) and -0.55 < low < difference < high < 0
    # Two identical routers: difference 0, inside; a small set gives a wide interval, never [0, 0].
    same = np.array([1] * 38 + [0] * 2, bool)
    difference, low, high = gate.paired_interval(same, same)
    assert difference == 0 and low < 0 < high
    with pytest.raises(ValueError):
        gate.paired_interval(np.array([], bool), np.array([], bool))


def test_paired_interval_covers_the_true_difference():
    """95% nominal: over 400 seeded draws of 60 correlated pairs it covers at least ~92% of the time."""
    rng = np.random.default_rng(0)
    p_promoted, p_flip_up, p_flip_down = 0.85, 0.04, 0.10  # the candidate fixes 4% of misses, breaks 10% of hits
    truth = (1 - p_promoted) * p_flip_up - p_promoted * p_flip_down
    covered = 0
    for _ in range(400):
        promoted = rng.random(60) < p_promoted
        flip = rng.random(60)
        candidate = np.where(promoted, flip >= p_flip_down, flip < p_flip_up)
        _, low, high = gate.paired_interval(candidate, promoted)
        covered += low <= truth <= high
    assert covered / 400 >= 0.92


# ---- promote and rollback


def test_first_promotion_passes_and_says_so(routers, settings, capsys):
    code, out = run(routers["shuffled"], settings, capsys)
    assert code == 0 and "first promotion" in out and "promoted shuffled-1" in out
    assert current(settings) == "shuffled-1"
    (entry,) = Registry(settings.registry).entries()
    assert entry["event"] == "promote" and entry["first"] and entry["previous"] is None
    assert entry["metrics"][str(settings.holdout)]["n"] == 120 and "accuracy" in entry["metrics"][str(settings.holdout)]
    assert set(entry) >= {"git", "time", "tolerance", "source"} and entry["time"].endswith("+00:00")
    copy = settings.registry / "routers" / "shuffled-1"
    assert (settings.registry / "current").resolve() == copy.resolve()
    checks = [json.loads(line) for line in (copy / SELFCHECK_FILE).read_text().splitlines()]
    assert checks and all(set(c) == {"text", "route"} for c in checks)


def test_worse_candidate_is_refused_with_the_table(routers, settings, capsys):
    assert run(routers["good"], settings, capsys)[0] == 0
    log_before = (settings.registry / "promotions.jsonl").read_bytes()
    code, out = run(routers["shuffled"], settings, capsys)
    assert code == 1 and out.startswith("REFUSED: shuffled-1 against good-1")
    rows = fallen(out)
    assert list(rows[0]) == ["set", "metric", "n", "promoted", "candidate", "difference", "95% interval (paired)",
                             "tolerance", "floor", "verdict"]
    holdout = {row["metric"]: row for row in rows if row["set"] == str(settings.holdout)}
    assert set(holdout) == {"accuracy", "in_scope_accuracy", "oos_recall"}
    for row in holdout.values():  # a drop, its paired interval wholly under -tolerance
        low, high = map(float, row["95% interval (paired)"].strip("[]").split(","))
        assert float(row["candidate"]) < float(row["promoted"]) and low <= float(row["difference"]) <= high < -0.005
        assert row["verdict"] == "FELL: dropped more than 0.005 beyond the 95% interval"
    assert current(settings) == "good-1"
    assert (settings.registry / "promotions.jsonl").read_bytes() == log_before  # nothing logged


def test_raised_abstain_threshold_is_refused_on_in_scope_accuracy(routers, settings, capsys):
    run(routers["good"], settings, capsys)
    code, out = run(routers["strict"], settings, capsys)
    metrics = {row["metric"] for row in fallen(out) if row["set"] == str(settings.holdout)}
    assert code == 1 and "in_scope_accuracy" in metrics and "oos_recall" not in metrics  # it turns away more, not less
    assert current(settings) == "good-1"


def test_equal_and_better_candidates_are_promoted_and_rollback_restores(routers, settings, capsys):
    run(routers["shuffled"], settings, capsys)
    code, out = run(routers["good"], settings, capsys)  # better
    assert code == 0 and "good-1 against shuffled-1" in out and "FELL" not in out
    code, out = run(routers["same"], settings, capsys)  # equal: same predictions, new version
    assert code == 0 and "promoted good-2" in out and current(settings) == "good-2"
    assert run(routers["same"], settings, capsys)[1].endswith("nothing to do\n")

    assert rollback(settings.registry) == 0 and current(settings) == "good-1"
    capsys.readouterr()
    assert rollback(settings.registry) == 0 and "rolled back good-1 -> shuffled-1" in capsys.readouterr().out
    assert current(settings) == "shuffled-1"
    assert rollback(settings.registry) == 1 and "nothing to roll back to" in capsys.readouterr().out
    events = [(e["event"], e["model_version"]) for e in Registry(settings.registry).entries()]
    assert events == [("promote", "shuffled-1"), ("promote", "good-1"), ("promote", "good-2"),
                      ("rollback", "good-1"), ("rollback", "shuffled-1")]
    # The restored copy serves and passes its self-check; re-promoting a known version reuses its copy.
    assert load_checked(settings.registry / "current").model_version == "shuffled-1"
    assert run(routers["good"], settings, capsys)[0] == 0 and current(settings) == "good-1"


def test_guard_floor_refuses_and_dry_run_promotes_nothing(routers, settings, capsys):
    run(routers["good"], settings, capsys)
    short = next(g for g in settings.guards if "short" in g)
    settings.guards[short] = 1.0
    with open(short, "a") as handle:  # a text no keyword of the router reads: it abstains
        handle.write(json.dumps({"text": "zzz qqq", "label": "balance"}) + "\n")
    code, out = run(routers["same"], settings, capsys)
    assert code == 1 and "guard_short.jsonl" in out and "under the floor 1" in out
    settings.guards[short] = 0.5
    code, out = run(routers["same"], settings, capsys, dry_run=True)
    assert code == 0 and "dry run: nothing promoted" in out and current(settings) == "good-1"


def test_onnx_router_is_compared_through_the_runtime(routers, settings, capsys):
    assert run(routers["onnx"], settings, capsys)[0] == 0
    code, out = run(routers["good"], settings, capsys, dry_run=True)
    table = out.split("Every check:\n")[1] if "Every check:" in out else out.split("onnx-1:\n")[1]
    holdout = [row for row in table_rows(table) if row["set"] == str(settings.holdout)]
    assert "good-1 against onnx-1" in out and [row["metric"] for row in holdout] == list(gate.METRICS)
    for row in holdout:  # both routers scored, paired
        assert float(row["difference"]) == pytest.approx(float(row["candidate"]) - float(row["promoted"]), abs=2e-4)
    assert code == (1 if "FELL" in out else 0)


def test_taxonomy_change_needs_new_taxonomy(routers, settings, capsys, tmp_path):
    run(routers["good"], settings, capsys)
    other = tmp_path / "renamed"
    shutil.copytree(routers["same"], other)
    info = json.loads((other / "router.json").read_text())
    info["routes"][0]["labels"], info["routes"][1]["labels"] = ["balance"], ["transfer", "flight"]
    info["model_version"] = "moved-1"
    (other / "router.json").write_text(json.dumps(info))
    with pytest.raises(gate.GateError, match="route differently.*--new-taxonomy"):
        promote(other, settings)
    code, out = run(other, settings, capsys, new_taxonomy=True)
    assert code == 0 and "new taxonomy" in out and "floors enforced" in out and current(settings) == "moved-1"
    table = table_rows(out.split("moved-1 against good-1:\n")[1])
    assert table and all(row["promoted"] == "-" for row in table)  # nothing to pair with


def test_a_crash_between_log_and_link_is_repaired(routers, settings, capsys):
    run(routers["good"], settings, capsys)
    run(routers["same"], settings, capsys)
    registry = Registry(settings.registry)
    registry.point("good-1")  # as if the process died after the log line, before the link moved
    code, out = run(routers["same"], settings, capsys)
    assert "pointed at 'good-1', not at 'good-2'" in out and code == 0 and current(settings) == "good-2"


# ---- the command line and hostile input


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main(list(map(str, args)))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def params_file(tmp_path: Path, settings: Settings, **promote_section) -> Path:
    section = {"registry": str(settings.registry), "holdout": str(settings.holdout),
               "tolerance": {"accuracy": 0.01, "in_scope_accuracy": 0.01, "oos_recall": 0.02},
               "guards": settings.guards, **promote_section}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"promote": section}))
    return path


def test_cli_promote_refuse_and_rollback(routers, settings, capsys, tmp_path):
    params = params_file(tmp_path, settings)
    assert cli(capsys, "promote", routers["good"], "--params", params)[0] == 0
    code, out, _ = cli(capsys, "promote", routers["shuffled"], "--params", params)
    assert code == 1 and "What fell" in out and "| 0.01 " in out
    assert cli(capsys, "promote", routers["same"], "--params", params)[0] == 0
    code, out, _ = cli(capsys, "rollback", "--params", params)
    assert code == 0 and "good-2 -> good-1" in out


@pytest.mark.parametrize("problem, message", [
    ("missing folder", r"no such router folder"),
    ("bad holdout line", r"holdout\.jsonl: 1 bad line\(s\): .*holdout\.jsonl:3: malformed JSON"),
    ("unknown label", r"labels \['refund'\] are not labels of router"),
    ("guard without floor", r"has no floor: add .* or pass --floor extra=0.9"),
    ("path-like version", r"model_version '\.\./escape' cannot name a registry folder"),
    ("same version, other files", r"a different router was promoted as model_version 'good-1'"),
    ("damaged log", r"promotions\.jsonl:2: not a promotions log entry"),
    ("floor out of range", r"the floor of .* is 1\.5: give a number between 0 and 1"),
    ("bad params", r"promote: unknown keys \['tolerence'\]"),
    ("holdout named twice", r"an evaluation file is named twice"),
])
def test_cli_errors_name_the_place_and_exit_2(routers, settings, capsys, tmp_path, problem, message):
    params, candidate, extra = params_file(tmp_path, settings), routers["good"], []
    if problem == "missing folder":
        candidate = tmp_path / "nope"
    elif problem == "bad holdout line":
        with open(settings.holdout, "r+") as handle:
            lines = handle.readlines()
            lines[2] = '{"text": "half a line\n'
            handle.seek(0), handle.truncate(), handle.writelines(lines)
    elif problem == "unknown label":
        with open(settings.holdout, "a") as handle:
            handle.write(json.dumps({"text": "refund me", "label": "refund"}) + "\n")
    elif problem == "guard without floor":
        extra = ["--guards", write_jsonl(tmp_path / "extra.jsonl", [{"text": "balance", "label": "balance"}])]
    elif problem == "path-like version":
        candidate = write_router_json(shutil.copytree(routers["good"], tmp_path / "evil"),
                                      {**json.loads((routers["good"] / "router.json").read_text()),
                                       "model_version": "../escape"})
    elif problem == "same version, other files":
        assert cli(capsys, "promote", routers["good"], "--params", params)[0] == 0
        candidate = write_router_json(shutil.copytree(routers["shuffled"], tmp_path / "imposter"),
                                      {**json.loads((routers["shuffled"] / "router.json").read_text()),
                                       "model_version": "good-1"})
    elif problem == "damaged log":
        assert cli(capsys, "promote", routers["good"], "--params", params)[0] == 0
        with open(settings.registry / "promotions.jsonl", "a") as handle:
            handle.write('{"event": "promote", "model_version": \n')
        candidate = routers["same"]
    elif problem == "floor out of range":
        extra = ["--floor", "guard_oos=1.5"]
    elif problem == "holdout named twice":
        extra = ["--guards", settings.holdout, "--floor", "holdout=0.5"]
    elif problem == "bad params":
        params = params_file(tmp_path, settings, tolerence=0.1)
    code, _, err = cli(capsys, "promote", candidate, "--params", params, *extra)
    assert code == 2 and err.startswith("routelet promote: error: ") and re.search(message, err), err


def test_repository_guard_sets_are_valid_and_unseen():
    """evals/guard_*.jsonl: 30-80 hand-written rows, CLINC150 fine labels, no text repeating a
    CLINC150 train/valid/test text after the one preprocess (nor after dropping punctuation)."""
    taxonomy = yaml.safe_load((ROOT / "data/clinc150/taxonomy.yaml").read_text())
    labels = {label for route in taxonomy["routes"] for label in route.get("labels") or [route["name"]]}
    strip = lambda text: re.sub(r"[^\w ]+", "", preprocess(text)).strip()
    seen = set()
    for split in ("train", "valid", "test"):
        for line in (ROOT / f"data/clinc150/{split}.jsonl").read_text().splitlines():
            text = json.loads(line)["text"]
            seen.update((preprocess(text), strip(text)))
    for name, kind in GUARDS.items():
        evalset = gate.read_set(ROOT / "evals" / name)
        assert 30 <= len(evalset.texts) <= 80, name
        assert set(evalset.labels) <= labels, set(evalset.labels) - labels
        assert (set(evalset.labels) == {"oos"}) == (kind == "oos"), name
        normal = [preprocess(t) for t in evalset.texts]
        assert len(set(normal)) == len(normal), f"{name}: a text repeats"
        leaks = [t for t in evalset.texts if preprocess(t) in seen or strip(t) in seen]
        assert not leaks, f"{name} repeats CLINC150 texts: {leaks}"
    assert os.path.getsize(ROOT / "evals" / "guard_regressions.jsonl") > 0
