"""What length alone would explain: the judge's length baselines and the length-controlled win rate.

A reward model can prefer long answers whatever they say. So next to its accuracy on the human pairs
stand the accuracies of "the longer reply wins" and "the shorter reply wins", and its accuracy on the
pairs whose two replies have about the same length, where length cannot decide. And next to the share
of prompts where tuned beats base stands the same share read where both answers have the same length
(AlpacaEval 2's length-controlled win rate).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit
from scipy.stats import norm

from train.evaluate.stats import Z, fmt, rate

MATCHED = 1.25  # two replies are length-matched when the longer has at most 25% more characters


def length_baselines(pairs: list[dict], judge_right) -> dict:
    """Accuracy of "the longer reply wins" and "the shorter reply wins" on ``pairs`` (by characters,
    a tie counted half) and the judge's accuracy (``judge_right``, one flag per pair) on the
    length-matched pairs; rates clustered by the pairs' trees."""
    chosen = np.array([len(str(p["chosen"])) for p in pairs], dtype=float)
    rejected = np.array([len(str(p["rejected"])) for p in pairs], dtype=float)
    trees = np.array([p.get("tree_id") for p in pairs], dtype=object)
    longer = np.where(chosen > rejected, 1.0, np.where(chosen < rejected, 0.0, 0.5))
    matched = np.maximum(chosen, rejected) <= MATCHED * np.minimum(chosen, rejected)
    return {
        "unit": "characters",
        "longer_wins": rate(longer, trees),
        "shorter_wins": rate(1 - longer, trees),
        "length_matched": rate(np.asarray(judge_right, dtype=float)[matched], trees[matched]),
    }


def judge_skill(accuracy: dict | None) -> str:
    """The judge's accuracy and its length baselines in one sentence (``accuracy`` from
    answers.judge_accuracy, with its ``baselines``)."""
    if not accuracy:
        return "n/a"
    base = accuracy.get("baselines")
    text = f"{fmt(accuracy, percent=True)} of {accuracy['n']} pairs"
    if not base:
        return text + " (no length baselines recorded)"
    return (
        f"{text}; the longer reply wins {fmt(base['longer_wins'], percent=True)}, the shorter "
        f"{fmt(base['shorter_wins'], percent=True)}; on the {base['length_matched']['n']} length-matched "
        f"pairs (within 25%) the judge scores {fmt(base['length_matched'], percent=True)}"
    )


def judge_caveat(accuracy: dict | None) -> str | None:
    """One line for every verdict of a judge that has not shown skill beyond length, else None: it does
    not beat "the longer reply wins", or its length-matched accuracy is not above chance."""
    base = (accuracy or {}).get("baselines")
    if not base or accuracy.get("rate") is None:
        return None
    weak = []
    longer, matched = base["longer_wins"], base["length_matched"]
    if accuracy["rate"] <= longer["rate"]:
        weak.append(
            f'does not beat "the longer reply wins" ({fmt(accuracy, percent=True)} against '
            f"{fmt(longer, percent=True)})"
        )
    if not matched["n"] or matched["ci95"][0] <= 0.5:
        weak.append(
            f"is not above chance where length cannot decide ({fmt(matched, percent=True)} on "
            f"{matched['n']} length-matched pairs)"
        )
    if not weak:
        return None
    return f"Caution: this judge {' and '.join(weak)}; its verdicts may be about length, not quality."


def equal_length(outcome, base_chars, tuned_chars, both_cut, clusters) -> dict:
    """Tuned's per-prompt win rate where length cannot decide, length counted in characters of the
    answers as served. Prompts where every answer of both models ran to the token limit are left out:
    their lengths are unknown (both cut), and in tokens capped at the limit they would count as equal
    by construction. On the rest: the length-controlled rate (length_controlled, on the characters'
    difference) and, beside it, the plain share over the prompts whose answers are within 25% of each
    other's length (MATCHED, as for pairs)."""
    y = np.asarray(outcome, dtype=float)
    base, tuned = np.asarray(base_chars, dtype=float), np.asarray(tuned_chars, dtype=float)
    keep = ~np.asarray(both_cut, dtype=bool)
    trees = np.asarray(clusters, dtype=object)
    matched = keep & (np.maximum(base, tuned) <= MATCHED * np.minimum(base, tuned))
    return {
        **length_controlled(y[keep], (tuned - base)[keep], trees[keep]),
        "unit": "characters",
        "left_out_both_cut": int((~keep).sum()),
        "length_matched": rate(y[matched], trees[matched]),
    }


def _firth_fit(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Logistic regression with Firth's penalty (½ log det of the information): finite estimates even
    when one side wins every prompt, where plain maximum likelihood runs off to infinity."""

    def loss(beta):
        eta = X @ beta
        p = expit(eta)
        information = X.T @ (X * (p * (1 - p))[:, None])
        log_lik = np.sum(y * eta - np.logaddexp(0, eta))
        return -log_lik - 0.5 * np.linalg.slogdet(information)[1]

    return minimize(loss, np.zeros(X.shape[1]), method="BFGS", options={"gtol": 1e-9}).x


def length_controlled(outcome, length_difference, clusters=None) -> dict:
    """AlpacaEval 2's length-controlled win rate: P(tuned wins) = σ(β0 + β1·tanh(Δ / sd Δ)), with Δ the
    tuned − base answer length of each prompt, read at Δ = 0: σ(β0). ``outcome`` is 1 (tuned wins),
    0 (loses) or 0.5 (tie). The interval and p_value are Wald's on β0, with the larger of the model's and the
    tree-clustered sandwich variance. ``raw`` is the plain share, ties half, for comparison."""
    y = np.asarray(outcome, dtype=float)
    delta = np.asarray(length_difference, dtype=float)
    trees = np.arange(y.size) if clusters is None else np.asarray(clusters, dtype=object)
    if y.size == 0:
        return {"rate": None, "ci95": [None, None], "p_value": None, "n": 0, "slope": None, "raw": rate(y)}
    spread = delta.std()
    X = np.ones((y.size, 1))
    if spread > 0:  # with no length difference at all there is nothing to control for
        X = np.column_stack([X, np.tanh(delta / spread)])
    beta = _firth_fit(X, y)
    p = expit(X @ beta)
    bread = np.linalg.inv(X.T @ (X * (p * (1 - p))[:, None]))
    _, codes = np.unique(
        [f"\0{i}" if t is None else str(t) for i, t in enumerate(trees)], return_inverse=True
    )
    scores = np.zeros((codes.max() + 1, X.shape[1]))
    np.add.at(scores, codes, X * (y - p)[:, None])
    k = scores.shape[0]
    sandwich = bread @ (scores.T @ scores) @ bread * (k / (k - 1) if k > 1 else 1.0)
    se = float(np.sqrt(max(bread[0, 0], sandwich[0, 0])))
    return {
        "rate": float(expit(beta[0])),
        "ci95": [float(expit(beta[0] - Z * se)), float(expit(beta[0] + Z * se))],
        "p_value": float(2 * norm.sf(abs(beta[0]) / se)),  # Wald, H0: a win rate of 50% at equal length
        "n": int(y.size),
        "slope": float(beta[1]) if spread > 0 else 0.0,
        "raw": rate(y, clusters),
    }
