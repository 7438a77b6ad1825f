"""train.evaluate.stats and train.evaluate.length against values worked out by hand on small vectors."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats
from scipy.special import expit, logit

from train.evaluate.length import judge_caveat, length_baselines, length_controlled
from train.evaluate.stats import (
    effective_n,
    fmt,
    mean,
    outcomes,
    paired_difference,
    rate,
    sign_test,
    tuned_won,
)

Z = 1.959963984540054


def wilson(k: float, n: float) -> tuple[float, float]:
    """The Wilson score interval written out from its formula."""
    p = k / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z / (1 + Z * Z / n) * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize("k,n", [(0, 10), (3, 4), (10, 10), (72, 145)])
def test_wilson_interval(k, n):
    result = rate([1] * k + [0] * (n - k))
    assert result["rate"] == k / n and result["k"] == k and result["n"] == n
    assert result["ci95"] == pytest.approx(wilson(k, n), abs=1e-9)
    scipy_ci = scipy_stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
    assert result["ci95"] == pytest.approx([scipy_ci.low, scipy_ci.high], abs=1e-9)
    assert 0 <= result["ci95"][0] <= result["rate"] <= result["ci95"][1] <= 1


@pytest.mark.parametrize("value", [0, 1])
@pytest.mark.parametrize("n", [1, 8, 145, 1000])
@pytest.mark.parametrize("clustered", [False, True])
def test_no_rate_interval_has_zero_width(value, n, clustered):
    """Every value equal ("the DPO demo never ended an answer by itself") is still a sample: 0 of 145 is
    0% [0, 3], not 0% [0, 0]; counted per tree it is wider still."""
    trees = [i // 4 for i in range(n)] if clustered else None
    result = rate([value] * n, trees)
    low, high = result["ci95"]
    assert high - low > 0.003 and low <= result["rate"] <= high
    if not clustered:
        assert (low, high) == pytest.approx(wilson(value * n, n), abs=1e-12)
    elif n > 1:  # nothing to estimate the within-tree correlation from: each tree counts once,
        # n^2 / sum of squared tree sizes (the number of trees when they are all the same size)
        sizes = np.bincount(trees)
        assert result["effective_n"] == pytest.approx(n * n / (sizes**2).sum(), abs=0.05)
    assert fmt(rate([0] * 145), percent=True) == "0% [0, 3]"


def test_effective_sample_size_by_hand():
    # trees a: (1, 1), b: (0, 0): all alike within a tree; the design effect is 3 (sum of squares by
    # tree 2 * 2 over 4/3 * 1), n / 3 < 2 trees, so the floor: every tree one item, n_eff = 16 / 8 = 2
    assert effective_n([1, 1, 0, 0], ["a", "a", "b", "b"]) == pytest.approx(2.0)
    assert rate([1, 1, 0, 0], ["a", "a", "b", "b"])["ci95"] == pytest.approx(wilson(1, 2))
    # trees a: (1, 0), b: (1, 0): trees alike, the pairs inside differ; no inflation (never below 1)
    assert effective_n([1, 0, 1, 0], ["a", "a", "b", "b"]) == 4.0
    # a: (1, 0), b: (1, 1), c: (0, 0): tree sums of deviations 0, 1, -1; 3/2 * 2 = 3 against
    # 6/5 * 1.5 = 1.8: design effect 5/3, n_eff = 6 * 3/5 = 3.6 (above the floor 36 / 12 = 3)
    assert effective_n([1, 0, 1, 1, 0, 0], list("aabbcc")) == pytest.approx(3.6)
    assert effective_n([1, 0, 1], None) == 3.0  # no trees: every item its own
    assert effective_n([1, 0, 1], [None, None, None]) == 3.0  # unknown trees: every item its own


def test_a_rate_of_nothing_missing_values_and_halves():
    assert rate([])["rate"] is None and rate([])["n"] == 0
    assert rate([1, math.nan, 0])["n"] == 2  # NaN = missing
    half = rate([1, 0.5, 0, 1])  # a tie counted half
    assert half["rate"] == 0.625 and half["k"] == 2.5
    assert half["ci95"] == pytest.approx(wilson(2.5, 4))


def test_sign_test_by_hand():
    # 3 better, 1 worse, 1 the same: p = 2 * P(X >= 3 | n=4, 1/2) = 2 * 5/16
    result = sign_test([0.5, 2.0, 1.0, 0.0, -1.0])
    assert (result["better"], result["worse"], result["same"], result["n"]) == (3, 1, 1, 5)
    assert result["p_value"] == pytest.approx(10 / 16)
    assert "trees" not in result


def test_sign_test_counts_each_tree_once():
    # trees A: +1 +1 +1, B: +1 +1, C: +1, D: -1, E: 0, F: +1 -1 (a tie)
    d = [1, 1, 1, 1, 1, 1, -1, 0, 1, -1]
    trees = list("AAABBCDEFF")
    result = sign_test(d, clusters=trees)
    # items: 7 better, 2 worse: 2 * P(X >= 7 | 9) = 2 * 46/512
    assert (result["better"], result["worse"], result["same"]) == (7, 2, 1)
    assert result["p_value_items"] == pytest.approx(2 * 46 / 512)
    # trees: A, B, C better, D worse, E and F the same: 2 * P(X >= 3 | 4) = 2 * 5/16
    assert result["trees"] == {"better": 3, "worse": 1, "same": 2, "n": 6}
    assert result["p_value"] == pytest.approx(10 / 16)
    assert not tuned_won(result)
    # the direction of a clustered test is its trees': more pairs right but more trees wrong is no win
    lopsided = sign_test([1, 1, 1, 1, -1, -1], clusters=list("AAAABC"))
    assert lopsided["better"] > lopsided["worse"] and lopsided["trees"]["worse"] == 2
    assert not tuned_won({**lopsided, "p_value": 0.01})
    # judge score differences: a tree is summarised by its mean difference, not by a count of signs
    scores = sign_test([0.1, 0.1, -1.0, 0.5, -0.2], clusters=list("AAABC"))
    assert (scores["better"], scores["worse"]) == (3, 2)
    assert scores["trees"] == {"better": 1, "worse": 2, "same": 0, "n": 3}  # A: mean -0.27


def test_all_equal_and_all_flipped():
    same = sign_test([0.0] * 8)
    assert (same["better"], same["worse"], same["p_value"]) == (0, 0, 1.0)  # nothing moved: no evidence
    flipped = sign_test([1.0] * 8)  # McNemar on 8 pairs that all flipped to right: 2 / 2**8
    assert flipped["p_value"] == pytest.approx(2 / 2**8)
    assert sign_test([-1.0] * 8)["p_value"] == pytest.approx(2 / 2**8)


def test_a_mean_without_spread_has_no_interval_rather_than_a_zero_width_one():
    """Eight equal values say nothing about how far the mean could move: no [0, 0] interval."""
    result = mean([0.0] * 8)
    assert result["mean"] == 0.0 and result["ci95"] == [None, None] and result["n"] == 8
    assert fmt(result) == "0.00 (all 8 equal)" and fmt(result, percent=True) == "0% (all 8 equal)"
    assert mean([0.3, 0.5], clusters=["t", "t"])["note"] == "one tree"


def test_bca_interval_brackets_the_mean_and_is_reproducible():
    values = np.random.default_rng(1).normal(0.3, 1.0, size=60)
    first, again = mean(values, seed=7), mean(values, seed=7)
    assert first == again
    assert first["mean"] == pytest.approx(values.mean())
    low, high = first["ci95"]
    assert low < first["mean"] < high
    # about mean +- 1.96 s / sqrt(n) for a normal sample
    assert high - low == pytest.approx(2 * 1.96 * values.std(ddof=1) / math.sqrt(60), rel=0.25)


def test_the_bootstrap_resamples_whole_trees():
    """Ten values each copied five times in its own tree carry the information of ten values, not fifty."""
    values = np.random.default_rng(2).normal(0.0, 1.0, size=10)
    copies, trees = np.repeat(values, 5), np.repeat(np.arange(10), 5)
    width = lambda e: e["ci95"][1] - e["ci95"][0]  # noqa: E731
    clustered, naive, ten = mean(copies, 3, trees), mean(copies, 3), mean(values, 3)
    assert clustered["mean"] == pytest.approx(values.mean()) and clustered["trees"] == 10
    assert width(clustered) == pytest.approx(width(ten), rel=0.15)
    assert width(clustered) > 1.8 * width(naive)


def newcombe_by_hand(a, b, c, d):
    """Newcombe's method 10 written out: tuned right in a + b of n, base in a + c; phi corrected."""
    n = a + b + c + d
    p1, p2 = (a + b) / n, (a + c) / n
    (l1, u1), (l2, u2) = wilson(a + b, n), wilson(a + c, n)
    cross = a * d - b * c
    corrected = cross - n / 2 if cross > n / 2 else min(cross, 0)
    phi = corrected / math.sqrt((a + b) * (c + d) * (a + c) * (b + d))
    low = p1 - p2 - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2))
    high = p1 - p2 + math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1))
    return low, high


