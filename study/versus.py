"""One candidate against its warm start, on the same prompts: does GRPO beat the adapter it started from?

    python -m study.versus outputs/study/grpo-from-dpo/eval outputs/study/dpo-length-normalised/eval

train.evaluate compares an adapter with its base only. Two adapters of one base evaluated on the same
pairs with the same settings, seed and judge answered every prompt with the same seeds, so their
answers can be compared prompt by prompt from the two evaluations' generations.jsonl: per prompt, the
judge's mean score of A's answers minus B's; wins with the sign test per tree (prompts of one
conversation tree count once), the length-controlled win rate, and each one's share of answers that
ended by themselves.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from train.evaluate.answers import TIE_TOLERANCE
from train.evaluate.length import length_controlled
from train.evaluate.stats import fmt, fmt_p, mean, outcomes, rate

SAME = ("pairs", "settings", "seed", "judge")  # what two evaluations must share to be compared


class VersusError(ValueError):
    """Two evaluations that cannot be compared prompt by prompt: the message says why."""


def _read(folder: Path) -> tuple[dict, list[dict]]:
    report, rows = folder / "report.json", folder / "generations.jsonl"
    if not (report.is_file() and rows.is_file()):
        raise VersusError(
            f"{folder}: no report.json and generations.jsonl; run python -m train.evaluate first"
        )
    lines = rows.read_text(encoding="utf-8").splitlines()
    return json.loads(report.read_text(encoding="utf-8")), [json.loads(line) for line in lines if line]


def _identity(report: dict, key: str):
    value = report.get(key)
    if key == "pairs":  # the same pairs, however many the trained trees left out of each
        return value and {k: value[k] for k in ("file", "n", "prompts")}
    if key == "judge":
        return value and value.get("weights_sha256", value.get("name"))
    return value


def compare(a: Path, b: Path, names: tuple[str, str] | None = None) -> dict:
    """A (the candidate) against B (its warm start): A's tuned answers against B's, prompt by prompt;
    ``names`` for the two (default: the adapters' names in the reports)."""
    (report_a, rows_a), (report_b, rows_b) = _read(a), _read(b)
    for key in SAME:
        if _identity(report_a, key) != _identity(report_b, key):
            raise VersusError(
                f"{a} and {b} differ in {key}: evaluate both with the same pairs, settings and judge"
            )
    by_key = {row["parent_id"]: row for row in rows_b}
    if set(by_key) != {row["parent_id"] for row in rows_a}:
        raise VersusError(f"{a} and {b} answered different prompts: evaluate both on the same pairs")
    if "judge" not in rows_a[0]["tuned"][0]:
        raise VersusError(f"{a}: no judge scores; evaluate with --judge")
    rows = {"a": rows_a, "b": [by_key[row["parent_id"]] for row in rows_a]}  # in the same order
    trees = [row["tree_id"] for row in rows_a]

    def per_prompt(side: str, key: str) -> np.ndarray:
        return np.array([np.mean([x[key] for x in row["tuned"]]) for row in rows[side]], dtype=float)

    scores, tokens = ({side: per_prompt(side, key) for side in rows} for key in ("judge", "tokens"))
    difference = scores["a"] - scores["b"]
    outcome = np.where(difference > TIE_TOLERANCE, 1.0, np.where(difference < -TIE_TOLERANCE, 0.0, 0.5))
    ended = {
        side: rate(
            [float(x["ended"]) for row in rows[side] for x in row["tuned"]],
            [row["tree_id"] for row in rows[side] for _ in row["tuned"]],
        )
        for side in rows
    }
    name_a, name_b = names or (report_a["adapter"]["name"], report_b["adapter"]["name"])
    return {
        "a": name_a,
        "b": name_b,
        "pairs": report_a["pairs"]["file"],
        "prompts": len(trees),
        "judge": report_a["judge"]["name"],
        "a_minus_b": mean(difference, report_a["seed"], trees),
        "per_prompt": outcomes(difference, TIE_TOLERANCE, trees),
        "length_controlled": length_controlled(outcome, tokens["a"] - tokens["b"], trees),
        "answer_tokens": {side: float(tokens[side].mean()) for side in "ab"},
        "ended_properly": ended,
    }


def summary(result: dict) -> str:
    """The comparison in one sentence, for the study's table and the cards."""
    win, test, control = (
        result["per_prompt"]["win"],
        result["per_prompt"]["test"],
        result["length_controlled"],
    )
    trees = test.get("trees") or test
    return (
        f"`{result['a']}` against `{result['b']}` on {result['prompts']} prompts of {result['pairs']}: the judge "
        f"prefers `{result['a']}` on {fmt(win, percent=True)} of prompts (trees +{trees['better']} / "
        f"−{trees['worse']}, sign test per tree {fmt_p(test['p_value'])}); at equal length "
        f"{fmt(control, percent=True)} ({fmt_p(control.get('p_value'))}); ended by itself "
        f"{fmt(result['ended_properly']['a'], percent=True)} against {fmt(result['ended_properly']['b'], percent=True)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.versus", description=__doc__.splitlines()[0])
    parser.add_argument(
        "a", type=Path, help="the candidate's evaluation folder (train.evaluate --output-dir)"
    )
    parser.add_argument("b", type=Path, help="its warm start's evaluation folder, on the same pairs")
    args = parser.parse_args(argv)
    try:
        print(summary(compare(args.a, args.b)))
    except VersusError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
