"""PNG plots of a run's metrics.jsonl: reward, reward per function, KL/loss, completion length, and for a
GRPO run with a gold check, its training reward beside the judge on dev answers (gold_check.png).

    python -m train.plots OUTPUT_DIR        # (re)draws OUTPUT_DIR/plots/*.png from OUTPUT_DIR/metrics.jsonl

GRPO runs get all four; a DPO run has no sampled completions, so it gets its implicit rewards
(chosen/rejected/margin/accuracy) and its loss.
"""

from __future__ import annotations

import io
import math
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from train.callbacks import read_metrics  # noqa: E402


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def _rolling(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _save(fig, path: Path) -> Path:
    from assistant.atomic import write_bytes

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return write_bytes(path, buffer.getvalue())  # a reader never sees half a PNG


def _legend(*axes):
    """One legend for an axis and its twin, under the plot where it hides no line."""
    handles, labels = [], []
    for ax in axes:
        h, lab = ax.get_legend_handles_labels()
        handles, labels = handles + h, labels + lab
    if handles:
        axes[0].legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)


def _line(ax, records, key, label=None, smooth=True, where=None, **style):
    steps, values = _series(records if where is None else [r for r in records if where(r)], key)
    if not steps:
        return False
    window = max(1, len(values) // 10)
    if smooth and window > 1:
        ax.plot(steps, values, alpha=0.3, **style)
        ax.plot(steps, _rolling(values, window), label=f"{label or key} (mean of {window})", **style)
    else:
        ax.plot(steps, values, label=label or key, **style)
    return True


def _pass_means(ax, records, key):
    """The mean of each pass over the training pairs: the same prompts every pass, so passes compare
    where single steps mostly say which prompt came up."""
    passes: dict[int, list] = {}
    for r in records:
        if r.get(key) is not None and r.get("epoch") is not None:
            passes.setdefault(math.ceil(r["epoch"] - 1e-9), []).append((r["step"], r[key]))
    if len(passes) < 2:
        return
    for i, points in enumerate(passes.values()):
        steps = [p[0] for p in points]
        mean = sum(p[1] for p in points) / len(points)
        ax.hlines(
            mean,
            min(steps) - 0.5,
            max(steps) + 0.5,
            colors="C1",
            linewidth=2.5,
            label="mean of each pass over the pairs" if i == 0 else None,
        )
        ax.annotate(
            f"{mean:.2f}",
            (max(steps) + 0.5, mean),
            textcoords="offset points",
            xytext=(-2, 4),
            ha="right",
            fontsize=8,
            color="C1",
        )


def plot_metrics(output_dir: str | os.PathLike) -> list[Path]:
    """Draw the plots of ``output_dir/metrics.jsonl`` into ``output_dir/plots``; return the files written."""
    output_dir = Path(output_dir)
    records = [r for r in read_metrics(output_dir / "metrics.jsonl") if "train_runtime" not in r]
    if not records:
        return []
    plots = output_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for r in records for k in r})
    grpo = "reward" in keys
    figures = [
        ("reward.png", _reward(records, grpo)),
        ("rewards_per_function.png", _rewards_per_function(records, keys, grpo)),
        ("loss_kl.png", _loss_kl(records, keys, grpo)),
        ("completion_length.png", _completion_length(records) if "completions/mean_length" in keys else None),
        ("gold_check.png", _gold_check(records) if "gold/judge" in keys else None),
        ("anchor.png", _anchor(records) if "anchor/loss" in keys else None),
    ]
    return [_save(fig, plots / name) for name, fig in figures if fig is not None]


def _reward(records: list[dict], grpo: bool):
    fig, ax = plt.subplots(figsize=(7, 4))
    if grpo:
        steps, mean = _series(records, "reward")
        _, std = _series(records, "reward_std")
        if len(std) == len(mean):
            ax.fill_between(
                steps,
                [m - s for m, s in zip(mean, std, strict=False)],
                [m + s for m, s in zip(mean, std, strict=False)],
                alpha=0.15,
                color="C0",
                label="± std within the step",
            )
        _line(ax, records, "reward", "weighted reward", color="C0")
        _pass_means(ax, records, "reward")
        ax.set_title("GRPO reward (weighted sum of the reward functions)")
    else:
        _line(ax, records, "rewards/margins", "margin (chosen - rejected)", color="C0")
        _line(ax, records, "rewards/accuracies", "accuracy", color="C1")
        ax.set_title("DPO implicit reward")
    ax.set_xlabel("step")
    _legend(ax)
    return fig


