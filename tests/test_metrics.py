import numpy as np

from routelet.evaluation.metrics import classification, wilson


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
