"""Choosing what ships and exporting it (routelet.export.ship): choose_family, export_onnx.tiers, and
the router folder export_router writes from tiny trained families, one tier and two, gated on parity."""

from __future__ import annotations

import numpy as np
import pytest
from routers import ROUTES, synthetic_dataset
from tiny_encoder import build_tiny_encoder

from routelet.data.taxonomy import Taxonomy
from routelet.export.parity import ParityError, check_parity
from routelet.export.ship import choose_family, export_router, resolve_tiers, tiered_parity
from routelet.families import load_trained, save_trained, training_labels
from routelet.families.base import ExportOptions
from routelet.families.embed import EmbedFamily
from routelet.families.encoders import EncoderSpec
from routelet.families.tfidf import TfidfFamily
from routelet.params import ConfigError
from routelet.serving.router_format import RouterInfo
from routelet.serving.runtime import Router

TAXONOMY = Taxonomy.model_validate({"routes": ROUTES, "reject": "oos"})
CONFIG = {"min_agreement": 0.995, "check_fp32": True, "fallback_fp32": False}
FP32 = ExportOptions(int8="fp32")


def scored(score: float, meets: bool = True) -> dict:
    return {"selection": {"metric": "oos_recall", "score": score, "meets_target": meets}}


# --------------------------------------------------------------------------------------------
# choose_family and resolve_tiers


def test_auto_picks_the_best_calibration_score():
    name, why = choose_family({"tfidf": scored(0.80), "embed": scored(0.90)}, "auto",
                              {"tfidf": TfidfFamily, "embed": EmbedFamily}, tie=0.002)
    assert name == "embed" and why["margin_over_next"] == pytest.approx(0.10) and why["score"] == 0.90


def test_auto_ties_go_to_the_family_without_an_encoder():
    families = {"embed": EmbedFamily, "tfidf": TfidfFamily}
    assert choose_family({"embed": scored(0.901), "tfidf": scored(0.900)}, "auto", families, tie=0.002)[0] == "tfidf"
    assert choose_family({"embed": scored(0.905), "tfidf": scored(0.900)}, "auto", families, tie=0.002)[0] == "embed"


def test_a_fixed_name_wins_whatever_the_scores():
    name, why = choose_family({"tfidf": scored(0.99), "embed": scored(0.10)}, "embed",
                              {"tfidf": TfidfFamily, "embed": EmbedFamily})
    assert name == "embed" and why["rule"] == "export_onnx.ship" and why["scores"]["tfidf"]["score"] == 0.99


def test_only_families_meeting_the_target_compete_unless_none_does():
    families = {"tfidf": TfidfFamily, "embed": EmbedFamily}
    assert choose_family({"tfidf": scored(0.95, False), "embed": scored(0.70)}, "auto", families)[0] == "embed"
    assert choose_family({"tfidf": scored(0.95, False), "embed": scored(0.70, False)}, "auto", families)[0] == "tfidf"


def test_resolve_tiers():
    assert resolve_tiers("auto", "setfit", ["tfidf", "setfit"]) == ["setfit"]
    assert resolve_tiers(None, "tfidf", ["tfidf"]) == ["tfidf"]
    assert resolve_tiers(["tfidf", "setfit"], "setfit", ["tfidf", "setfit"]) == ["tfidf", "setfit"]


@pytest.mark.parametrize("setting, message", [
    (["tfidf", "bert"], "export_onnx.tiers: 'bert' is not a trained family; choose from: tfidf, setfit"),
    (["tfidf", "tfidf"], "names a family twice"),
    ([], "use auto, or a list of trained families"),
    ("tfidf,setfit", "use auto, or a list of trained families"),
    ([["tfidf"]], "use auto, or a list of trained families"),
])
def test_bad_tiers_are_named(setting, message):
    with pytest.raises(ConfigError, match=message):
        resolve_tiers(setting, "setfit", ["tfidf", "setfit"])


# --------------------------------------------------------------------------------------------
# export_router on tiny trained families


