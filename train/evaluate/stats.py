"""The statistics of a report: rates with Wilson intervals, differences of paired accuracies with
Newcombe's interval, means with a bootstrap interval, and exact paired tests of tuned against base.

Items that share a conversation tree are not independent (the prompts of one tree, the pairs under one
prompt, the k answers to one prompt), so every estimate takes the items' tree ids (``clusters``):
  * a rate's Wilson interval uses the effective sample size n / design effect, the design effect being
    the variance of the mean summed by tree over its variance as if the items were independent (never
    below 1; when it cannot be estimated because every value is equal, each tree counts as one item);
  * a mean's bootstrap resamples whole trees;
  * a sign test (exact McNemar on 0/±1 outcomes) counts each tree once, by the sign of the mean of its
    items' differences.
Without tree ids (None) every item is its own tree and these are the textbook methods.
Every estimate is a dict that says its sample size, so a reader never sees a figure without its n.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 2000
Z = float(stats.norm.ppf(0.5 + CONFIDENCE / 2))


def _clean(values, clusters) -> tuple[np.ndarray, np.ndarray]:
    """The values without NaN (missing) and their trees as codes 0..K-1; a tree id of None is a tree
    of its own."""
    x = np.asarray(values, dtype=float).ravel()
    labels = np.arange(x.size).astype(str) if clusters is None else np.asarray(clusters, dtype=object)
    if labels.shape != x.shape:
        raise ValueError(f"{labels.size} tree ids for {x.size} values: give one tree id per value")
    labels = np.array([f"\0{i}" if c is None else str(c) for i, c in enumerate(labels)])
    keep = ~np.isnan(x)
    return x[keep], np.unique(labels[keep], return_inverse=True)[1]


def effective_n(values, clusters=None) -> float:
    """n / design effect of the mean of ``values`` grouped by tree (see the module's docstring)."""
    x, g = _clean(values, clusters)
    n = x.size
    sizes = np.bincount(g) if n else np.array([])
    if sizes.size == n:
        return float(n)
    floor = n * n / float((sizes**2).sum())  # every tree one item's worth: all items of a tree alike
    centred = x - x.mean()
    within = float((centred**2).sum())
    if within == 0 or sizes.size == 1:
        return floor
    between = float((np.bincount(g, weights=centred) ** 2).sum())
    design_effect = (sizes.size / (sizes.size - 1) * between) / (n / (n - 1) * within)
    return float(min(n, max(floor, n / design_effect))) if design_effect > 0 else float(n)


def wilson(p: float, n: float) -> tuple[float, float]:
    """Wilson's score interval for a proportion ``p`` of ``n`` items (n need not be a whole number:
    scipy's binomtest, which gives the same interval for whole counts, refuses effective sizes)."""
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z / (1 + Z * Z / n) * math.sqrt(max(p * (1 - p), 0.0) / n + Z * Z / (4 * n * n))
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))  # p inside, float noise aside


def _trees(g: np.ndarray, n_eff: float) -> dict:
    """What a clustered estimate adds: its number of trees and effective size (nothing when none shared)."""
    trees = int(g.max()) + 1 if g.size else 0
    return {"trees": trees, "effective_n": round(n_eff, 1)} if trees < g.size else {}


def rate(flags, clusters=None) -> dict:
    """Share of true values (1, 0, or 0.5 for a half) with its Wilson interval at the effective sample
    size; NaN = missing, left out. Never of zero width: 0 of n is [0, about 3.8 / n]."""
    x, g = _clean(flags, clusters)
    n = int(x.size)
    if n == 0:
        return {"rate": None, "ci95": [None, None], "k": 0, "n": 0}
    k = float(x.sum())
    n_eff = effective_n(x, g)
    low, high = wilson(k / n, n_eff)
    return {"rate": k / n, "ci95": [low, high], "k": int(k) if k.is_integer() else k, "n": n} | _trees(
        g, n_eff
    )


def mean(values, seed: int = 0, clusters=None) -> dict:
    """Mean with a BCa bootstrap interval that resamples whole trees (scipy.stats.bootstrap on the
    trees' sums and sizes); NaN = missing, left out. No interval where there is no spread to resample
    (all values equal, or one tree): the estimate then says why, rather than show a zero width."""
    x, g = _clean(values, clusters)
    n = int(x.size)
    if n == 0:
        return {"mean": None, "ci95": [None, None], "n": 0}
    centre = float(x.mean())
    extra = _trees(g, float(n))
    extra.pop("effective_n", None)
    if np.all(x == x[0]):
        return {"mean": centre, "ci95": [None, None], "n": n, "note": f"all {n} equal"} | extra
    sums, sizes = np.bincount(g, weights=x), np.bincount(g).astype(float)
    if sums.size < 2:
        return {"mean": centre, "ci95": [None, None], "n": n, "note": "one tree"} | extra
    with warnings.catch_warnings():  # BCa warns on near-degenerate samples; the fallback handles them
        warnings.simplefilter("ignore")
        result = stats.bootstrap(
            (sums, sizes),
            lambda s, c, axis=-1: s.sum(axis=axis) / c.sum(axis=axis),
            paired=True,
            vectorized=True,
            confidence_level=CONFIDENCE,
            n_resamples=RESAMPLES,
            method="BCa",
            rng=np.random.default_rng(seed),
        )
    low, high = result.confidence_interval
    if not (math.isfinite(low) and math.isfinite(high)):  # BCa undefined: the percentile interval
        low, high = np.percentile(result.bootstrap_distribution, [2.5, 97.5])
    return {"mean": centre, "ci95": [float(low), float(high)], "n": n} | extra


