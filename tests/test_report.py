"""Report helpers: the cached LLM baseline joins the table only for the holdout it was measured on."""

from __future__ import annotations

import json

import pytest

from routelet.data.rows import sha256_file
from routelet.evaluation.report import llm_baselines

SCORES = {"claude-haiku": {"accuracy": 0.91, "in_scope_accuracy": 0.95, "oos_recall": 0.7}}


def test_baseline_for_this_holdout_is_read(tmp_path):
    holdout = tmp_path / "test.jsonl"
    holdout.write_text('{"text": "hi", "label": "greeting"}\n')
    path = tmp_path / "baselines.json"
    path.write_text(json.dumps({"holdout": {"sha256": sha256_file(holdout), "models": SCORES}}))
    assert llm_baselines(path, sha256_file(holdout)) == SCORES


def test_missing_file_or_another_holdout_gives_nothing(tmp_path):
    path = tmp_path / "baselines.json"
    assert llm_baselines(path, "abc") == {}
    path.write_text(json.dumps({"holdout": {"sha256": "def", "models": SCORES}}))
    assert llm_baselines(path, "abc") == {}


@pytest.mark.parametrize("text", ["{not json", '{"holdout": {"models": {}}}', '{"holdout": {"sha256": "abc", "models": [1]}}'])
def test_malformed_file_is_named(tmp_path, text):
    path = tmp_path / "baselines.json"
    path.write_text(text)
    with pytest.raises(ValueError, match="baselines.json"):
        llm_baselines(path, "abc")
