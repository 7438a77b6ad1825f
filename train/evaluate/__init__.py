"""Does the tuned model do better than its base on what people preferred, on data it never saw?

    python -m train.evaluate --adapter DIR --pairs data/pairs/eval.jsonl --judge demo/judge-combined --output-dir DIR/eval
    python -m train.evaluate --votes votes.jsonl --output-dir votes-report       # the arena's leaderboard

One module per job, read top to bottom:
  * ``inputs``: options, checks (before any model loads), held-out pairs in a fixed sha256 order,
    the trees the adapter trained on (left out), generation defaults from the adapter's recipe;
  * ``preference``: preference accuracy on human labels (the primary measure for GRPO; for DPO it is
    the DPO objective measured on held-out pairs);
  * ``answers``: k answers per prompt from base and tuned (at serving length), the independent judge's
    verdicts and its own accuracy, the stop-rate guard, and the training objective (the adapter's
    rewards, reported as what it is);
  * ``length``: what length alone explains: the judge's length baselines, the length-controlled win rate;
  * ``stats``: Wilson and Newcombe intervals, tree-clustered bootstrap intervals, exact paired tests
    counted per conversation tree;
  * ``report`` / ``plots``: report.md from a template, and the plots;
  * the arena votes and their Bradley-Terry leaderboard come from ``assistant.votes`` and
    ``assistant.leaderboard`` (the Space serves the same code).
A report belongs to one adapter: report.json records the sha256 of its weights and the identity of
the base weights used, and the model card embeds a report only when that sha256 matches.

Outputs (a folder replaced whole, atomically): report.json, report.md, samples.md, margins.png,
judge.png, generations.jsonl; with --votes, leaderboard.json and leaderboard.md.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from assistant.models import short_name
from train.evaluate import answers as answering
from train.evaluate import base_cache
from train.evaluate.inputs import (
    EvalArguments,
    EvalError,
    adapter_file,
    check_args,
    check_output_dir,
    generation_defaults,
    order_pairs,
    pick_samples,
    prompt_key,
    read_pairs,
    read_recipe,
    trained_trees,
    unique_prompts,
)
from train.evaluate.length import judge_caveat
from train.evaluate.stats import fmt, fmt_p

__all__ = ["EvalArguments", "EvalError", "main", "run"]
SCHEMA_VERSION = 2


def adapter_identity(adapter: str, revision: str | None, base: str) -> dict:
    from train.identity import base_identity, file_sha256

    weights = adapter_file(adapter, "adapter_model.safetensors", revision)
    return {
        "name": short_name(adapter),
        "sha256": file_sha256(weights) if weights else None,
        "base": base_identity(base),
    }


def judge_identity(judge: str) -> dict:
    from train.identity import folder_weights_sha256

    info = Path(judge) / "training_info.json"
    if not info.is_file():  # a mean of judges (train.scorer.MeanOfJudges) describes itself there
        info = Path(judge) / "judges.json"
    description = json.loads(info.read_text()).get("description") if info.is_file() else None
    sha = folder_weights_sha256(Path(judge)) if Path(judge).is_dir() else None
    return {"name": short_name(judge), "weights_sha256": sha, "description": description}


def objective_left_out(recipe: dict) -> str | None:
    """Why the training-objective section cannot be computed here (its reward model is not at hand),
    found before anything is generated; None when it can (or the method has no such section)."""
    from train.pieces import missing_model

    names = recipe.get("reward_funcs") or []
    if recipe.get("method", "grpo") != "grpo":
        return None
    needs = {"reward_model": ("reward_model_name_or_path", "its reward model"),
             "dpo_implicit": ("implicit_reward_adapter", "its implicit reward's DPO adapter")}  # fmt: skip
    for name, (key, what) in needs.items():
        if name in names and (missing := missing_model(recipe.get(key) or "", what)):
            return f"the training-objective section is left out: {missing}"
    return None


def evaluate_adapter(
    args: EvalArguments, pairs: list[dict], excluded: int, recipe: dict, left_out: str | None
) -> tuple[dict, list[dict]]:
    """Every measurement of one adapter against its base; (report, one row per prompt); ``left_out``
    says why the training-objective section is left out (objective_left_out), if it is."""
    from assistant.generation import GenerationSettings
    from assistant.models import load_model

    loaded = load_model(base=args.base, adapter=args.adapter, revision=args.revision, device=args.device)
    max_new_tokens, temperature, from_recipe = generation_defaults(args, recipe)
    settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature, seed=args.seed)
    settings = settings if args.top_p is None else replace(settings, top_p=args.top_p)
    prompts = unique_prompts(pairs)
    report: dict = {
        "schema_version": SCHEMA_VERSION,
        "seed": args.seed,
        "adapter": adapter_identity(args.adapter, args.revision, loaded.base),
        "model": {"device": loaded.device, "precision": loaded.precision},
        "pairs": {
            "file": short_name(str(args.pairs)),
            "n": len(pairs),
            "prompts": len(prompts),
            "order": "sha256 of the prompt's message id",
            "limit": args.limit,
            "left_out_trained_trees": excluded,
        },
        "settings": {**answering.sampling(settings), "k": args.num_generations, "from_recipe": from_recipe},
    }
    report["adapter"]["method"] = recipe.get("method")  # what the preference margin means depends on it
    answers = measure(args, loaded, pairs, prompts, settings, report)
    report["stop_guard"] = answering.stop_guard(report["answers"])
    if left_out:
        report["training_objective_left_out"] = left_out
    else:
        report["training_objective"] = answering.training_objective(
            loaded, prompts, answers, recipe, args.seed
        )
    judged = {**(report.get("judge_verdicts") or {}).get("scores", {})}
    if "judge" in (report.get("penalised_base") or {}):
        judged["penalised"] = report["penalised_base"]["judge"]["scores"]
    rows = generation_rows(prompts, answers, {"scores": judged}, args.seed)
    by_key = {row["parent_id"]: row for row in rows}
    report["samples"] = [sample(pair, by_key[prompt_key(pair)]) for pair in pick_samples(pairs, args.samples)]
    return report, rows


def measure(
    args: EvalArguments, loaded, pairs: list[dict], prompts: list[dict], settings, report: dict
) -> dict:
    """Preference accuracy, the answers, their loops and ends, and the judge's verdicts into ``report``;
    returns the answers. The base's half (and the penalised base's) comes from ``--base-cache`` when
    an earlier adapter left it there."""
    from train.evaluate.defects import compare
    from train.evaluate.preference import preference_accuracy

    judge_id = judge_identity(args.judge) if args.judge else None
    knob = answering.knob(args.base_repetition_penalty, args.base_no_repeat_ngram_size)
    key = base_cache.cache_key(
        base=report["adapter"]["base"],
        pairs=[[p["prompt"], p["chosen"], p["rejected"]] for p in pairs],
        settings={k: v for k, v in report["settings"].items() if k != "from_recipe"},
        penalty=knob,
        max_length=args.max_length,
        batch_size=args.batch_size,
        judge=judge_id,
        format=3,  # what is kept: 3 = the base's and the penalised base's answers and judge scores
    )
    cached = base_cache.load(args.base_cache, key) if args.base_cache else {}
    report["base_from_cache"] = bool(cached)
    report["preference"] = preference_accuracy(
        loaded, pairs, args.batch_size, args.max_length, args.seed, base_scores=cached.get("preference")
    )
    answers = answering.generate_answers(
        loaded, prompts, settings, args.num_generations, args.batch_size, cached.get("answers"), knob
    )
    report["answers"] = answering.describe(answers, args.seed, prompts)
    report["defects"] = compare(answers["base"], answers["tuned"], answering.trees(prompts))
    scores = {}
    if args.judge:
        from train.scorer import load_judge

        judge = load_judge(args.judge, device=loaded.device)
        accuracy = cached.get("judge_accuracy") or answering.judge_accuracy(judge, pairs)
        report["judge"] = {**judge_id, "accuracy": accuracy}
        scores = dict(cached.get("judge") or {})
        for side in [side for side in answers if side not in scores]:
            scores[side] = answering.judge_scores(judge, prompts, answers[side])
        report["judge_verdicts"] = answering.judge_verdicts(
            scores, prompts, answers, args.seed, settings.max_new_tokens
        )
    if knob:
        report["penalised_base"] = answering.penalised_verdict(scores, prompts, answers, knob)
    if args.judge_endpoint:
        from train.data import prompt_messages
        from train.evaluate.endpoint_judge import EndpointJudge, endpoint_verdicts

        encoder = (
            answering.per_prompt(scores["tuned"]) - answering.per_prompt(scores["base"]) if scores else None
        )
        report["endpoint_judge"] = endpoint_verdicts(
            EndpointJudge(args.judge_endpoint, args.judge_model),
            [prompt_messages(p["prompt"]) for p in prompts],
            answers,
            answering.trees(prompts),
            encoder,
        )
    if args.base_cache and not cached:
        kept = [side for side in answers if side != "tuned"]
        judged = {"judge": {s: scores[s] for s in kept}, "judge_accuracy": accuracy} if scores else {}
        base_cache.save(args.base_cache, key, report["preference"], {s: answers[s] for s in kept}, judged)
    return answers


def generation_rows(prompts: list[dict], answers: dict, verdicts: dict | None, seed: int) -> list[dict]:
    """generations.jsonl: every answer of each model (and of the penalised base) to every prompt, with
    its seed, whether it ended, was cut at a new turn or loops, and its judge score."""
    from assistant.defects import loops

    scores = (verdicts or {}).get("scores") or {}
    rows = []
    for i, pair in enumerate(prompts):
        row = {"parent_id": prompt_key(pair), "tree_id": pair.get("tree_id"), "prompt": pair["prompt"]}
        for side in answers:
            row[side] = [
                {"answer": a.text, "tokens": a.tokens, "ended": a.ended, "cut": a.cut, "loops": loops(a.text)}
                | {"seed": seed + j}
                | ({"judge": scores[side][i][j]} if side in scores else {})
                for j, a in enumerate(answers[side][i])
            ]
        rows.append(row)
    return rows


def sample(pair: dict, row: dict) -> dict:
    """A side-by-side sample: each model's first answer (same seed), with the judge's scores."""
    first = {side: row[side][0] for side in answering.SIDES}
    return {
        "prompt": pair["prompt"],
        **{side: first[side]["answer"] for side in first},
        "judge": {side: first[side]["judge"] for side in first} if "judge" in first["base"] else None,
    }


def write_outputs(out: Path, report: dict, rows: list[dict] | None) -> None:
    """Everything appears together or not at all (the folder is swapped in whole)."""
    from assistant.atomic import replace_folder
    from train.evaluate.plots import plot_judge, plot_margins
    from train.evaluate.report import render_report, render_samples

    with replace_folder(out) as tmp:
        if "preference" in report:
            plot_margins(report["preference"], tmp / "margins.png")
            if report.get("judge_verdicts"):
                plot_judge(report["judge_verdicts"], report["judge"]["name"], tmp / "judge.png")
            with open(tmp / "generations.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            (tmp / "samples.md").write_text(render_samples(report), encoding="utf-8")
            (tmp / "report.md").write_text(render_report(report), encoding="utf-8")
        if "leaderboard" in report:
            from assistant.leaderboard import leaderboard_markdown

            (tmp / "leaderboard.md").write_text(leaderboard_markdown(report["leaderboard"]), encoding="utf-8")
        (tmp / "report.json").write_text(
            json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )


def run(args: EvalArguments) -> dict:
    """Check the inputs (before anything is loaded), measure, and write the report; return report.json."""
    check_args(args)
    out = check_output_dir(args.output_dir)
    pairs, excluded = None, 0
    if args.pairs:
        pairs = order_pairs(read_pairs(args.pairs))
        # A pair from a tree the adapter was trained on would measure memory, not preference.
        trained = trained_trees(args.adapter, args.revision)
        kept = [pair for pair in pairs if pair["tree_id"] not in trained]
        excluded = len(pairs) - len(kept)
        if not kept:
            raise EvalError(
                f"{args.pairs}: all {len(pairs)} pairs come from trees the adapter was trained on; "
                "give held-out pairs (eval.jsonl)"
            )
        if excluded:
            print(f"note: left out {excluded} pairs from trees the adapter was trained on", file=sys.stderr)
        pairs = kept[: args.limit]
    recipe = read_recipe(args.adapter, args.revision) if pairs is not None else {}
    left_out = objective_left_out(recipe)
    if left_out:
        print(f"note: {left_out}", file=sys.stderr)
    votes = None
    if args.votes:
        from assistant.votes import VotesError, read_votes

        try:
            votes = read_votes(args.votes)
        except VotesError as error:
            raise EvalError(str(error)) from None
    start = time.perf_counter()
    report: dict = {"schema_version": SCHEMA_VERSION}
    rows = None
    if pairs is not None:
        report, rows = evaluate_adapter(args, pairs, excluded, recipe, left_out)
    if votes is not None:
        from assistant.leaderboard import leaderboard

        report["leaderboard"] = {"file": short_name(str(args.votes)), **leaderboard(votes, seed=args.seed)}
    report["runtime_s"] = round(time.perf_counter() - start, 1)
    write_outputs(out, report, rows)
    return report


def summary_lines(report: dict, out: str) -> list[str]:
    lines = []
    if "preference" in report:
        p = report["preference"]
        lines.append(
            f"preference accuracy (n={p['n']}): base {fmt(p['base']['accuracy'], percent=True)}, "
            f"tuned {fmt(p['tuned']['accuracy'], percent=True)}; flipped +{p['test']['better']} "
            f"-{p['test']['worse']}, McNemar {fmt_p(p['test']['p_value'])}"
        )
    if report.get("judge_verdicts"):
        j, test = report["judge_verdicts"], report["judge_verdicts"]["per_prompt"]["test"]
        accuracy = report["judge"]["accuracy"]
        lines.append(
            f"judge {report['judge']['name']} (its accuracy {fmt(accuracy, percent=True)}): "
            f"tuned wins {fmt(j['per_prompt']['win'], percent=True)} of {test['n']} prompts, "
            f"sign test per tree {fmt_p(test['p_value'])}; at equal length "
            f"{fmt(j.get('length_controlled'), percent=True)}"
        )
        lines += [line for line in [judge_caveat(accuracy)] if line]
    flag = answering.stop_flag(report.get("stop_guard"))
    lines += [flag] if flag else []
    if "leaderboard" in report:
        lines.append(f"leaderboard of {report['leaderboard'].get('votes', '?')} votes")
    lines.append(f"wrote {out}/report.json in {report['runtime_s']:.0f}s")
    return lines


def main(argv: list[str] | None = None) -> int:
    from train.cli import require_train_extra

    require_train_extra("python -m train.evaluate")
    from trl import TrlParser

    (args,) = TrlParser(EvalArguments, prog="python -m train.evaluate").parse_args_and_config(argv)
    from assistant.generation import RequestError
    from assistant.models import ModelLoadError

    try:
        report = run(args)
    except (EvalError, ModelLoadError, RequestError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130
    print("\n".join(summary_lines(report, args.output_dir)))
    return 0
