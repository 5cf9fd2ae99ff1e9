"""The learning curve on a small prepared folder: one point per size, and a size that picks the same
rows as `all` (every label has fewer rows) reuses that fit instead of training again.

    .venv/bin/pytest -q tests/test_learning_curve.py
"""

from __future__ import annotations

import json

from routers import ROUTES, synthetic_dataset

from routelet.data.dataset import load_prepared
from routelet.data.taxonomy import Taxonomy
from routelet.evaluation.learning_curve import learning_curve
from routelet.families.tfidf import TfidfFamily


def test_a_size_over_every_label_count_reuses_the_fit_of_all(tmp_path):
    Taxonomy.model_validate({"routes": ROUTES, "reject": "oos"}).save(tmp_path / "taxonomy.json")
    for split, (n, seed) in {"train": (12, 0), "calib": (4, 2), "test": (6, 1)}.items():
        texts, labels = synthetic_dataset(n_per_label=n, seed=seed)
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps({"text": t, "label": label}) + "\n"
                                                         for t, label in zip(texts, labels)))
    fits = []

    def make_family():
        fits.append(1)
        return TfidfFamily(char_ngrams=(2, 4)), "fine"

    points = learning_curve(make_family, load_prepared(tmp_path), [4, 64, None], seed=0, name="tfidf")
    assert [p["per_label"] for p in points] == [4, 64, 12] and [p["rows"] for p in points] == [16, 48, 48]
    assert len(fits) == 2  # 64 per label picks every row: the `all` point is the same fit
    assert points[1] | {"per_label": 12} == points[2] and 0 <= points[0]["accuracy"] <= 1
