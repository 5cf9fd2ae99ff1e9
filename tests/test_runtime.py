"""Router.load / route on real tiny router folders of both kinds, and the torch-free promise."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from routers import (  # noqa: F401  (tfidf_folder, onnx_folder are fixtures)
    LABELS, make_onnx_router, make_tfidf_router, onnx_folder, tfidf_folder,
)

from routelet.serving.onnx_model import ONNX_BATCH
from routelet.serving.runtime import (LOW_CONFIDENCE, NO_CONTENT, NO_KNOWN_TOKENS, REJECT_ROUTE, Router,
                                      RouterError)

KINDS = ["tfidf", "onnx"]


@pytest.fixture(params=KINDS)
def folder(request) -> Path:
    return request.getfixturevalue(f"{request.param}_folder")


@pytest.fixture
def router(folder) -> Router:
    return Router.load(folder)


@pytest.mark.parametrize(
    "text, route",
    [("what is my account balance", "banking"), ("please wire money to my payee", "banking"),
     ("my flight from the airport", "travel")],
)
def test_routes_to_the_owning_route(router, text, route):
    result = router.route_one(text)
    assert (result["route"], result["abstain"]) == (route, False)
    assert result["target"] == {"banking": "assistant.banking", "travel": "assistant.travel"}[route]
    assert result["confidence"] == result["top_k"][0]["p"] > 0.55
    assert result["model_version"] == router.model_version == router.info.model_version
    ps = [item["p"] for item in result["top_k"]]
    assert ps == sorted(ps, reverse=True) and len(ps) == 3 and sum(ps) == pytest.approx(1.0)


def test_route_probability_sums_its_fine_labels(router):
    texts = ["send money to the payee", "what is my balance", "a joke about the weather"]
    fine = router.probs(texts)
    for result, row in zip(router.route(texts, top_k=3), fine):
        p = {item["route"]: item["p"] for item in result["top_k"]}
        assert p["banking"] == pytest.approx(row[LABELS.index("balance")] + row[LABELS.index("transfer")])
        assert p["travel"] == pytest.approx(row[LABELS.index("flight")])


def test_reject_route_abstains(router):
    result = router.route_one("tell me a joke and a song")
    assert result["route"] == "oos" and result["target"] == "assistant.fallback"
    assert result["abstain"] is True and result["top_k"][0]["route"] == "oos"
    assert result["abstain_reason"] == REJECT_ROUTE and result["p"] == result["confidence"]


def test_confidence_gate_abstains_to_the_reject_route(router):
    result = router.route_one("funds airport", top_k=3)  # banking and travel split: neither reaches 0.55
    assert result["abstain"] is True and result["route"] == "oos"
    assert result["abstain_reason"] == LOW_CONFIDENCE
    assert result["top_k"][0]["route"] != "oos"
    assert result["confidence"] == result["top_k"][0]["p"] < 0.55
    # p is the abstained route's own probability, not the top route's.
    assert result["p"] == next(item["p"] for item in result["top_k"] if item["route"] == "oos") < result["confidence"]


def test_margin_gate(tmp_path):
    # "balance flight": banking 0.5 vs travel ~0.48 in the toy ONNX model.
    narrow = Router.load(make_onnx_router(tmp_path / "a", abstain={"threshold": 0.0, "margin": 0.1}))
    result = narrow.route_one("balance flight")
    assert result["abstain"] is True and result["route"] == "oos" and result["top_k"][0]["route"] == "banking"
    wide = Router.load(make_onnx_router(tmp_path / "b", abstain={"threshold": 0.0, "margin": 0.0}))
    assert wide.route_one("balance flight")["route"] == "banking"


def test_no_reject_route_abstains_with_null_route(tmp_path):
    router = Router.load(make_tfidf_router(tmp_path / "r", reject_route=None))
    result = router.route_one("zzz qqq")
    assert result["abstain"] is True and result["route"] is None and result["target"] is None
    assert result["p"] is None and result["abstain_reason"] == NO_KNOWN_TOKENS
    assert router.route_one("tell me a joke and a song")["route"] == "oos"  # just a route now


def test_top_k_is_clamped(router):
    assert len(router.route_one("balance", top_k=1)["top_k"]) == 1
    assert len(router.route_one("balance", top_k=50)["top_k"]) == 3


@pytest.mark.parametrize("n", [0, 1, 2 * ONNX_BATCH + 22])
def test_any_batch_size_keeps_order(router, n):
    words = ["balance", "flight", "joke", "wire the payee", "boarding the airline now", "zzz", ""]
    texts = [" ".join(words[j % len(words)] for j in range(i % 5 + 1)) + f" {i}" for i in range(n)]
    results = router.route(texts)
    assert len(results) == n
    for text, result in zip(texts, results):
        single = router.route_one(text)
        assert result["route"] == single["route"]
        assert result["confidence"] == pytest.approx(single["confidence"], abs=1e-6)


def test_preprocess_is_applied(router):
    assert router.route_one("Send money to bob.smith@example.com") == router.route_one("send money to <email>")
    np.testing.assert_array_equal(router.probs(["WIRE   the PAYEE"]), router.probs(["wire the payee"]))


# ---------------------------------------------------------------------------------------------
# input with nothing the model can read abstains, with the reason

GARBAGE = {
    "NUL": ("\u0000\u0000", NO_CONTENT),
    "zero-width space": ("\u200b", NO_CONTENT),
    "emoji only": ("\U0001F642\U0001F389\U0001F680", NO_CONTENT),
    "non-characters": ("\uFFFE\uFFFF", NO_CONTENT),
    "empty": ("", NO_CONTENT),
    "blank": (" \t \u3000 ", NO_CONTENT),
    "punctuation only": ("?!... ;-- ***", NO_CONTENT),
    "control characters": ("\x01\x02\x7f\u200d\ufeff", NO_CONTENT),
    "unknown letters only": ("ß" * 500, NO_KNOWN_TOKENS),
    "unknown words only": ("zzz qqq", NO_KNOWN_TOKENS),
}


@pytest.mark.parametrize("name", list(GARBAGE))
def test_garbage_abstains_with_a_reason(router, name):
    text, reason = GARBAGE[name]
    result = router.route_one(text)
    assert (result["abstain"], result["route"], result["abstain_reason"]) == (True, "oos", reason)
    assert result["p"] == next(item["p"] for item in router.route_one(text, top_k=3)["top_k"] if item["route"] == "oos")
    # Inside a batch of readable texts, the same.
    batch = router.route(["what is my account balance", text, "my flight from the airport"])
    assert batch[1] == result and batch[0]["abstain_reason"] is None and batch[2]["route"] == "travel"


def test_readable_text_around_garbage_is_routed(router):
    result = router.route_one("\u200b\U0001F642 what is my account balance \u0000")
    assert result["route"] == "banking" and result["abstain"] is False and result["abstain_reason"] is None


@pytest.mark.parametrize("text", ["caf\udce9 balance", "\udcff\udcfe", "\ud800 my flight \udfff"])
def test_surrogate_escaped_text_routes(router, text):
    """What Python makes of undecodable bytes (surrogateescape) must not reach the tokenizer."""
    result = router.route_one(text)
    assert result["route"] in {"banking", "travel", "oos"}
    assert router.route([text, "balance"])[0] == result


def test_a_single_string_is_refused(router):
    with pytest.raises(TypeError, match="route_one"):
        router.route("what is my balance")


def test_token_type_ids_are_fed_when_declared(tmp_path, onnx_folder):
    with_types = Router.load(make_onnx_router(tmp_path / "t", token_type_ids=True))
    assert "token_type_ids" in with_types._models[0].inputs
    texts = ["balance", "flight airport", "zzz"]
    np.testing.assert_allclose(with_types.probs(texts), Router.load(onnx_folder).probs(texts))


def test_threads_reach_onnxruntime(onnx_folder):
    options = Router.load(onnx_folder, threads=2)._models[0].session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 1)


# ---------------------------------------------------------------------------------------------
# broken folders: RouterError naming the path and what to do


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "copy"))


def _edit_json(path: Path, **changes) -> None:
    info = json.loads(path.read_text())
    info.update(changes)
    path.write_text(json.dumps(info))


def _edit_tier(path: Path, **changes) -> None:
    info = json.loads(path.read_text())
    info["tiers"][0].update(changes)
    path.write_text(json.dumps(info))


BREAKAGES = {
    "missing router.json": (lambda f: (f / "router.json").unlink(), "router.json: file is missing"),
    "router.json not JSON": (lambda f: (f / "router.json").write_text("{nope"), "router.json: not valid JSON"),
    "format_version 1": (lambda f: _edit_json(f / "router.json", format_version=1), "format_version 1"),
    "unknown kind": (lambda f: _edit_tier(f / "router.json", kind="xgboost"), "tiers.0.kind: Input should be"),
    "tier without a model file": (lambda f: _edit_tier(f / "router.json", files={}), "files.model must name"),
    "unknown field": (lambda f: _edit_json(f / "router.json", colour="red"), "colour: Extra inputs"),
    "label owned by no route": (
        lambda f: _edit_json(f / "router.json", labels=LABELS + ["extra"]), "belong to no route"),
    "route with unknown label": (
        lambda f: _edit_json(f / "router.json", routes=[{"name": "x", "labels": ["nope"]}]), "not in labels"),
    "unknown reject route": (lambda f: _edit_json(f / "router.json", reject_route="nope"), "reject route 'nope'"),
    "other preprocess version": (
        lambda f: _edit_json(f / "router.json", preprocess_version="0"), "preprocess_version '0'"),
}
MODEL_BREAKAGES = {
    "tfidf": {
        "missing npz": (lambda f: (f / "tfidf.npz").unlink(), "tfidf.npz: file is missing"),
        "corrupt npz": (lambda f: (f / "tfidf.npz").write_bytes(b"garbage"), "tfidf.npz: not a valid"),
        "corrupt json": (lambda f: (f / "tfidf.json").write_text("[1, 2"), "tfidf.json: not a valid"),
    },
    "onnx": {
        "missing model": (lambda f: (f / "model.onnx").unlink(), "model.onnx: file is missing"),
        "corrupt model": (lambda f: (f / "model.onnx").write_bytes(b"\x08garbage"), "model.onnx: onnxruntime"),
        "corrupt tokenizer": (lambda f: (f / "tokenizer.json").write_text("{}"), "tokenizer.json: not a readable"),
        "too few labels": (
            lambda f: _edit_json(f / "router.json", labels=LABELS[:3],
                                 routes=[{"name": "all", "labels": LABELS[:3]}], reject_route=None),
            "outputs shape (1, 4) but router.json has 3 labels"),
    },
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("breakage", list(BREAKAGES) + ["model"])
def test_broken_folder_raises_router_error(request, tmp_path, kind, breakage):
    cases = [BREAKAGES[breakage]] if breakage != "model" else MODEL_BREAKAGES[kind].values()
    for i, (break_it, message) in enumerate(cases):
        folder = _copy(request.getfixturevalue(f"{kind}_folder"), tmp_path / str(i))
        break_it(folder)
        with pytest.raises(RouterError) as error:
            Router.load(folder)
        assert message in str(error.value)
        assert str(folder) in str(error.value)
        assert "; " in str(error.value)  # followed by what to do


def test_missing_folder(tmp_path):
    with pytest.raises(RouterError, match="no such router folder.*--router"):
        Router.load(tmp_path / "nope")
    assert issubclass(RouterError, ValueError)


# ---------------------------------------------------------------------------------------------
# torch-free: the console script routes with torch, sklearn and transformers unimportable

BLOCKER = '''
import sys

class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "sklearn", "transformers"):
            raise ImportError(f"{name} is blocked in this test: the runtime must not need it")
        return None

sys.meta_path.insert(0, _Blocked())
'''


@pytest.fixture
def no_torch_env(tmp_path) -> dict:
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    env = dict(os.environ, PYTHONPATH=str(blocker))
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "blocked in this test" in probe.stderr
    return env


@pytest.mark.parametrize("kind", KINDS)
def test_console_script_routes_without_torch(request, no_torch_env, kind):
    folder = request.getfixturevalue(f"{kind}_folder")
    script = Path(sys.executable).parent / "routelet"
    done = subprocess.run([str(script), "route", "please wire money to my payee", "--router", str(folder)],
                          env=no_torch_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["route"] == "banking" and result["abstain"] is False
    assert result["model_version"] == f"{kind}-test0001"
