"""How much does a reward know about Open Assistant preferences? Its accuracy on held-out pairs, beside
"the longer reply wins", on all pairs and on the length-matched ones.

    python -m study.reward_skill --reward dpo_implicit:outputs/study/dpo-length-normalised \
        --reward reward_model:outputs/study/reward-model-oasst [--pairs data/study-splits/dev.jsonl]

A reward scores (conversation, reply); it is right on a pair when it scores the chosen reply strictly
above the rejected one. GRPO maximises its reward, so a reward below the length heuristic mostly teaches
length. Length-matched pairs (replies within 25% of each other's length in characters) are where length
cannot decide. Pairs of one conversation tree count together (train.evaluate.stats). A reward is refused when its training_info.json names a tree of the evaluated pairs: a
reward trained on dev or test trees would be measured on what it saw. A DPO adapter's implicit reward is
read from its eval/report.json when that report scored these pairs with these weights (the same
computation, already done). Writes study/reward_skill.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

KINDS = ("dpo_implicit", "reward_model")


def load_reward(kind: str, path: str):
    if kind == "dpo_implicit":
        from train.implicit import ImplicitReward

        return ImplicitReward(path)
    from train.scorer import Scorer

    return Scorer(path)


def trained_on(path: Path, pairs: list[dict]) -> set[str]:
    """The trees of ``pairs`` that the reward at ``path`` was trained on (by its training_info.json)."""
    info = path / "training_info.json"
    if not info.exists():
        return set()
    return set(json.loads(info.read_text()).get("train_tree_ids") or []) & {p["tree_id"] for p in pairs}


def skill(chosen: np.ndarray, rejected: np.ndarray, lengths: np.ndarray, trees: np.ndarray) -> dict:
    """Accuracy of scores and of the length heuristic, on all pairs and on the length-matched ones (as
    train.evaluate.length matches them), and the exact McNemar test of the two on the same pairs (better:
    pairs only the reward gets right), each tree counted once."""
    from train.evaluate.length import MATCHED
    from train.evaluate.stats import rate, sign_test

    everything = np.ones(len(chosen), dtype=bool)
    matched = lengths.max(1) <= MATCHED * lengths.min(1)
    right = np.greater(chosen, rejected).astype(float) - np.greater(lengths[:, 0], lengths[:, 1])
    return {
        subset_name: {
            "reward": rate(np.greater(chosen, rejected)[subset], trees[subset]),
            "longer_wins": rate(np.greater(lengths[:, 0], lengths[:, 1])[subset], trees[subset]),
            "reward_vs_longer": sign_test(right[subset], clusters=trees[subset]),
        }
        for subset_name, subset in (("all", everything), ("length_matched", matched))
    }


def report_scores(path: Path, pairs: list[dict]) -> tuple[np.ndarray, np.ndarray, int] | None:
    """A DPO adapter's implicit reward of each reply, read from its own evaluation report when that report
    scored exactly these pairs with exactly these weights: train.evaluate.preference computed the mean
    per-token log-probs of base and adapter, whose difference is the implicit reward (train.implicit)."""
    from train.card import report_matches

    report = path / "eval" / "report.json"
    if not (report.is_file() and report_matches(path)):
        return None
    preference = json.loads(report.read_text())["preference"]
    # the report orders its pairs by a hash of the prompt: matched here by the ids of the two replies
    scored = {(p["chosen_id"], p["rejected_id"]): p for p in preference["pairs"]}
    wanted = [(p.get("chosen_id"), p.get("rejected_id")) for p in pairs]
    if len(scored) != len(wanted) or any(key not in scored for key in wanted):
        return None
    ratio = {
        side: np.array([scored[key]["tuned"][side] - scored[key]["base"][side] for key in wanted])
        for side in ("chosen", "rejected")
    }
    return ratio["chosen"], ratio["rejected"], preference["max_length"]


def measure(kind: str, path: Path, pairs: list[dict], max_length: int) -> dict:
    from train.data import prompt_messages

    reported = report_scores(path, pairs) if kind == "dpo_implicit" else None
    if reported:
        chosen, rejected, max_length = reported
        source = str(path / "eval" / "report.json")
    else:
        model = load_reward(kind, str(path))
        model.max_length = max_length
        conversations = [prompt_messages(p["prompt"]) for p in pairs]
        chosen = np.array(model.score(conversations, [p["chosen"] for p in pairs]))
        rejected = np.array(model.score(conversations, [p["rejected"] for p in pairs]))
        source = "scored here"
    lengths = np.array([[len(p["chosen"]), len(p["rejected"])] for p in pairs])
    scores = np.concatenate([chosen, rejected])
    return {
        "kind": kind,
        "path": str(path),
        "scores_from": source,
        "max_length": max_length,  # prompt + reply tokens; a longer reply is cut (train.evaluate.preference.fit)
        **skill(chosen, rejected, lengths, np.array([p.get("tree_id") for p in pairs], dtype=object)),
        # the spread sets how much a fixed penalty (missing_eos_penalty) weighs beside this reward
        "score_std": float(scores.std()),
        "score_mean": float(scores.mean()),
    }


def markdown(results: dict) -> str:
    from train.evaluate.stats import fmt, fmt_p

    lines = [
        f"Reward accuracy on {results['pairs']} ({results['n']} pairs; chosen scored strictly above rejected; "
        "95% Wilson intervals; reward vs longer: pairs only the reward gets right / only length gets right, "
        "exact McNemar test; pairs of one tree count together). Written by `python -m study.reward_skill`.",
        "",
        "| reward | all pairs | longer wins | reward vs longer | length-matched | longer wins (matched) "
        "| reward vs longer (matched) | score std |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["rewards"].items():
        cells = []
        for s in ("all", "length_matched"):
            test = r[s]["reward_vs_longer"]
            cells += [f"{fmt(r[s][k], percent=True)} (n={r[s][k]['n']})" for k in ("reward", "longer_wins")]
            cells.append(f"+{test['better']} / -{test['worse']}, {fmt_p(test['p_value'])}")
        lines.append(f"| {name} | {' | '.join(cells)} | {r['score_std']:.3f} |")
    lines += [f"- skipped {line}" for line in results["skipped"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.reward_skill", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pairs", default="data/study-splits/dev.jsonl", help="held-out pairs: dev, where choices are made"
    )
    parser.add_argument(
        "--reward",
        action="append",
        required=True,
        metavar="KIND:PATH",
        help=f"KIND is one of {', '.join(KINDS)}",
    )
    parser.add_argument("--output", default="study/reward_skill", help="writes OUTPUT.json and OUTPUT.md")
    parser.add_argument("--max-length", type=int, default=512, help="tokens scored per reply with its prompt")
    args = parser.parse_args(argv)
    from assistant.atomic import write_text
    from train.data import load_pairs

    pairs = load_pairs(args.pairs)
    results = {"pairs": args.pairs, "n": len(pairs), "rewards": {}, "skipped": []}
    for spec in args.reward:
        kind, _, path = spec.partition(":")
        if kind not in KINDS or not path:
            parser.error(f"--reward {spec!r}: write KIND:PATH with KIND one of {', '.join(KINDS)}")
        path = Path(path)
        if not path.exists():
            results["skipped"].append(f"{spec}: {path} does not exist")
            print(f"skipped {spec}: {path} does not exist (train it first)")
            continue
        if seen := trained_on(path, pairs):
            print(f"error: {path} was trained on {len(seen)} trees of {args.pairs}: not a held-out measure")
            return 2
        results["rewards"][f"{kind}:{path.name}"] = measure(kind, path, pairs, args.max_length)
    write_text(Path(f"{args.output}.json"), json.dumps(results, indent=2) + "\n")
    write_text(Path(f"{args.output}.md"), markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
