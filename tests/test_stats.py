"""train.evaluate.stats against values worked out by hand on small vectors."""

import math

import numpy as np
import pytest

from train.evaluate.stats import fmt, mean, outcomes, rate, sign_test


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval written out from its formula."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize("k,n", [(0, 10), (3, 4), (10, 10), (72, 145)])
def test_wilson_interval(k, n):
    result = rate([1] * k + [0] * (n - k))
    assert result["rate"] == k / n and result["k"] == k and result["n"] == n
    assert result["ci95"] == pytest.approx(wilson(k, n), abs=1e-9)
    assert 0 <= result["ci95"][0] <= result["rate"] <= result["ci95"][1] <= 1


def test_a_rate_of_nothing_and_missing_values():
    assert rate([])["rate"] is None and rate([])["n"] == 0
    assert rate([1, math.nan, 0])["n"] == 2  # NaN = missing


def test_sign_test_by_hand():
    # 3 better, 1 worse, 1 the same: p = 2 * P(X >= 3 | n=4, 1/2) = 2 * 5/16
    result = sign_test([0.5, 2.0, 1.0, 0.0, -1.0])
    assert (result["better"], result["worse"], result["same"], result["n"]) == (3, 1, 1, 5)
    assert result["p_value"] == pytest.approx(10 / 16)


def test_all_equal_and_all_flipped():
    same = sign_test([0.0] * 8)
    assert (same["better"], same["worse"], same["p_value"]) == (0, 0, 1.0)  # nothing moved: no evidence
    flipped = sign_test([1.0] * 8)  # McNemar on 8 pairs that all flipped to right: 2 / 2**8
    assert flipped["p_value"] == pytest.approx(2 / 2**8)
    assert sign_test([-1.0] * 8)["p_value"] == pytest.approx(2 / 2**8)
    assert mean([0.0] * 8) == {"mean": 0.0, "ci95": [0.0, 0.0], "n": 8}  # not "0% [0, 0]" by accident


def test_bca_interval_brackets_the_mean_and_is_reproducible():
    values = np.random.default_rng(1).normal(0.3, 1.0, size=60)
    first, again = mean(values, seed=7), mean(values, seed=7)
    assert first == again
    assert first["mean"] == pytest.approx(values.mean())
    low, high = first["ci95"]
    assert low < first["mean"] < high
    # about mean +- 1.96 s / sqrt(n) for a normal sample
    assert high - low == pytest.approx(2 * 1.96 * values.std(ddof=1) / math.sqrt(60), rel=0.25)


def test_outcomes_and_formatting():
    result = outcomes([1.0, 1.0, 0.0, -1.0], tolerance=1e-6)
    assert (result["win"]["k"], result["tie"]["k"], result["loss"]["k"]) == (2, 1, 1)
    assert result["test"]["p_value"] == pytest.approx(1.0)  # 2 vs 1 of 3
    assert fmt(rate([1, 1, 0, 0]), percent=True) == "50% [15, 85]"
    assert fmt(None) == "n/a"
