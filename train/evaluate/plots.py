"""The report's two plots: preference margins of each pair, and the judge's verdict per prompt."""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLORS = {"base": "#7f7f7f", "tuned": "#d62728"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_margins(preference: dict, path: Path) -> None:
    """The margin distributions (histograms) and each pair's base margin against its tuned margin."""
    plt = _plt()
    margins = {side: np.array([p[side]["margin"] for p in preference["pairs"]]) for side in COLORS}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    values = np.concatenate([margins["base"], margins["tuned"], [0.0]])
    bins = np.linspace(values.min(), values.max(), 21) if np.ptp(values) > 0 else 10
    for side in COLORS:
        accuracy = preference[side]["accuracy"]["rate"]
        label = f"{side}: accuracy {100 * accuracy:.0f}%, mean {margins[side].mean():+.3f}"
        left.hist(margins[side], bins=bins, alpha=0.55, color=COLORS[side], label=label)
    left.axvline(0, color="black", linewidth=1)
    left.set_xlabel("margin: chosen − rejected (mean log-prob per token)")
    left.set_ylabel("pairs")
    left.legend(fontsize=8)
    test = preference["test"]
    right.scatter(margins["base"], margins["tuned"], s=18, color=COLORS["tuned"], alpha=0.7)
    low, high = values.min(), values.max()
    pad = 0.05 * (high - low or 1)
    right.plot(
        [low - pad, high + pad], [low - pad, high + pad], color="#999999", linewidth=1, label="tuned = base"
    )
    right.axhline(0, color="black", linewidth=0.6)
    right.axvline(0, color="black", linewidth=0.6)
    right.set_xlabel("base margin")
    right.set_ylabel("tuned margin")
    right.set_title(
        f"flipped to right: {test['better']}, to wrong: {test['worse']} (McNemar p = {test['p_value']:.3f})",
        fontsize=9,
    )
    right.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"Preference margins on held-out pairs (n = {preference['n']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_judge(verdicts: dict, judge_name: str, path: Path) -> None:
    """Per prompt, the judge's mean score of the tuned answers minus the base answers'."""
    plt = _plt()
    base = np.array([np.mean(s) for s in verdicts["scores"]["base"]])
    tuned = np.array([np.mean(s) for s in verdicts["scores"]["tuned"]])
    difference = np.sort(tuned - base)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = np.where(difference > 0, COLORS["tuned"], COLORS["base"])
    left.bar(np.arange(difference.size), difference, color=colors, width=1.0)
    left.axhline(0, color="black", linewidth=0.8)
    left.set_xlabel("held-out prompts, sorted")
    left.set_ylabel("judge score: tuned − base (mean of k answers)")
    test = verdicts["per_prompt"]["test"]
    left.set_title(
        f"tuned better on {test['better']}, worse on {test['worse']} (sign test p = {test['p_value']:.3f})",
        fontsize=9,
    )
    right.scatter(base, tuned, s=16, color=COLORS["tuned"], alpha=0.7)
    low, high = min(base.min(), tuned.min()), max(base.max(), tuned.max())
    right.plot([low, high], [low, high], color="#999999", linewidth=1, label="tuned = base")
    right.set_xlabel("base answers' judge score")
    right.set_ylabel("tuned answers' judge score")
    right.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"Judge {judge_name} on base and tuned answers (n = {difference.size} prompts)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
