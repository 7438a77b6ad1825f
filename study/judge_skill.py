"""Which judge knows most beyond length? Every judge, on every length-matched Open Assistant pair outside
the sealed test, beside "the longer reply wins"; the study's judge is the one that scores best there.

    python -m study.judge_skill demo/judge-minilm-hh demo/judge-hh-rlhf

For each judge, on two sets of human preference pairs, how often it scores the human-chosen reply above
the rejected one, on all pairs and on the length-matched ones (the two replies within 25% of each other's
length in characters, where length cannot decide), beside "the longer reply wins" and "the shorter reply
wins" on the same pairs (a tie in length counts half, as in a report):
  * Open Assistant train + dev (data/study-splits: every pair outside the sealed test, which is never
    read here): the set the judge is chosen on, by its length-matched accuracy;
  * HH-RLHF held out (train.hh_rlhf's held-out slice: no judge of this project trained on it).
Beside the judges, one combination fixed before looking at Open Assistant: the mean of the judges'
margins, each divided by its standard deviation on the HH-RLHF held-out pairs (nothing in it is fitted
on Open Assistant). Rates carry Wilson 95% intervals at the effective sample size of pairs clustered by
conversation tree (train.evaluate.stats.rate); the judges are compared with each other on the same
length-matched pairs by an exact paired test, each tree one vote (stats.sign_test). The choice is made
on these pairs, so the chosen judge's figure here is the best of several: optimistic by construction.
Results: study/judge_skill.json and .md, rewritten whole from the judges named.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from assistant.atomic import write_text
from train.data import load_pairs, prompt_messages
from train.evaluate.length import MATCHED
from train.evaluate.stats import fmt, fmt_p, rate, sign_test

RESULTS = Path("study/judge_skill")
SPLITS = Path("data/study-splits")
DEV = SPLITS / "dev.jsonl"
OPEN_ASSISTANT = (SPLITS / "train.jsonl", DEV)  # never test.jsonl: the sealed test
HH_SOURCE = "../shared/data/hh-rlhf-helpful"
CHOOSE_ON = "open_assistant_train_dev"
COMBINED = "combined (mean of margins in HH-RLHF sd units)"
COMBINED_JUDGE = Path("demo/judge-combined")  # the combination as a judge folder (judges.json)


def lengths(pairs: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([len(p["chosen"]) for p in pairs]), np.array([len(p["rejected"]) for p in pairs])


def matched(pairs: list[dict]) -> np.ndarray:
    chosen, rejected = lengths(pairs)
    return np.maximum(chosen, rejected) <= MATCHED * np.minimum(chosen, rejected)


def trees(pairs: list[dict]) -> np.ndarray:
    """Each pair's conversation tree (None for HH-RLHF: every pair its own)."""
    return np.array([p.get("tree_id") for p in pairs], dtype=object)


def right(margin: np.ndarray) -> np.ndarray:
    """1 where the chosen reply scored higher, 0 lower, ½ for a tie."""
    return np.where(margin > 0, 1.0, np.where(margin < 0, 0.0, 0.5))


def heuristics(pairs: list[dict]) -> dict:
    """The length baselines on all pairs and on the length-matched ones."""
    chosen, rejected = lengths(pairs)
    keep, tree = matched(pairs), trees(pairs)
    out = {"pairs": len(pairs), "length_matched_pairs": int(keep.sum())}
    for name, difference in (("longer_wins", chosen - rejected), ("shorter_wins", rejected - chosen)):
        correct = right(difference)
        out[name] = rate(correct, tree)
        out[f"{name}_length_matched"] = rate(correct[keep], tree[keep])
    return out


def figures(margin: np.ndarray, pairs: list[dict]) -> dict:
    """A judge's accuracy from its chosen-minus-rejected score margins on ``pairs``."""
    chosen, rejected = lengths(pairs)
    keep, tree = matched(pairs), trees(pairs)
    unequal = chosen != rejected
    agrees = (np.sign(margin) == np.sign(chosen - rejected)).astype(float)
    return {
        "accuracy": rate(right(margin), tree),
        "accuracy_length_matched": rate(right(margin)[keep], tree[keep]),
        "agrees_with_longer": rate(agrees[unequal], tree[unequal]),
    }


def margins(scorer, pairs: list[dict]) -> np.ndarray:
    conversations = [prompt_messages(p["prompt"]) for p in pairs]
    return np.subtract(
        scorer.score(conversations, [p["chosen"] for p in pairs]),
        scorer.score(conversations, [p["rejected"] for p in pairs]),
    )