def table(a, b, c, d):
    """Per-item (tuned right, base right) for a paired table: a both, b only tuned, c only base."""
    tuned = [1] * a + [1] * b + [0] * c + [0] * d
    base = [1] * a + [0] * b + [1] * c + [0] * d
    return tuned, base


@pytest.mark.parametrize(
    "cells,expected",
    [
        # Bentur et al. 2009 (Fagerland, Lydersen & Laake's example): phi corrected to 0,
        # -0.286 [-0.507, -0.026]
        ((1, 1, 7, 12), (-0.5069, -0.0256)),
        ((36, 12, 2, 0), None),  # a negative cross product: phi = -24 / sqrt(48 * 2 * 38 * 12)
        ((30, 9, 3, 8), None),  # a large positive one: phi = (240 - 27 - 25) / sqrt(39 * 11 * 33 * 17)
    ],
)
def test_newcombe_paired_interval_by_hand(cells, expected):
    result = paired_difference(*table(*cells))
    a, b, c, d = cells
    assert result["mean"] == pytest.approx((b - c) / sum(cells))
    assert result["ci95"] == pytest.approx(newcombe_by_hand(*cells), abs=1e-12)
    if expected:
        assert result["ci95"] == pytest.approx(expected, abs=1e-4)


def test_the_sparse_case_of_the_issue_does_not_exclude_zero():
    """grpo-baseline: 4 of 145 pairs flipped, all to wrong, none to right: exact McNemar p = 0.125. A BCa
    bootstrap of the 0/-1 differences gave [-0.062, -0.007]; the paired interval must include 0."""
    tuned, base = table(68, 0, 4, 73)
    assert sign_test(np.subtract(tuned, base))["p_value"] == pytest.approx(0.125)
    low, high = paired_difference(tuned, base)["ci95"]
    assert low < 0 < high
    trees = [i // 2 for i in range(145)]  # counted per tree it is wider still
    clustered = paired_difference(tuned, base, trees)
    assert clustered["ci95"][0] <= low and clustered["ci95"][1] >= high and clustered["trees"] == 73
    nothing = paired_difference(*table(70, 0, 0, 75))  # nobody flipped: still an interval around 0
    assert nothing["ci95"][0] < 0 < nothing["ci95"][1]


def test_outcomes_and_formatting():
    result = outcomes([1.0, 1.0, 0.0, -1.0], tolerance=1e-6)
    assert (result["win"]["k"], result["tie"]["k"], result["loss"]["k"]) == (2, 1, 1)
    assert result["test"]["p_value"] == pytest.approx(1.0)  # 2 vs 1 of 3
    assert fmt(rate([1, 1, 0, 0]), percent=True) == "50% [15, 85]"
    assert fmt(None) == "n/a"


def test_length_controlled_win_rate_of_two_length_groups_by_hand():
    """Two groups of prompts, tuned longer by 5 tokens in one and shorter by 5 in the other: the fit is
    saturated, Firth's estimate of each group's win rate is (wins + 1/2) / (n + 1), and the win rate
    at no length difference is the midpoint on the logit scale."""
    y = [1] * 7 + [0] * 3 + [1] * 2 + [0] * 8
    delta = [5] * 10 + [-5] * 10
    result = length_controlled(y, delta)
    longer, shorter = 7.5 / 11, 2.5 / 11
    assert result["rate"] == pytest.approx(expit((logit(longer) + logit(shorter)) / 2), abs=1e-6)
    assert result["raw"]["rate"] == 0.45 and result["slope"] > 0
    low, high = result["ci95"]
    assert low < result["rate"] < high
    # its test and its interval are the same Wald statistic: p < 0.05 exactly when 50% is outside
    assert (result["p_value"] < 0.05) == (not low < 0.5 < high)


def test_length_controlled_win_rate_removes_a_known_length_effect():
    rng = np.random.default_rng(0)
    delta = rng.normal(1.0, 1.0, size=3000)  # tuned usually longer
    # the judge likes length and nothing else: at equal length tuned wins half the time
    y = (rng.random(delta.size) < expit(2 * np.tanh(delta / delta.std()))).astype(float)
    result = length_controlled(y, delta)
    assert result["raw"]["rate"] > 0.65
    assert result["ci95"][0] < 0.5 < result["ci95"][1] and result["rate"] == pytest.approx(0.5, abs=0.03)
    assert result["p_value"] > 0.05
    # outcomes that ignore length: the control changes nothing
    fair = (rng.random(delta.size) < 0.7).astype(float)
    assert length_controlled(fair, delta)["rate"] == pytest.approx(fair.mean(), abs=0.03)


def test_length_controlled_win_rate_when_one_side_always_wins():
    result = length_controlled([1.0] * 20, np.arange(20) - 5.0)
    low, high = result["ci95"]
    assert 0.5 < low < result["rate"] < high < 1  # finite (Firth), and never of zero width
    # no length difference: nothing to control; Firth's intercept alone is (wins + 1/2) / (n + 1)
    flat = length_controlled([1, 0, 0.5, 1], [0, 0, 0, 0])
    assert flat["rate"] == pytest.approx((2.5 + 0.5) / (4 + 1), abs=1e-6) and flat["slope"] == 0.0


def test_length_baselines_by_hand():
    pairs = [
        {"chosen": "x" * 100, "rejected": "x" * 10, "tree_id": "a"},  # longer chosen, not matched
        {"chosen": "x" * 10, "rejected": "x" * 100, "tree_id": "b"},  # shorter chosen, not matched
        {"chosen": "x" * 100, "rejected": "x" * 90, "tree_id": "c"},  # matched (100 <= 1.25 * 90)
        {"chosen": "x" * 50, "rejected": "x" * 50, "tree_id": "d"},  # a tie in length: half each
        {"chosen": "x" * 126, "rejected": "x" * 100, "tree_id": "e"},  # just outside 25%
    ]
    judge_right = [True, True, False, True, True]
    result = length_baselines(pairs, judge_right)
    assert result["longer_wins"]["rate"] == pytest.approx(3.5 / 5)
    assert result["shorter_wins"]["rate"] == pytest.approx(1.5 / 5)
    assert result["length_matched"]["n"] == 2 and result["length_matched"]["rate"] == 0.5
    accuracy = {**rate(judge_right), "baselines": result}  # 80% beats 70%, but not above chance matched
    caveat = judge_caveat(accuracy)
    assert caveat.startswith("Caution: this judge is not above chance where length cannot decide")
    assert "does not beat" not in caveat
    weaker = {**rate([True, False, False, True, True]), "baselines": result}  # 60% against 70%
    assert 'does not beat "the longer reply wins" (60% ' in judge_caveat(weaker)


def test_the_stop_rate_guard_flags_a_model_that_stopped_ending_its_answers():
    from assistant.generation import Answer
    from train.evaluate import answers as answering

    answer = lambda ended: Answer(text="x", ended=ended, cut=not ended, tokens=3, adapter="x")  # noqa: E731
    prompts = [{"tree_id": f"t{i // 2}"} for i in range(8)]
    base = [[answer(i % 3 == 0), answer(i % 2 == 0)] for i in range(8)]  # 7 of 16 ended
    for tuned_ended, flagged in ((5, True), (6, False)):  # 44% - 31% = 13 points; 44% - 38% = 6
        flags = [True] * tuned_ended + [False] * (16 - tuned_ended)
        tuned = [[answer(flags[2 * i]), answer(flags[2 * i + 1])] for i in range(8)]
        described = answering.describe({"base": base, "tuned": tuned}, 0, prompts)
        assert (described["base"]["ended_properly"]["k"], described["base"]["ended_properly"]["n"]) == (7, 16)
        guard = answering.stop_guard(described)
        assert guard["drop"] == pytest.approx((7 - tuned_ended) / 16) and guard["flagged"] is flagged
        assert (answering.stop_flag(guard) is not None) is flagged
    never = [[answer(False), answer(False)] for _ in range(8)]  # every answer ran to the cap
    ended = answering.describe({"base": base, "tuned": never}, 0, prompts)["tuned"]["ended_properly"]
    assert ended["rate"] == 0 and ended["ci95"][1] > 0.05  # 0% of 16 answers in 4 trees, not [0, 0]