def paired_difference(tuned, base, clusters=None) -> dict:
    """tuned − base accuracy on the same items (0/1 each): Newcombe's square-and-add interval from the
    two Wilson intervals and the correlation of the pairs (his method 10, Stat Med 1998;17:2635), with
    the counts scaled to the effective sample size of the differences. Unlike a bootstrap of sparse
    0/±1 differences it does not exclude 0 where a handful of flips all went one way by chance."""
    t, b = (np.asarray(v, dtype=float).ravel() for v in (tuned, base))
    keep = ~(np.isnan(t) | np.isnan(b))
    t, b = t[keep] > 0.5, b[keep] > 0.5
    trees = None if clusters is None else np.asarray(clusters, dtype=object)[keep]
    n = int(t.size)
    if n == 0:
        return {"mean": None, "ci95": [None, None], "n": 0}
    d, g = _clean(t.astype(float) - b, trees)
    n_eff = effective_n(d, g)
    both, only_tuned, only_base, neither = (
        n_eff / n * float(np.sum(cell)) for cell in (t & b, t & ~b, ~t & b, ~t & ~b)
    )
    p1, p2 = (both + only_tuned) / n_eff, (both + only_base) / n_eff
    (l1, u1), (l2, u2) = wilson(p1, n_eff), wilson(p2, n_eff)
    margins = (both + only_tuned) * (only_base + neither) * (both + only_base) * (only_tuned + neither)
    cross = both * neither - only_tuned * only_base
    # Newcombe's correlation, corrected towards 0 as in his method 10
    phi = (
        0.0
        if margins == 0
        else (cross - n_eff / 2 if cross > n_eff / 2 else min(cross, 0.0)) / math.sqrt(margins)
    )
    low = p1 - p2 - math.sqrt(max((p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2), 0.0))
    high = p1 - p2 + math.sqrt(max((p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1), 0.0))
    return {"mean": p1 - p2, "ci95": [max(-1.0, low), min(1.0, high)], "n": n, "method": "Newcombe"} | _trees(
        g, n_eff
    )


def _signs(d: np.ndarray, tolerance: float) -> np.ndarray:
    return np.where(d > tolerance, 1, np.where(d < -tolerance, -1, 0))


def _sign_counts(signs: np.ndarray) -> dict:
    better, worse = int((signs > 0).sum()), int((signs < 0).sum())
    p = float(stats.binomtest(better, better + worse, 0.5).pvalue) if better + worse else 1.0
    return {
        "better": better,
        "worse": worse,
        "same": int(signs.size) - better - worse,
        "n": int(signs.size),
        "p_value": p,
    }


def sign_test(differences, tolerance: float = 0.0, clusters=None) -> dict:
    """Exact two-sided sign test on paired differences (tuned - base): how many items got better,
    worse, or stayed (within ``tolerance``), and the binomial p-value over the ones that moved.

    On 0/1 outcomes (a pair judged right or wrong by each model) this is the exact McNemar test: only
    the pairs that flipped carry information, and under no effect each flip is a fair coin. Where items
    share trees, each tree is one vote (the sign of the mean of its items' differences; on 0/±1 outcomes,
    whether more of its pairs flipped right than wrong): ``trees`` has those counts, ``p_value`` is
    theirs, and ``p_value_items`` the one that would treat every item as independent.
    """
    d, g = _clean(differences, clusters)
    signs = _signs(d, tolerance)
    items = _sign_counts(signs)
    if not g.size or g.max() + 1 == g.size:
        return items
    trees = _sign_counts(_signs(np.bincount(g, weights=d) / np.bincount(g), tolerance))
    return {**items, "p_value": trees.pop("p_value"), "p_value_items": items["p_value"], "trees": trees}


def outcomes(differences, tolerance: float = 0.0, clusters=None) -> dict:
    """Win / tie / loss shares of paired differences, each with its Wilson interval, and the sign test."""
    d, g = _clean(differences, clusters)
    return {
        "win": rate(d > tolerance, g),
        "tie": rate(np.abs(d) <= tolerance, g),
        "loss": rate(d < -tolerance, g),
        "test": sign_test(d, tolerance, g),
    }


ALPHA = 0.05  # the level at which "tuned beats base" is claimed


def tuned_better(test: dict | None) -> bool:
    """Whether a paired test's units (trees, where items share them) went tuned's way more often."""
    counts = (test or {}).get("trees") or test or {}
    return counts.get("better", 0) > counts.get("worse", 0)


def tuned_won(test: dict | None) -> bool:
    """Whether a paired test says tuned beat base: better more often than worse, at p < ALPHA."""
    return bool(test) and tuned_better(test) and test["p_value"] < ALPHA


def fmt(estimate: dict | None, digits: int = 2, percent: bool = False) -> str:
    """``0.62 [0.41, 0.80]`` or ``62% [41, 80]``: the estimate and its 95% interval (or why it has none)."""
    if not estimate:
        return "n/a"
    value = estimate.get("rate", estimate.get("mean"))
    if value is None:
        return "n/a"
    low, high = estimate["ci95"]
    shown = (lambda v: f"{100 * v:.0f}") if percent else (lambda v: f"{v:.{digits}f}")
    unit = "%" if percent else ""
    if low is None:
        return f"{shown(value)}{unit} ({estimate.get('note', 'no interval')})"
    return f"{shown(value)}{unit} [{shown(low)}, {shown(high)}]"


def fmt_p(p: float | None) -> str:
    """``p = 0.125``, ``p < 0.001`` or ``p n/a``: the whole phrase, so a small p never reads "p = < 0.001"."""
    if p is None:
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