def scales(by_judge: dict[str, dict[str, np.ndarray]]) -> dict[str, float]:
    """Each judge's sd of margins on HH-RLHF held out (not on Open Assistant: the combination has nothing
    fitted on the pairs the judge is chosen on)."""
    return {name: float(np.std(m["hh_rlhf_held_out"])) or 1.0 for name, m in by_judge.items()}


def combine(by_judge: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The mean of the judges' margins, each in units of its sd on HH-RLHF held out."""
    scale = scales(by_judge)
    sets = next(iter(by_judge.values())).keys()
    return {
        where: np.mean([m[where] / scale[name] for name, m in by_judge.items()], axis=0) for where in sets
    }


def compare(by_judge: dict[str, np.ndarray], pairs: list[dict]) -> list[dict]:
    """Each two judges on the same length-matched pairs: the exact paired test of their right answers,
    each tree one vote (``better``: the first judge right where the second was wrong)."""
    keep, tree = matched(pairs), trees(pairs)
    names = list(by_judge)
    return [
        {
            "judges": [a, b],
            "test": sign_test(right(by_judge[a])[keep] - right(by_judge[b])[keep], 0.0, tree[keep]),
        }
        for i, a in enumerate(names)
        for b in names[i + 1 :]
    ]


def write_combined(by_judge: dict, paths: dict[str, str]) -> str:
    """The combination as a judge folder the evaluation loads (train.scorer.MeanOfJudges): its members,
    relative to it, their scales and the sha256 of their weights."""
    from train.identity import folder_weights_sha256

    scale = scales(by_judge)
    members = [
        {
            "path": os.path.relpath(Path(paths[name]).resolve(), COMBINED_JUDGE.resolve()),
            "scale": scale[name],
            "weights_sha256": folder_weights_sha256(Path(paths[name])),
        }
        for name in by_judge
    ]
    spec = {
        "description": f"{COMBINED}, written by study.judge_skill (study/judge_skill.md)",
        "members": members,
    }
    write_text(COMBINED_JUDGE / "judges.json", json.dumps(spec, indent=2) + "\n")
    return str(COMBINED_JUDGE)


def choose(results: dict) -> dict:
    """The judge with the highest length-matched accuracy on Open Assistant train + dev."""
    scored = {name: j[CHOOSE_ON]["accuracy_length_matched"]["rate"] for name, j in results["judges"].items()}
    best = max(scored, key=scored.get)
    return {
        "judge": best,
        "path": results["judges"][best].get("path"),
        "rule": f"the highest length-matched accuracy on {CHOOSE_ON} (ties: the first named)",
    }


def pair_sets(hh_limit: int | None = None) -> dict[str, list[dict]]:
    from train.hh_rlhf import build_pairs

    _, hh_held_out, _ = build_pairs(HH_SOURCE)
    open_assistant = [pair for path in OPEN_ASSISTANT for pair in load_pairs(path)]
    return {CHOOSE_ON: open_assistant, "hh_rlhf_held_out": hh_held_out[:hh_limit]}


def markdown(results: dict) -> str:
    def cell(r):
        if r is None:
            return "not scored"
        return f"{fmt(r, percent=True)} (n {r['n']})" if r.get("rate") is not None else "n/a"

    chosen = results["chosen"]
    if chosen["judge"] is None:
        choice = f"**No judge chosen yet**: still measuring {', '.join(chosen['waiting_for'])}."
    else:
        choice = (
            f"**The study's judge: `{chosen['judge']}`**, by {chosen['rule']}. It was chosen on these pairs: "
            "its figure there is the best of several, optimistic by construction."
        )
    lines = [
        "# Judge skill beyond length",
        "",
        "Written by `python -m study.judge_skill`; figures in `judge_skill.json`. Accuracy = how often the "
        "human-chosen reply scores higher (a tie counts half); Wilson 95% intervals at the effective sample "
        "size of pairs clustered by conversation tree. Length-matched: the two replies within "
        f"{MATCHED - 1:.0%} of each other's length in characters. Open Assistant: every pair of "
        "data/study-splits outside the sealed test (train + dev).",
        "",
        f"Judged on Open Assistant: {results['judged_open_assistant']}"
        + (
            " (a CPU budget: the judges' figures on all of them are not scored)."
            if results["judged_open_assistant"] != "all pairs"
            else "."
        )
        + f" Command: `{results['command']}`.",
        "",
        choice,
        "",
    ]
    for where, base in results["pairs"].items():
        lines += [
            f"## {where.replace('_', ' ')} ({base['pairs']} pairs, {base['length_matched_pairs']} length-matched)",
            "",
            "| | all pairs | length-matched | agrees with the longer reply |",
            "|---|---|---|---|",
            f"| the longer reply wins | {cell(base['longer_wins'])} | {cell(base['longer_wins_length_matched'])} | |",
            f"| the shorter reply wins | {cell(base['shorter_wins'])} | {cell(base['shorter_wins_length_matched'])} | |",
        ]
        for name, judge in results["judges"].items():
            j = judge[where]
            lines.append(
                f"| judge `{name}` | {cell(j['accuracy'])} | {cell(j['accuracy_length_matched'])} | "
                f"{cell(j['agrees_with_longer'])} |"
            )
        lines += [
            "",
            "Judge against judge on the same length-matched pairs (exact paired test, per tree):",
            "",
        ]
        for c in results["comparisons"][where]:
            unit = c["test"].get("trees") or c["test"]
            lines.append(
                f"- `{c['judges'][0]}` right where `{c['judges'][1]}` was wrong: {unit['better']}, the "
                f"reverse: {unit['worse']} ({fmt_p(c['test']['p_value'])})"
            )
        lines.append("")
    return "\n".join(lines)


def write_results(command, baselines, sets, by_judge, paths, matched_only: bool) -> dict:
    """study/judge_skill.json and .md from the judges measured so far (no choice until all are)."""
    results = {
        "command": command,
        "pairs": baselines,
        "judged_open_assistant": "length-matched pairs only" if matched_only else "all pairs",
        "judges": {
            name: {"path": paths.get(name), **{where: figures(m[where], sets[where]) for where in sets}}
            for name, m in by_judge.items()
        },
        "comparisons": {
            where: compare({name: m[where] for name, m in by_judge.items()}, sets[where]) for where in sets
        },
    }
    if matched_only:  # scored on the length-matched pairs only: no figure on all of them
        for judge in results["judges"].values():
            judge[CHOOSE_ON]["accuracy"] = None
    waiting = [name for name in paths if name not in by_judge]
    results["chosen"] = choose(results) if not waiting else {"judge": None, "waiting_for": waiting}
    write_text(RESULTS.with_suffix(".json"), json.dumps(results, indent=2) + "\n")
    write_text(RESULTS.with_suffix(".md"), markdown(results))
    return results


def main(argv: list[str] | None = None) -> int:
    from train.scorer import Scorer

    parser = argparse.ArgumentParser(prog="python -m study.judge_skill", description=__doc__.splitlines()[0])
    parser.add_argument("judges", nargs="+", help="judge folders or Hub ids (train.scorer.Scorer loads them)")
    parser.add_argument("--hh-limit", type=int, default=None, help="the first N held-out HH-RLHF pairs only")
    parser.add_argument(
        "--matched-only", action="store_true", help="score only the length-matched Open Assistant pairs "
        "(what the judge is chosen on; a CPU budget): the judges' figures on all of them are then left out",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if missing := [str(p) for p in OPEN_ASSISTANT if not p.is_file()]:
        print(f"error: {', '.join(missing)}: not built; run python -m study.run --step data", file=sys.stderr)
        return 2
    sets = pair_sets(args.hh_limit)
    baselines = {where: heuristics(pairs) for where, pairs in sets.items()}
    if args.matched_only:
        sets[CHOOSE_ON] = [
            p for p, keep in zip(sets[CHOOSE_ON], matched(sets[CHOOSE_ON]), strict=True) if keep
        ]
    command = " ".join(["python -m study.judge_skill", *(argv if argv is not None else sys.argv[1:])])
    paths, by_judge = {Path(j).name: j for j in args.judges}, {}
    for judge in args.judges:
        scorer = Scorer(judge)
        by_judge[Path(judge).name] = {where: margins(scorer, pairs) for where, pairs in sets.items()}
        print(f"{judge}: measured", flush=True)
        if len(by_judge) == len(args.judges) > 1:
            paths[COMBINED] = write_combined(by_judge, paths)
            by_judge[COMBINED] = combine(by_judge)
        # written after every judge (a slow judge on a busy CPU may take hours): what is measured is kept
        results = write_results(command, baselines, sets, by_judge, paths, args.matched_only)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