def _rewards_per_function(records: list[dict], keys: list[str], grpo: bool):
    funcs = [k for k in keys if k.startswith("rewards/") and k.endswith("/mean")]
    if not grpo:
        funcs = [k for k in ("rewards/chosen", "rewards/rejected") if k in keys]
    if not funcs:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, key in enumerate(funcs):
        _line(ax, records, key, key.removeprefix("rewards/").removesuffix("/mean"), color=f"C{i}")
    ax.set_title("Reward per function (unweighted mean)" if grpo else "DPO implicit reward per side")
    ax.set_xlabel("step")
    _legend(ax)
    return fig


def _loss_kl(records: list[dict], keys: list[str], grpo: bool):
    fig, ax = plt.subplots(figsize=(7, 4))
    _line(ax, records, "loss", "loss", color="C0")
    ax.set_ylabel("loss")
    ax.set_xlabel("step")
    if "kl" in keys:
        kl_ax = ax.twinx()
        _line(kl_ax, records, "kl", "KL to the base", color="C3")
        kl_ax.set_ylabel("KL")
        ax.set_title("Loss and KL to the base model")
        _legend(ax, kl_ax)
    else:
        ax.set_title("Loss" + (" (beta = 0: no KL term)" if grpo else ""))
        _legend(ax)
    return fig


def _completion_length(records: list[dict]):
    fig, ax = plt.subplots(figsize=(7, 4))
    _line(ax, records, "completions/mean_length", "mean length (tokens)", color="C0")
    _line(
        ax,
        records,
        "completions/mean_terminated_length",
        "mean length of those ending with EOS",
        color="C2",
        smooth=False,
        # TRL logs 0 when no completion of the step ended itself: such steps have no such length.
        where=lambda r: (r.get("completions/clipped_ratio") or 0) < 1,
        linestyle="none",
        marker=".",
    )
    ax.set_ylabel("tokens")
    ax.set_xlabel("step")
    clip_ax = ax.twinx()
    _line(clip_ax, records, "completions/clipped_ratio", "share cut at max_completion_length", color="C3")
    if any("loop_rate" in r for r in records):  # logged by the no_loop reward
        _line(clip_ax, records, "loop_rate", "share caught in a loop", color="C4")
    clip_ax.set_ylabel("share of completions")
    clip_ax.set_ylim(-0.05, 1.05)
    _legend(ax, clip_ax)
    ax.set_title("Completion length")
    return fig


def _gold_check(records: list[dict]):
    """The over-optimisation curve: the training reward and the judge on the same dev answers, by step.
    Where the reward keeps rising and the judge turns down, the policy is hacking its reward."""
    fig, ax = plt.subplots(figsize=(7, 4))
    _line(ax, records, "gold/reward", "training reward (weighted)", smooth=False, color="C0", marker="o")
    ax.set_ylabel("training reward")
    ax.set_xlabel("step")
    judge_ax = ax.twinx()
    _line(judge_ax, records, "gold/judge", "judge's mean score", smooth=False, color="C3", marker="s")
    judge_ax.set_ylabel("judge score")
    steps, judge = _series(records, "gold/judge")
    best = steps[judge.index(max(judge))]
    ax.axvline(best, color="grey", linestyle=":", label=f"the judge's best step ({best})")
    prompts = next((r["gold/prompts"] for r in records if r.get("gold/prompts")), "?")
    ax.set_title(f"Gold check on {prompts} dev prompts: training reward and judge")
    _legend(ax, judge_ax)
    return fig


def _anchor(records: list[dict]):
    """The preference anchor (train.anchor): how far the tuned margin stands above the base's on each
    step's training pairs, the thing it holds (the margins themselves swing with the pairs a step draws)."""
    records = [
        {"step": r["step"], "lift": r["anchor/margin"] - r["anchor/base_margin"]}
        for r in records
        if "anchor/margin" in r
    ]
    fig, ax = plt.subplots(figsize=(7, 4))
    _line(ax, records, "lift", "tuned margin − base margin", smooth=False, color="C0", marker="o")
    ax.axhline(0, color="grey", linestyle=":", label="the base")
    ax.set_ylabel("chosen − rejected, mean log-prob per token")
    ax.set_xlabel("step")
    ax.set_title("Preference anchor: the tuned margin above the base's, on each step's pairs")
    _legend(ax)
    return fig


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not (Path(argv[0]) / "metrics.jsonl").exists():
        print(
            "usage: python -m train.plots OUTPUT_DIR  (a training output folder with metrics.jsonl)",
            file=sys.stderr,
        )
        return 2
    for path in plot_metrics(argv[0]):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
