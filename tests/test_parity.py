"""The parity gate judges confident decisions with a bound that accounts for the number of rows."""

import numpy as np
import pytest

from routelet.export.parity import ParityError, check_parity, parity


def confident_rows(n: int, disagree: int) -> tuple[np.ndarray, np.ndarray]:
    reference = np.tile([0.9, 0.1], (n, 1))
    candidate = reference.copy()
    candidate[:disagree] = [0.1, 0.9]
    return reference, candidate


def test_two_flips_in_a_small_holdout_pass():
    report = parity(*confident_rows(160, 2))  # 98.75%: the interval still reaches the floor
    assert report["n_confident"] == 160 and report["agreement"] < 0.995
    check_parity(report, min_agreement=0.995)


def test_a_large_holdout_clearly_under_the_floor_fails():
    report = parity(*confident_rows(5500, 55))  # 99.0% of 5,500: the whole interval is under 99.5%
    with pytest.raises(ParityError, match=r"below the floor 99\.5%"):
        check_parity(report, min_agreement=0.995)


def test_near_ties_do_not_count():
    reference = np.tile([0.9, 0.05, 0.05], (1000, 1))
    candidate = reference.copy()
    reference[:50] = [0.4, 0.35, 0.25]  # the reference is unsure here ...
    candidate[:50] = [0.35, 0.4, 0.25]  # ... and int8 flips them
    report = parity(reference, candidate)
    assert report["agreement"] == 0.95 and report["confident_agreement"] == 1.0 and report["n_confident"] == 950
    check_parity(report, min_agreement=0.995)
