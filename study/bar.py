"""The bar a tuned adapter must clear to be served (issue 27), read from one evaluation report: on dev it
chooses which candidate the sealed test reads; on the sealed test it decides whether the Space serves it.

    python -m study.bar outputs/study/sft/eval/report.json    # each criterion, measured and met or not

Every criterion compares the tuned model with its own base on the same prompts, by what a reader sees
(loops, ends), by a judge it was not trained on (per prompt, and at equal length), and by what people
preferred (held-out preference accuracy).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

LOOPS_AT_MOST = 0.5  # of the base's loop rate
ENDS_AT_LEAST = 0.15  # more of its answers end by themselves than the base's (absolute)
JUDGE_AT_LEAST = 0.55  # per-prompt win rate
EQUAL_LENGTH_AT_LEAST = 0.50  # the length-controlled win rate
PREFERENCE_DROP_AT_MOST = 0.02  # held-out preference accuracy, below the base's
ALPHA = 0.05  # the per-tree paired tests


def _better(test: dict) -> bool:
    return test["better"] > test["worse"] and test["p_value"] is not None and test["p_value"] < ALPHA


def _p(test: dict) -> str:
    return "n/a" if test["p_value"] is None else f"{test['p_value']:.3g}"


def criteria(report: dict) -> list[dict]:
    """Each criterion: what it asks, what was measured, and whether it is met."""
    loop, end = report["defects"]["loop"], report["defects"]["end"]
    judge = report["judge_verdicts"]
    win, test = judge["per_prompt"]["win"]["rate"], judge["per_prompt"]["test"]
    equal = judge["length_controlled"]["rate"]
    accuracy = {side: report["preference"][side]["accuracy"]["rate"] for side in ("base", "tuned")}
    base_loop, tuned_loop = loop["base"]["rate"], loop["tuned"]["rate"]
    gain = end["tuned"]["rate"] - end["base"]["rate"]
    return [
        {
            "asks": f"loops at most {LOOPS_AT_MOST:.0%} as often as its base, per-tree p < {ALPHA}",
            "measured": f"{tuned_loop:.0%} vs {base_loop:.0%}, p = {_p(loop['test'])}",
            "met": tuned_loop <= LOOPS_AT_MOST * base_loop and _better(loop["test"]),
        },
        {
            "asks": f"ends by itself at least {ENDS_AT_LEAST:.0%} points more often than its base",
            "measured": f"{end['tuned']['rate']:.0%} vs {end['base']['rate']:.0%} ({gain:+.0%})",
            "met": gain >= ENDS_AT_LEAST,
        },
        {
            "asks": f"the judge prefers it on at least {JUDGE_AT_LEAST:.0%} of prompts, per-tree p < {ALPHA}",
            "measured": f"{win:.0%}, p = {_p(test)}",
            "met": win >= JUDGE_AT_LEAST and _better(test),
        },
        {
            "asks": f"and on at least {EQUAL_LENGTH_AT_LEAST:.0%} at equal length",
            # None when every prompt had both answers cut at the limit: nothing to read at equal length
            "measured": "not measurable" if equal is None else f"{equal:.0%}",
            "met": equal is not None and equal >= EQUAL_LENGTH_AT_LEAST,
        },
        {
            "asks": f"held-out preference accuracy at most {PREFERENCE_DROP_AT_MOST:.0%} points below its base's",
            "measured": f"{accuracy['tuned']:.1%} vs {accuracy['base']:.1%}",
            "met": accuracy["tuned"] >= accuracy["base"] - PREFERENCE_DROP_AT_MOST,
        },
    ]


def passes(report: dict) -> bool:
    return all(c["met"] for c in criteria(report))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_file():
        sys.exit("usage: python -m study.bar REPORT.json (an evaluation's report.json)")
    for c in criteria(json.loads(Path(args[0]).read_text())):
        print(f"{'met    ' if c['met'] else 'NOT met'}  {c['asks']}: {c['measured']}")
    return 0


if __name__ == "__main__":
    main()
