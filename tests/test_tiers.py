"""Tier thresholds (routelet.export.tiers): the accept rule chosen on calibration rows, and a tiered
router folder assembled from two real one-tier routers, answering exactly as the rule says."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from routers import LABELS, ROUTES, make_onnx_router, make_tfidf_router, synthetic_dataset

from routelet.export.tiers import assemble_tiers, choose_accept, pick, runtime_answers
from routelet.serving.router_format import RouterInfo
from routelet.serving.runtime import Router


def swap_weights(folder):
    """Swap a tfidf router's balance and flight weights: it routes banking keywords to travel and back."""
    with np.load(folder / "tfidf.npz") as npz:
        arrays = {key: npz[key] for key in npz.files}
    for key in ("coef", "intercept"):
        arrays[key][[0, 2]] = arrays[key][[2, 0]]
    np.savez(folder / "tfidf.npz", **arrays)


def accept(confidence, decided, later, y, eligible=None, reject=None):
    confidence = np.asarray(confidence, dtype=float)
    eligible = np.ones(len(confidence), bool) if eligible is None else np.asarray(eligible)
    return choose_accept(confidence, eligible, np.asarray(decided), np.asarray(later), np.asarray(y), reject)


def test_the_lowest_threshold_as_accurate_as_the_later_tiers():
    # Confidences 0.99 0.95 0.9 0.8 0.7; the fast tier is wrong at 0.8 where the later tiers are right
    # (3/4 against 4/4: not accepted there), and right at 0.7 where they are wrong (4/5 each).
    confidence, y = [0.99, 0.95, 0.9, 0.8, 0.7], [0, 1, 0, 1, 1]
    chosen = accept(confidence, [0, 1, 0, 0, 1], [0, 1, 0, 1, 0], y)
    assert chosen["accept"] == 0.7 and chosen["answered_rows"] == 5
    assert chosen["accuracy"] == chosen["later_tiers_accuracy"] == 0.8
    # With the later tiers right at 0.7 too, only rows at 0.9 and above keep the fast tier as accurate.
    chosen = accept(confidence, [0, 1, 0, 0, 1], y, y)
    assert chosen["accept"] == 0.9 and chosen["answered_share"] == 0.6


def test_out_of_scope_rows_are_judged_apart():
    # Route 9 is the reject route. At 0.8 the fast tier has won one in-scope row the later tiers lose
    # (5/5 against 4/5 overall: enough for a pooled rule), but routes the out-of-scope row at 0.85 in
    # scope where the later tiers turn it away: only the rows above 0.85 keep out-of-scope recall.
    confidence, y = [0.99, 0.95, 0.9, 0.85, 0.8, 0.7], [0, 1, 0, 9, 1, 1]
    decided, later = [0, 1, 0, 1, 1, 0], [0, 1, 0, 9, 0, 1]
    pooled = accept(confidence, decided, later, y)
    assert pooled["accept"] == 0.8 and pooled["out_of_scope_rows_answered"] == 0  # no reject route known
    chosen = accept(confidence, decided, later, y, reject=9)
    assert chosen["accept"] == 0.9 and chosen["answered_rows"] == 3 and chosen["out_of_scope_rows_answered"] == 0
    # An out-of-scope row the later tiers also route in scope costs nothing: it is taken.
    chosen = accept(confidence, decided, [0, 1, 0, 2, 0, 1], y, reject=9)
    assert chosen["accept"] == 0.7 and chosen["out_of_scope_rows_answered"] == 1


def test_a_tolerance_lets_a_fast_tier_lose_that_much_out_of_scope_recall():
    # Two out-of-scope rows (route 9); the fast tier loses the one at 0.85 that the later tiers turn away.
    confidence, y = [0.99, 0.95, 0.9, 0.85, 0.8, 0.7], [0, 1, 0, 9, 1, 9]
    decided, later = [0, 1, 0, 1, 1, 2], [0, 1, 0, 9, 1, 9]
    assert accept(confidence, decided, later, y, reject=9)["accept"] == 0.9
    # 0.5 of recall allows one of the two rows: down to 0.8; the second at 0.7 would be a second row lost.
    chosen = choose_accept(np.array(confidence), np.ones(6, bool), np.array(decided), np.array(later), np.array(y), 9, 0.5)
    assert chosen["accept"] == 0.8 and chosen["out_of_scope_rows_lost"] == 1
    with pytest.raises(ValueError, match="tier_oos_tolerance"):
        choose_accept(np.array(confidence), np.ones(6, bool), np.array(decided), np.array(later), np.array(y), 9, 1.5)


