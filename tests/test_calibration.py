import numpy as np

from routelet.evaluation.calibration import (
    Policy,
    choose_threshold,
    decisions,
    ece,
    fit_temperature_routes,
    gate_only_probs,
    oos_auroc,
    risk_coverage,
)
from routelet.serving.router_format import softmax


def synthetic(n=4000, k=4, true_t=2.5, seed=0):
    """Labels drawn from softmax(logits / true_t): the right temperature is true_t."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 4, size=(n, k))
    p = softmax(logits, true_t)
    y = np.array([rng.choice(k, p=row) for row in p])
    return logits, y


def test_temperature_recovers_the_generating_one_and_lowers_ece():
    logits, y = synthetic()
    t = fit_temperature_routes(lambda temp: softmax(logits, temp), y)
    assert abs(t - 2.5) < 0.25
    assert ece(softmax(logits, t), y) < ece(softmax(logits, 1.0), y)


def test_perfectly_confident_and_right_has_zero_ece():
    probs = np.eye(3)[[0, 1, 2, 0]]
    assert ece(probs, np.array([0, 1, 2, 0])) == 0


def test_threshold_meets_the_target_and_is_the_smallest_that_does():
    rng = np.random.default_rng(1)
    y = np.array([0] * 80 + [1] * 80 + [2] * 40)  # route 2 is the reject route
    top = np.where(y == 2, rng.uniform(0.3, 0.7, len(y)), rng.uniform(0.5, 1.0, len(y)))
    probs = np.zeros((len(y), 3))
    probs[np.arange(len(y)), np.where(y == 2, 0, y)] = top
    probs[np.arange(len(y)), np.where(y == 2, 1, 2 - (y == 0))] = 1 - top
    policy = choose_threshold(probs, y, 2, "oos_recall", 0.8)
    assert decisions(probs, y, 2, policy)["oos_recall"] >= 0.8
    # The next candidate down (any threshold in between abstains on the same rows) falls short.
    looser = Policy(threshold=probs.max(axis=1)[probs.max(axis=1) < policy.threshold].max())
    assert decisions(probs, y, 2, looser)["oos_recall"] < 0.8


def test_abstain_on_reject_class_gate_and_margin():
    probs = np.array([[0.9, 0.05, 0.05], [0.5, 0.45, 0.05], [0.1, 0.1, 0.8], [0.4, 0.3, 0.3]])
    assert Policy(threshold=0.45).abstains(probs, 2).tolist() == [False, False, True, True]
    assert Policy(margin=0.1).abstains(probs, 2).tolist() == [False, True, True, False]
    assert Policy(reject_class=False).abstains(probs, 2).tolist() == [False] * 4
    np.testing.assert_allclose(gate_only_probs(probs, 2)[2], [0.5, 0.5, 0.0])


def test_auroc_and_risk_coverage():
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.1, 0.7], [0.6, 0.3, 0.1], [0.3, 0.2, 0.5]])
    y = np.array([0, 2, 1, 2])
    assert oos_auroc(probs, y, 2) == 1.0
    curve = risk_coverage(probs, y, points=4)
    assert [p["coverage"] for p in curve] == [0.25, 0.5, 0.75, 1.0] and curve[0]["risk"] == 0.0


def test_expected_accuracy_weighs_out_of_scope_by_the_stated_share():
    # In-scope rows are confident; out-of-scope rows sit at 0.6: a threshold above 0.6 catches them
    # all at no in-scope cost, so any share > 0 picks it; with share 0 nothing is worth abstaining.
    y = np.array([0] * 90 + [2] * 10)
    probs = np.zeros((100, 3))
    probs[:90, 0], probs[:90, 1] = 0.95, 0.05
    probs[90:, 0], probs[90:, 1] = 0.6, 0.4
    assert choose_threshold(probs, y, 2, "expected_accuracy", 0.2).threshold == 0.95
    assert choose_threshold(probs, y, 2, "expected_accuracy", 0.0).threshold == 0.0


def test_in_scope_accuracy_target_takes_the_largest_threshold_that_keeps_it():
    # In-scope rows: 80 right at 0.9, 10 right at 0.7, 10 wrong at 0.6; out-of-scope rows at 0.65.
    y = np.array([0] * 100 + [2] * 20)
    probs = np.zeros((120, 3))
    top = np.array([0.9] * 80 + [0.7] * 10 + [0.6] * 10 + [0.65] * 20)
    predicted = np.array([0] * 90 + [1] * 10 + [0] * 20)
    probs[np.arange(120), predicted] = top
    probs[np.arange(120), 1 - predicted] = 1 - top
    # Keeping 0.9 in-scope accuracy allows a gate just above 0.65 (all out-of-scope rows out, and
    # nothing higher is worth its cost); keeping 0.95 allows no gate: the wrong rows count already.
    policy = choose_threshold(probs, y, 2, "in_scope_accuracy", 0.9)
    assert policy.threshold == np.nextafter(0.65, 1)
    assert decisions(probs, y, 2, policy) == {"in_scope_accuracy": 0.9, "oos_recall": 1.0, "coverage": 90 / 120,
                                              "accepted_precision": 1.0}
    assert choose_threshold(probs, y, 2, "in_scope_accuracy", 0.95).threshold == 0.0


def test_folds_are_stratified_and_seeded():
    from routelet.evaluation.calibration import fold_ids

    labels = ["a"] * 10 + ["b"] * 5 + ["c"]
    ids = fold_ids(labels, folds=5, seed=0)
    assert sorted(ids[:10].tolist()) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4] and sorted(ids[10:15].tolist()) == [0, 1, 2, 3, 4]
    assert (fold_ids(labels, 5, 0) == ids).all() and not (fold_ids(labels, 5, 1) == ids).all()


def test_out_of_fold_logits_never_score_a_row_with_a_model_that_saw_it():
    """A memorising family (scores 1 for a text it trained on) shows every row was held out."""
    from routelet.evaluation.calibration import MISSING_LOGIT, out_of_fold_logits

    class Memory:
        def fit(self, texts, labels):
            self.seen, self.labels_ = dict(zip(texts, labels)), sorted(set(labels))
            return self

        def logits(self, texts):
            return np.array([[1.0 if self.seen.get(t) == label else 0.0 for label in self.labels_] for t in texts])

    texts = [f"text {i}" for i in range(30)]
    labels = ["a", "b", "c"] * 10
    logits = out_of_fold_logits(Memory, texts, labels, ["c", "b", "a", "never"], folds=5)
    assert logits.shape == (30, 4) and (logits[:, :3] == 0.0).all() and (logits[:, 3] == MISSING_LOGIT).all()
