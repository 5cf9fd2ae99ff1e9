import numpy as np

import pytest
from sklearn.metrics import f1_score

from routelet.evaluation.metrics import classification, macro_f1, wilson


def test_wilson_interval_contains_the_proportion_and_handles_extremes():
    low, high = wilson(97, 100)
    assert low < 0.97 < high and high < 1
    assert wilson(0, 10)[0] == 0 and wilson(10, 10)[1] == 1


def test_classification_report():
    y = np.array([0, 0, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 2])
    result = classification(y, predicted, ["a", "b", "c"])
    assert result["accuracy"] == 0.8
    assert result["per_route"]["b"] == {"precision": 0.6667, "recall": 1.0, "f1": 0.8, "support": 2}
    assert result["confusion"] == [[1, 1, 0], [0, 2, 0], [0, 0, 1]]
    assert result["macro_f1_ci95"][0] <= result["macro_f1"] <= result["macro_f1_ci95"][1]


@pytest.mark.parametrize("seed", range(5))
def test_macro_f1_is_sklearns_including_routes_never_seen(seed):
    rng = np.random.default_rng(seed)
    n = 6
    y = rng.integers(0, n - 1, 40)  # route 5 is never true, and some draws never predict a route
    predicted = np.where(rng.random(40) < 0.6, y, rng.integers(0, n - 2, 40))
    expected = f1_score(y, predicted, labels=range(n), average="macro", zero_division=0)
    assert macro_f1(y, predicted, n) == pytest.approx(expected, abs=1e-12)
    assert macro_f1(y[:0], predicted[:0], n) == 0.0