def test_ties_are_accepted_together():
    # The second row at 0.9 is wrong: a threshold of 0.9 takes both rows at 0.9, 0.8 all three.
    assert accept([0.9, 0.9, 0.8], [0, 1, 0], [0, 0, 0], [0, 0, 0]) is None


def test_only_eligible_rows_count():
    # The runtime would not let the fast tier answer the first row (its top is the reject route, or it
    # knows no token there): that row's wrong answer does not count against it.
    chosen = accept([0.999, 0.9], [2, 0], [0, 0], [0, 0], eligible=[False, True])
    assert chosen["accept"] == 0.9 and chosen["answered_rows"] == 1


def test_no_rows_or_never_as_accurate_gives_none():
    assert accept([], [], [], []) is None
    assert accept([0.99, 0.9], [1, 1], [0, 0], [0, 0]) is None
    assert accept([0.99], [-1], [-1], [0])["accept"] == 0.99  # both give no route: as accurate


def test_pick_takes_the_answering_tiers_rows():
    a, b = np.zeros((3, 2)), np.ones((3, 2))
    assert pick([a, b], np.array([0, 1, 0])).tolist() == [[0, 0], [1, 1], [0, 0]]
    assert pick([a, b], np.array([], dtype=int)).shape == (0, 2)


@pytest.fixture(scope="module")
def tiered(tmp_path_factory):
    """A tfidf tier then the toy ONNX tier, assembled on a seeded calibration split."""
    folder = tmp_path_factory.mktemp("tiered") / "router"
    make_tfidf_router(folder / "tfidf")
    make_onnx_router(folder / "embed")
    texts, labels = synthetic_dataset(n_per_label=15, seed=3)
    names = [r["name"] for r in ROUTES]
    y = np.array([next(names.index(r["name"]) for r in ROUTES if label in r["labels"]) for label in labels])
    info, selection = assemble_tiers(folder, ["tfidf", "embed"], texts, y)
    return folder, info, selection, texts, y


def test_assembled_folder_lists_both_tiers_with_relative_files(tiered):
    folder, info, selection, _, _ = tiered
    assert [t.family for t in info.tiers] == ["tfidf", "embed"] and info.family == "embed"
    assert info.tiers[0].files == {"model": "tfidf/tfidf.npz", "vocab": "tfidf/tfidf.json"}
    assert info.tiers[1].files == {"model": "embed/model.onnx", "tokenizer": "embed/tokenizer.json"}
    assert info.input.tokenizer == "embed/tokenizer.json" and info.tiers[1].accept is None
    assert 0 < info.tiers[0].accept <= 1 and selection["tiers"][0]["accept"] == info.tiers[0].accept
    assert info.model_version == "tfidf-test0001+onnx-test0001"
    assert RouterInfo.read(folder) == info
    Router.load(folder / "tfidf"), Router.load(folder / "embed")  # each tier still serves alone


def test_router_answers_by_its_thresholds(tiered):
    folder, info, _, texts, _ = tiered
    router = Router.load(folder)
    hostile = ["", "   ", "\x00\ud800 broken", "joke " * 500, "balance <email> 4111 1111 1111 1111", "flight ✈️",
               "ß" * 300]
    batch = texts + hostile
    shipped, by = router.decide(batch)
    fast = by == 0
    route_probs = shipped @ info.route_matrix()
    assert np.all(route_probs[fast].max(axis=1) >= info.tiers[0].accept)
    assert not np.any(route_probs[fast].argmax(axis=1) == info.reject_index)  # tfidf never answers the reject route
    np.testing.assert_allclose(shipped[fast], Router.load(folder / "tfidf").probs([t for t, f in zip(batch, fast) if f]))
    np.testing.assert_allclose(shipped[~fast], Router.load(folder / "embed").probs([t for t, f in zip(batch, fast) if not f]),
                               atol=1e-6)
    results = router.route(batch)
    assert [r["tier"] for r in results] == [router.tier_names[i] for i in by]
    assert {r["tier"] for r in results} == {"tfidf", "embed"}  # the keyword data leaves work for both
    # A request's answer never depends on its batch.
    assert [router.route_one(t)["tier"] for t in hostile] == [r["tier"] for r in results[len(texts):]]


