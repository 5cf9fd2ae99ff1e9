"""Every registered family through the one interface: fit, logits, save/load, export, reference."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from routelet.data.taxonomy import Taxonomy
from routelet.families import (Trained, build_family, family_class, family_modality, load_trained, registered,
                               save_trained, training_labels)
from routelet.families.base import ExportOptions, Family
from routelet.families.centroid import CentroidFamily
from routelet.families.encoders import EncoderSpec
from routelet.params import ConfigError
from routelet.serving.router_format import RouterInfo, softmax
from routelet.serving.runtime import Router
from routers import LABELS, ROUTES, router_json, synthetic_dataset
from tiny_encoder import build_tiny_encoder

SETTINGS = {  # small, fast settings per family (params.yaml `train.<name>` entries)
    "tfidf": {"word_ngrams": [1, 2], "char_ngrams": [2, 4], "C": 10},
    "embed": {"C": 10},
    "centroid": {"scale": 20.0},
    "setfit": {"max_steps": 4, "batch_size": 4, "max_seq_length": 16, "train_layers": 1, "precision": "fp32",
               "progress": False},
}


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(n_per_label=30, seed=0), synthetic_dataset(n_per_label=10, seed=1)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return EncoderSpec("tiny", str(build_tiny_encoder(tmp_path_factory.mktemp("enc") / "tiny")), max_length=16)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ROUTELET_CACHE", str(tmp_path / "cache"))


IMAGE_FAMILIES = {"pixels", "image_embed"}  # tested in test_pixels.py and test_image_encoders.py


def test_every_registered_family_is_tested():
    assert set(registered()) == set(SETTINGS) | IMAGE_FAMILIES


def test_family_modality_is_read_without_importing_the_family():
    """train@<name> skips a family of the other modality before its module (SetFit: torch) loads."""
    code = ("import sys; from routelet.families import family_modality, registered; "
            "print({kind: family_modality(kind) for kind in registered()}); "
            "print(sorted(m for m in sys.modules if m.startswith('routelet.families.') or m == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    modalities = ast.literal_eval(out[0])
    assert modalities == {kind: family_class(kind).modality for kind in registered()}
    assert {kind for kind, modality in modalities.items() if modality == "image"} == IMAGE_FAMILIES
    assert ast.literal_eval(out[1]) == ["routelet.families.base"]
    with pytest.raises(ConfigError, match="not registered"):
        family_modality("nope")


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_family_interface_end_to_end(tmp_path, data, encoder, name):
    (texts, labels), (test_texts, test_labels) = data
    family, level = build_family(name, SETTINGS[name], seed=0, encoder=encoder)
    assert isinstance(family, Family) and level == "fine"
    family.fit(texts, labels)
    logits = family.logits(test_texts)
    assert logits.shape == (len(test_texts), len(family.labels_)) and sorted(family.labels_) == sorted(LABELS)
    if name != "setfit":  # four contrastive steps on a random tiny encoder learn little
        accuracy = (np.array(family.labels_)[logits.argmax(1)] == np.array(test_labels)).mean()
        assert accuracy > (0.9 if name == "tfidf" else 0.5)
    np.testing.assert_allclose(family.reference(test_texts), logits, atol=1e-4)

    save_trained(name, family, level, tmp_path / name)
    loaded = load_trained(name, tmp_path / name)
    assert type(loaded.model) is type(family)
    np.testing.assert_allclose(loaded.model.logits(test_texts), logits, atol=1e-5)
    assert all(Path(p).exists() for p in loaded.model.size_paths(tmp_path / name))

    # Export into a router folder and serve it: the same probabilities through the runtime.
    out = tmp_path / "router"
    exported = loaded.model.export(tmp_path / name, out, 1.5, ExportOptions(int8="fp32"))
    tier = {"family": name, "temperature": 1.5, **exported}
    info = router_json(exported["kind"], exported["files"], labels=family.labels_, tiers=[tier],
                       input={"modality": "text", "tokenizer": exported["files"].get("tokenizer"),
                              "max_length": family.max_length()})
    (out / "router.json").write_text(json.dumps(info))
    RouterInfo.read(out)
    served = Router.load(out).probs(test_texts)
    np.testing.assert_allclose(served, softmax(logits, 1.5), atol=2e-4)


def test_route_level_sums_to_routes(tmp_path, data, encoder):
    (texts, labels), (test_texts, _) = data
    taxonomy = Taxonomy.model_validate({"routes": ROUTES, "reject": "oos"})
    family, level = build_family("embed_routes", {"family": "embed", "level": "route", "C": 10}, 0, encoder)
    assert level == "route"
    family.fit(texts, training_labels(labels, taxonomy, level))
    trained = Trained("embed_routes", family, level)
    probs = trained.route_probs(test_texts, taxonomy, temperature=2.0)
    assert probs.shape == (len(test_texts), 3)
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)


def test_centroid_is_cosine_to_label_means(data, encoder):
    (texts, labels), (test_texts, _) = data
    family = CentroidFamily(encoder, scale=10.0).fit(texts, labels)
    unit = family.embed(test_texts)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(family.head_.coef, axis=1), 10.0, rtol=1e-5)
    assert np.all(np.abs(family.logits(test_texts)) <= 10.0 + 1e-4)


@pytest.mark.parametrize("entry, message", [
    ({"family": "xgboost"}, "family 'xgboost' is not registered; choose one of: centroid, embed, image_embed, pixels, setfit, tfidf"),
    ({"family": "tfidf", "C": 1, "depth": 3}, "train.x: unknown setting 'depth' for family 'tfidf'"),
])
def test_config_errors_name_the_key_and_the_choices(entry, message):
    with pytest.raises(ConfigError, match=message):
        build_family("x", entry, seed=0)


def test_an_encoder_family_without_an_encoder_is_refused():
    with pytest.raises(ConfigError, match="train.embed: family 'embed' needs an encoder"):
        build_family("embed", {}, seed=0)


def test_binary_tfidf_gives_two_columns(data):
    (texts, labels), _ = data
    keep = [i for i, label in enumerate(labels) if label in ("flight", "oos")]
    family, _ = build_family("tfidf", SETTINGS["tfidf"], seed=0)
    family.fit([texts[i] for i in keep], [labels[i] for i in keep])
    probs = softmax(family.logits(texts[:5]))
    np.testing.assert_allclose(probs, family.pipeline_.predict_proba(texts[:5]), atol=1e-9)


def test_tfidf_file_is_the_same_whatever_the_hash_seed(tmp_path):
    """DVC hashes the saved model: the same data must give the same bytes in every process."""
    import os
    import subprocess
    import sys

    script = (
        "import sys; from pathlib import Path; sys.path.insert(0, 'tests'); from routers import synthetic_dataset; "
        "from routelet.families.tfidf import TfidfFamily; t, l = synthetic_dataset(10, 0); "
        "TfidfFamily(C=1.0).fit(t, l).save(Path(sys.argv[1]))"
    )
    for seed in ("1", "2"):
        subprocess.run([sys.executable, "-c", script, str(tmp_path / seed)], check=True,
                       env=os.environ | {"PYTHONHASHSEED": seed}, cwd=Path(__file__).resolve().parents[1])
    assert (tmp_path / "1" / "model.pkl").read_bytes() == (tmp_path / "2" / "model.pkl").read_bytes()
