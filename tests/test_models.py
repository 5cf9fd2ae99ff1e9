from pathlib import Path

import numpy as np
import pytest

from routelet.families.encoders import EncoderSpec
from routelet.families import load_trained, save_trained, training_labels
from routelet.families.models import EmbedModel, TfidfModel, softmax
from routelet.data.taxonomy import Taxonomy
from routers import ROUTES, synthetic_dataset
from tiny_encoder import build_tiny_encoder


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(n_per_label=30, seed=0), synthetic_dataset(n_per_label=10, seed=1)


def test_tfidf_learns_and_round_trips(tmp_path, data):
    (texts, labels), (test_texts, test_labels) = data
    model = TfidfModel(word_ngrams=[1, 2], char_ngrams=[2, 4], C=10).fit(texts, labels)
    predicted = np.array(model.labels_)[model.logits(test_texts).argmax(1)]
    assert (predicted == np.array(test_labels)).mean() > 0.9
    save_trained("tfidf", model, "fine", tmp_path / "tfidf")
    loaded = load_trained("tfidf", tmp_path / "tfidf")
    np.testing.assert_array_equal(loaded.model.logits(test_texts), model.logits(test_texts))


def test_embed_fine_and_route_levels(tmp_path, data, monkeypatch):
    monkeypatch.setenv("ROUTELET_CACHE", str(tmp_path / "cache"))
    (texts, labels), (test_texts, _) = data
    taxonomy = Taxonomy.model_validate({"routes": ROUTES, "reject": "oos"})
    spec = EncoderSpec("tiny", str(build_tiny_encoder(tmp_path / "enc")))
    for level in ("fine", "route"):
        model = EmbedModel(spec, C=10, seed=0).fit(texts, training_labels(labels, taxonomy, level))
        save_trained(f"embed_{level}", model, level, tmp_path / level)
        loaded = load_trained(f"embed_{level}", tmp_path / level)
        probs = loaded.route_probs(test_texts, taxonomy, temperature=2.0)
        assert probs.shape == (len(test_texts), 3)
        np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
        np.testing.assert_allclose(loaded.model.logits(test_texts, use_cache=False), model.logits(test_texts), atol=1e-4)
    assert sorted(load_trained("x", tmp_path / "route").model.labels_) == ["banking", "oos", "travel"]


def test_softmax_temperature_flattens():
    logits = np.array([[2.0, 0.0]])
    assert softmax(logits, 4.0)[0, 0] < softmax(logits, 1.0)[0, 0]


def test_tfidf_file_is_the_same_whatever_the_hash_seed(tmp_path):
    """DVC hashes the saved model: the same data must give the same bytes in every process."""
    import os
    import subprocess
    import sys

    script = (
        "import sys; sys.path.insert(0, 'tests'); from routers import synthetic_dataset; "
        "from routelet.families.models import TfidfModel; t, l = synthetic_dataset(10, 0); "
        "TfidfModel(C=1.0).fit(t, l).save(sys.argv[1])"
    )
    for seed in ("1", "2"):
        subprocess.run([sys.executable, "-c", script, str(tmp_path / seed)], check=True,
                       env=os.environ | {"PYTHONHASHSEED": seed}, cwd=Path(__file__).resolve().parents[1])
    assert (tmp_path / "1" / "model.pkl").read_bytes() == (tmp_path / "2" / "model.pkl").read_bytes()
