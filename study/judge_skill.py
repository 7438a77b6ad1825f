"""Does the judge know more than length? Its accuracy beside the length heuristics, where length decides
and where it cannot.

    python -m study.judge_skill demo/judge-minilm-hh demo/judge-hh-rlhf [--hh-limit 613]

For each judge, on two sets of human preference pairs, how often it scores the human-chosen reply above
the rejected one, beside "the longer reply wins" and "the shorter reply wins" on the same pairs (a tie in
length counts as wrong for both), and the same on the length-matched pairs (the two replies within 25%
of each other's length in characters), where length cannot decide:
  * HH-RLHF held out (train.hh_rlhf's held-out slice: no judge of this project trained on it);
  * the study's Open Assistant dev pairs (data/study-splits/dev.jsonl; never the sealed test).
Rates with Wilson 95% intervals (scipy). Results: study/judge_skill.json and .md; a judge already in
the file keeps its figures unless it is measured again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from assistant.atomic import write_text
from train.data import load_pairs, prompt_messages

RESULTS = Path("study/judge_skill")
DEV = Path("data/study-splits/dev.jsonl")
HH_SOURCE = "../shared/data/hh-rlhf-helpful"
SETS = ("hh_rlhf_held_out", "open_assistant_dev")
MATCHED = 1.25  # the longer reply at most 25% longer than the shorter


def wilson(correct) -> dict:
    from scipy.stats import binomtest

    correct = np.asarray(correct, dtype=bool)
    n, k = int(correct.size), int(correct.sum())
    if n == 0:
        return {"rate": None, "ci95": None, "k": 0, "n": 0}
    ci = binomtest(k, n).proportion_ci(method="wilson")
    return {"rate": k / n, "ci95": [ci.low, ci.high], "k": k, "n": n}


def lengths(pairs: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([len(p["chosen"]) for p in pairs]), np.array([len(p["rejected"]) for p in pairs])


def heuristics(pairs: list[dict]) -> dict:
    """The length baselines on all pairs and on the length-matched ones."""
    chosen, rejected = lengths(pairs)
    matched = np.maximum(chosen, rejected) <= MATCHED * np.minimum(chosen, rejected)
    out = {"pairs": len(pairs), "length_matched_pairs": int(matched.sum())}
    for name, correct in (("longer_wins", chosen > rejected), ("shorter_wins", chosen < rejected)):
        out[name] = wilson(correct)
        out[f"{name}_length_matched"] = wilson(correct[matched])
    return out


def judge_figures(scorer, pairs: list[dict], matched_only: bool = False) -> dict:
    """`figures` of the judge on `pairs`; with `matched_only` (a CPU budget for a slow judge) it scores
    only the length-matched pairs and gives only the figures on them."""
    if matched_only:
        chosen, rejected = lengths(pairs)
        keep = np.maximum(chosen, rejected) <= MATCHED * np.minimum(chosen, rejected)
        figs = judge_figures(scorer, [p for p, k in zip(pairs, keep, strict=True) if k])
        return {"accuracy_length_matched": figs["accuracy_length_matched"], "scored": "length-matched only"}
    conversations = [prompt_messages(p["prompt"]) for p in pairs]
    margin = np.subtract(
        scorer.score(conversations, [p["chosen"] for p in pairs]),
        scorer.score(conversations, [p["rejected"] for p in pairs]),
    )
    return figures(margin, pairs)


def figures(margin: np.ndarray, pairs: list[dict]) -> dict:
    """A judge's accuracy from its chosen-minus-rejected score margins on `pairs`."""
    chosen, rejected = lengths(pairs)
    matched = np.maximum(chosen, rejected) <= MATCHED * np.minimum(chosen, rejected)
    agrees_with_longer = np.sign(margin) == np.sign(chosen - rejected)
    return {
        "accuracy": wilson(margin > 0),
        "accuracy_length_matched": wilson(margin[matched] > 0),
        "agrees_with_longer": wilson(agrees_with_longer[chosen != rejected]),
    }


def pair_sets(hh_limit: int | None) -> dict[str, list[dict]]:
    from train.hh_rlhf import build_pairs

    _, hh_held_out, _ = build_pairs(HH_SOURCE)
    return {"hh_rlhf_held_out": hh_held_out[:hh_limit], "open_assistant_dev": load_pairs(DEV)}


def markdown(results: dict) -> str:
    def cell(r):
        if r["rate"] is None:
            return "n/a"
        return f"{r['rate']:.1%} [{r['ci95'][0]:.0%}, {r['ci95'][1]:.0%}] (n {r['n']})"

    lines = ["# Judge skill beyond length", "", "Written by `python -m study.judge_skill`; figures in "
             "`judge_skill.json`. Accuracy = how often the human-chosen reply scores higher; Wilson 95% "
             f"intervals. Length-matched: the two replies within {MATCHED - 1:.0%} of each other's length.", ""]  # fmt: skip
    for where, base in results["pairs"].items():
        lines += [f"## {where.replace('_', ' ')} ({base['pairs']} pairs, {base['length_matched_pairs']} "
                  "length-matched)", "", "| | all pairs | length-matched |", "|---|---|---|",
                  f"| the longer reply wins | {cell(base['longer_wins'])} | "
                  f"{cell(base['longer_wins_length_matched'])} |",
                  f"| the shorter reply wins | {cell(base['shorter_wins'])} | "
                  f"{cell(base['shorter_wins_length_matched'])} |"]  # fmt: skip
        for name, judge in results["judges"].items():
            if where in judge:
                j = judge[where]
                overall = cell(j["accuracy"]) if "accuracy" in j else "not scored"
                lines.append(f"| judge `{name}` | {overall} | {cell(j['accuracy_length_matched'])} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from train.scorer import Scorer

    parser = argparse.ArgumentParser(prog="python -m study.judge_skill", description=__doc__.splitlines()[0])
    parser.add_argument("judges", nargs="*", help="judge folders or Hub ids (train.scorer.Scorer loads them)")
    parser.add_argument("--hh-limit", type=int, default=None, help="first N held-out HH-RLHF pairs only")
    parser.add_argument("--matched-only", action="store_true", help="score the length-matched pairs only")
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS), help="pair sets to judge on")
    args = parser.parse_args(argv)
    if not DEV.is_file():
        print(
            f"error: {DEV}: no dev pairs; build them with python -m study.run --step train", file=sys.stderr
        )
        return 2
    sets = pair_sets(args.hh_limit)
    path = RESULTS.with_suffix(".json")
    results = json.loads(path.read_text()) if path.exists() else {"judges": {}}
    results["pairs"] = {where: heuristics(pairs) for where, pairs in sets.items()}
    for judge in args.judges:
        scorer = Scorer(judge)
        entry = results["judges"].setdefault(Path(judge).name, {})
        entry.update(
            {where: judge_figures(scorer, sets[where], args.matched_only) for where in args.sets}, path=judge
        )
        if args.hh_limit and "hh_rlhf_held_out" in args.sets:
            entry["hh_rlhf_limit"] = args.hh_limit
        print(f"{judge}: measured", flush=True)
    write_text(path, json.dumps(results, indent=2) + "\n")
    write_text(RESULTS.with_suffix(".md"), markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
