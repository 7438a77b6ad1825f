"""Judge a finished evaluation's answers again, with another judge, without generating anything.

    python -m train.evaluate.rejudge demo/smollm2-grpo-demo/eval --judge demo/judge-hh-rlhf \
        --pairs data/study-splits/dev.jsonl

The answers are the ones in the report's generations.jsonl, as they were generated (report.json's
settings say how: a report from before top_k was recorded was sampled with transformers' default
top-k 50, and report.md says so). Re-computed with the current code: the judge's accuracy on the same
held-out pairs with its length baselines, its verdicts (equal length in characters), and the loops and
ends. The preference accuracy is the model's, not the judge's, and is kept. The report folder is
replaced whole, with ``rejudged`` saying which judge's verdicts it replaced.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from assistant.generation import Answer
from train.evaluate import answers as answering
from train.evaluate import generation_rows, judge_identity, sample, write_outputs
from train.evaluate.defects import compare
from train.evaluate.inputs import order_pairs, pick_samples, prompt_key, read_pairs, trained_trees


def read_answers(folder: Path) -> tuple[list[dict], dict]:
    """The prompts (in the report's order) and ``answers[side][i][j]`` from generations.jsonl."""
    rows = [json.loads(line) for line in (folder / "generations.jsonl").read_text().splitlines() if line]
    sides = [side for side in ("base", "tuned", "penalised") if side in rows[0]]
    answers = {
        side: [
            [Answer(a["answer"], a["ended"], a.get("cut", False), a["tokens"], side) for a in row[side]]
            for row in rows
        ]
        for side in sides
    }
    prompts = [{k: row[k] for k in ("parent_id", "tree_id", "prompt")} for row in rows]
    return prompts, answers


def rejudge(folder: Path, judge_path: str, pairs_file: str) -> dict:
    from train.scorer import load_judge

    report = json.loads((folder / "report.json").read_text())
    prompts, answers = read_answers(folder)
    # the same held-out pairs as the evaluation: its file, less the adapter's training trees, its limit
    trained = trained_trees(str(folder.parent))
    pairs = [p for p in order_pairs(read_pairs(pairs_file)) if p["tree_id"] not in trained]
    pairs = pairs[: report["pairs"]["limit"]]
    if len(pairs) != report["pairs"]["n"] or {prompt_key(p) for p in pairs} != {
        p["parent_id"] for p in prompts
    }:
        raise SystemExit(
            f"error: {pairs_file} does not give the {report['pairs']['n']} pairs {folder} was evaluated on"
        )
    judge = load_judge(judge_path)
    scores = {side: answering.judge_scores(judge, prompts, answers[side]) for side in answers}
    before = (report.get("judge") or {}).get("name")
    report["judge"] = {**judge_identity(judge_path), "accuracy": answering.judge_accuracy(judge, pairs)}
    limit = report["settings"]["max_new_tokens"]
    report["judge_verdicts"] = answering.judge_verdicts(scores, prompts, answers, report["seed"], limit)
    report["defects"] = compare(answers["base"], answers["tuned"], answering.trees(prompts))
    if "penalised" in answers:
        penalised = report["penalised_base"]  # (a report from before the knob was named: its penalty)
        knob = penalised.get("knob") or {"repetition_penalty": penalised["repetition_penalty"]}
        report["penalised_base"] = answering.penalised_verdict(scores, prompts, answers, knob)
    report["rejudged"] = {"judge_before": before, "judge": report["judge"]["name"], "answers": "as generated"}
    rows = generation_rows(prompts, answers, {"scores": scores}, report["seed"])
    by_key = {row["parent_id"]: row for row in rows}
    report["samples"] = [
        sample(p, by_key[prompt_key(p)]) for p in pick_samples(pairs, len(report["samples"]))
    ]
    write_outputs(folder, report, rows)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.evaluate.rejudge", description=__doc__.splitlines()[0]
    )
    parser.add_argument("folder", type=Path, help="an evaluation folder (report.json, generations.jsonl)")
    parser.add_argument("--judge", required=True, help="the judge to score the answers with")
    parser.add_argument("--pairs", required=True, help="the held-out pairs the evaluation was run on")
    args = parser.parse_args(argv)
    report = rejudge(args.folder, args.judge, args.pairs)
    from train.evaluate.report import verdict

    print(verdict(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