def route_ids(labels: list[str]) -> np.ndarray:
    return np.array([TAXONOMY.route_names.index(TAXONOMY.route_of(label)) for label in labels])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """tfidf, embed and embed at route level, trained on the keyword data and saved under models/."""
    root = tmp_path_factory.mktemp("ship")
    monkey = pytest.MonkeyPatch()
    monkey.setenv("ROUTELET_CACHE", str(root / "cache"))
    encoder = EncoderSpec("tiny", str(build_tiny_encoder(root / "enc")), max_length=16)
    texts, labels = synthetic_dataset(n_per_label=30, seed=0)
    settings = {"tfidf": (TfidfFamily(char_ngrams=(2, 4)), "fine"), "embed": (EmbedFamily(encoder), "fine"),
                "embed_routes": (EmbedFamily(encoder), "route")}
    for name, (family, level) in settings.items():
        save_trained(name, family.fit(texts, training_labels(labels, TAXONOMY, level)), level, root / "models" / name)
    calibration = {name: {"temperature": 1.5, "threshold": 0.5, "margin": 0.0, "gate_only_threshold": 0.5,
                          "chosen_on": "test rows"} for name in settings}
    yield root / "models", calibration
    monkey.undo()


def export(models, calibration, names, out, min_agreement=0.995):
    calib_texts, calib_labels = synthetic_dataset(n_per_label=12, seed=2)
    test_texts, _ = synthetic_dataset(n_per_label=10, seed=1)
    tiers = [load_trained(name, models / name) for name in names]
    return export_router(tiers, models, calibration, TAXONOMY, FP32, out, {"taxonomy": "abc"},
                         test_texts + ["", "joke " * 300], (calib_texts, route_ids(calib_labels)),
                         CONFIG | {"min_agreement": min_agreement})


def test_one_tier_is_the_router_folder_itself(trained, tmp_path):
    models, calibration = trained
    info, gate, shipped = export(models, calibration, ["tfidf"], tmp_path / "router")
    assert [t.family for t in info.tiers] == ["tfidf"] and info.tiers[0].files["model"] == "tfidf.npz"
    assert set(gate) == {"tiers"} and gate["tiers"]["tfidf"]["numpy"]["agreement"] == 1.0
    assert (tmp_path / "router" / "tfidf.json").is_file() and shipped.shape == (42, 4)


def test_two_tiers_in_one_folder_gated_as_a_whole(trained, tmp_path):
    models, calibration = trained
    out = tmp_path / "router"
    info, gate, shipped = export(models, calibration, ["tfidf", "embed"], out)
    assert [t.family for t in info.tiers] == ["tfidf", "embed"] and info.family == "embed"
    assert info.tiers[0].files["model"] == "tfidf/tfidf.npz" and info.tiers[1].files["model"] == "embed/model.onnx"
    assert info.input.tokenizer == "embed/tokenizer.json" and info.input.max_length == 16
    assert info.hashes == {"taxonomy": "abc"} and info.abstain.threshold == 0.5
    assert set(gate["tiers"]) == {"tfidf", "embed"} and gate["tiers"]["embed"]["fp32"]["agreement"] >= 0.995
    tiered = gate["tiered"]
    assert tiered["agreement"] == tiered["decision_agreement"] == 1.0
    assert tiered["answered_share"]["tfidf"] > 0.5  # keyword data: TF-IDF is sure of most rows
    assert sum(tiered["answered_share"].values()) == pytest.approx(1.0, abs=1e-3)
    assert gate["selection"]["tiers"][0]["accept"] == info.tiers[0].accept
    router = Router.load(out)
    assert router.route_one("what is my account balance")["tier"] == "tfidf"
    np.testing.assert_allclose(router.probs(synthetic_dataset(n_per_label=10, seed=1)[0]), shipped[:40], atol=1e-6)
    assert RouterInfo.read(out / "embed").tiers[0].accept is None  # each subfolder serves alone too


def test_the_tiered_gate_refuses_a_router_that_disagrees(trained, tmp_path):
    models, calibration = trained
    out = tmp_path / "router"
    info, _, _ = export(models, calibration, ["tfidf", "embed"], out)
    texts = ["what is my account balance", "book a flight", "tell me a joke", "send money"]
    shipped, by = Router.load(out).decide(texts)
    wrong = np.roll(shipped, 2, axis=1)  # every route moved: trained models that say something else
    report = tiered_parity(info, [wrong, wrong], shipped, by)
    assert report["agreement"] < 0.5
    with pytest.raises(ParityError, match="tiered router agrees with the trained model on"):
        check_parity(report, 0.995, what="tiered router")


def test_tiers_trained_on_other_label_levels_are_refused(trained, tmp_path):
    models, calibration = trained
    with pytest.raises(ValueError, match="tiers must share one label set"):
        export(models, calibration, ["embed_routes", "tfidf"], tmp_path / "router")
