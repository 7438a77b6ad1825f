"""The statistics of a report: rates with Wilson intervals, means with BCa bootstrap intervals, and
exact paired tests between tuned and base on the same items.

Every estimate is a dict that says its sample size, so a reader never sees a figure without its n.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 2000


def rate(flags) -> dict:
    """Share of true values with its Wilson score interval (NaN = missing, left out)."""
    x = np.asarray(flags, dtype=float)
    x = x[~np.isnan(x)]
    n, k = int(x.size), int(x.sum())
    if n == 0:
        return {"rate": None, "ci95": [None, None], "k": 0, "n": 0}
    low, high = stats.binomtest(k, n).proportion_ci(CONFIDENCE, method="wilson")
    return {"rate": k / n, "ci95": [float(low), float(high)], "k": k, "n": n}


def mean(values, seed: int = 0) -> dict:
    """Mean with a BCa bootstrap interval (scipy.stats.bootstrap); NaN = missing, left out.

    Values that are all equal have no spread to resample: the interval is the value itself.
    """
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    n = int(x.size)
    if n == 0:
        return {"mean": None, "ci95": [None, None], "n": 0}
    centre = float(x.mean())
    if n == 1 or np.all(x == x[0]):
        return {"mean": centre, "ci95": [centre, centre], "n": n}
    with warnings.catch_warnings():  # BCa warns on near-degenerate samples; the fallback handles them
        warnings.simplefilter("ignore")
        result = stats.bootstrap(
            (x,),
            np.mean,
            confidence_level=CONFIDENCE,
            n_resamples=RESAMPLES,
            method="BCa",
            rng=np.random.default_rng(seed),
        )
    low, high = result.confidence_interval
    if not (math.isfinite(low) and math.isfinite(high)):  # BCa undefined: the percentile interval
        low, high = np.percentile(result.bootstrap_distribution, [2.5, 97.5])
    return {"mean": centre, "ci95": [float(low), float(high)], "n": n}


def sign_test(differences, tolerance: float = 0.0) -> dict:
    """Exact two-sided sign test on paired differences (tuned - base): how many items got better,
    worse, or stayed (within ``tolerance``), and the binomial p-value over the ones that moved.

    On 0/1 outcomes (a pair judged right or wrong by each model) this is the exact McNemar test: only
    the pairs that flipped carry information, and under no effect each flip is a fair coin.
    """
    d = np.asarray(differences, dtype=float)
    d = d[~np.isnan(d)]
    better, worse = int((d > tolerance).sum()), int((d < -tolerance).sum())
    moved = better + worse
    p = float(stats.binomtest(better, moved, 0.5).pvalue) if moved else 1.0
    return {"better": better, "worse": worse, "same": int(d.size) - moved, "n": int(d.size), "p_value": p}


def outcomes(differences, tolerance: float = 0.0) -> dict:
    """Win / tie / loss shares of paired differences, each with its Wilson interval, and the sign test."""
    d = np.asarray(differences, dtype=float)
    d = d[~np.isnan(d)]
    return {
        "win": rate(d > tolerance),
        "tie": rate(np.abs(d) <= tolerance),
        "loss": rate(d < -tolerance),
        "test": sign_test(d, tolerance),
    }


ALPHA = 0.05  # the level at which "tuned beats base" is claimed


def tuned_won(test: dict | None) -> bool:
    """Whether a paired test says tuned beat base: better on more items than worse, at p < ALPHA."""
    return bool(test) and test["better"] > test["worse"] and test["p_value"] < ALPHA


def fmt(estimate: dict | None, digits: int = 2, percent: bool = False) -> str:
    """``0.62 [0.41, 0.80]`` or ``62% [41, 80]``: the estimate and its 95% interval."""
    if not estimate:
        return "n/a"
    value = estimate.get("rate", estimate.get("mean"))
    if value is None:
        return "n/a"
    low, high = estimate["ci95"]
    if percent:
        return f"{100 * value:.0f}% [{100 * low:.0f}, {100 * high:.0f}]"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def fmt_p(p: float | None) -> str:
    """``p = 0.125``, ``p < 0.001`` or ``p n/a``: the whole phrase, so a small p never reads "p = < 0.001"."""
    if p is None:
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