def test_calibration_figures_hold_on_the_calibration_split(tiered):
    folder, _, selection, texts, y = tiered
    answers = runtime_answers(folder, texts)
    fast = answers["tier"] == 0
    assert fast.sum() == selection["tiers"][0]["answered_rows"]
    assert (answers["route"][fast] == y[fast]).mean() == pytest.approx(selection["tiers"][0]["accuracy"])
    assert selection["tiers"][0]["accuracy"] >= selection["tiers"][0]["later_tiers_accuracy"]
    assert selection["tiers"][1] == {"family": "embed", "accept": None} and selection["dropped"] == {}


def test_tiers_with_other_labels_are_refused(tmp_path):
    make_tfidf_router(tmp_path / "tfidf")
    make_onnx_router(tmp_path / "embed")
    path = tmp_path / "embed" / "router.json"
    info = json.loads(path.read_text())
    path.write_text(json.dumps(info | {"routes": ROUTES[:1] + [{**ROUTES[1], "target": "other.travel"}] + ROUTES[2:]}))
    with pytest.raises(ValueError, match="tiers 'tfidf' and 'embed' were exported with different routes"):
        assemble_tiers(tmp_path, ["tfidf", "embed"], ["balance"], np.array([0]))
    path.write_text(json.dumps(info | {"labels": LABELS[::-1]}))
    with pytest.raises(ValueError, match="tier 'tfidf' predicts labels"):
        assemble_tiers(tmp_path, ["tfidf", "embed"], ["balance"], np.array([0]))


def test_a_tier_never_as_accurate_is_dropped_with_its_files(tmp_path):
    make_tfidf_router(tmp_path / "tfidf")
    make_onnx_router(tmp_path / "embed")
    swap_weights(tmp_path / "tfidf")  # confidently wrong where the ONNX tier is right
    texts = ["balance account funds savings", "flight airport boarding airline"]
    info, selection = assemble_tiers(tmp_path, ["tfidf", "embed"], texts, np.array([0, 1]))
    assert [t.family for t in info.tiers] == ["embed"] and "tfidf" in selection["dropped"]
    assert not (tmp_path / "tfidf").exists()
    assert Router.load(tmp_path).route_one("book a flight")["tier"] == "embed"


def test_a_missing_tier_folder_is_named(tmp_path):
    make_tfidf_router(tmp_path / "tfidf")
    with pytest.raises(ValueError, match="embed: no such router folder"):
        assemble_tiers(tmp_path, ["tfidf", "embed"], ["x"], np.array([0]))
    shutil.rmtree(tmp_path / "tfidf")


def test_three_tiers_chosen_from_the_back_and_a_useless_one_dropped(tmp_path):
    make_tfidf_router(tmp_path / "tfidf")
    make_onnx_router(tmp_path / "embed")
    shutil.copytree(tmp_path / "tfidf", tmp_path / "swapped")
    path = tmp_path / "swapped" / "router.json"
    info = json.loads(path.read_text())
    info["tiers"][0]["family"] = "swapped"
    path.write_text(json.dumps(info))
    swap_weights(tmp_path / "swapped")
    texts, labels = synthetic_dataset(n_per_label=15, seed=3)
    names = [r["name"] for r in ROUTES]
    y = np.array([next(names.index(r["name"]) for r in ROUTES if label in r["labels"]) for label in labels])
    info, selection = assemble_tiers(tmp_path, ["tfidf", "swapped", "embed"], texts, y)
    assert [t.family for t in info.tiers] == ["tfidf", "embed"] and list(selection["dropped"]) == ["swapped"]
    assert [t["family"] for t in selection["tiers"]] == ["tfidf", "embed"] and not (tmp_path / "swapped").exists()
