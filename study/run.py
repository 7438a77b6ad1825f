"""The method study: which way of tuning SmolLM2-135M-Instruct on Open Assistant preferences helps?

    python -m study.run                      # everything: data, judge, every candidate, the table
    python -m study.run --only dpo           # one candidate (trained and evaluated), then the table
    python -m study.run --step table         # only re-write the table from the finished runs
    python -m study.run --step demo          # the table, the best candidates become the demo adapters, and
                                             # the table goes into the project README

Every candidate is a recipe in recipes/study/, trained on the same training pairs (the English Open
Assistant pairs of the oasst1 validation split and the oasst2 sample, at every depth) and evaluated by
``python -m train.evaluate`` on the same held-out pairs (25% of trees by id hash: no tree shared with
training), with the same judge (recipes/judge-hh-rlhf.yaml, trained on HH-RLHF only) and the same
generation settings. Finished steps are skipped, so a killed study resumes. Results: study/results.json,
study/README.md (the table) and study/plots/; adapters and reports in outputs/study/<name>/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
SOURCES = [SHARED / "oasst1-validation-en.jsonl", SHARED / "oasst2_sample.trees.jsonl"]
DATA = Path("data/study")
EVAL_FRACTION = 0.25  # >= 100 held-out pairs (145), none from a training tree
JUDGE = Path("demo/judge-hh-rlhf")
RUNS = Path("outputs/study")
RESULTS = Path("study")
# Policies, in the table's order; reward-model-oasst is the reward model both grpo-reward-model* need.
# demo-v1 is the demo adapter committed before the study (recipes/cpu-demo.yaml, 60 steps on 20 pairs
# of the oasst2 sample): GRPO as it was, taken from git as it was committed.
CANDIDATES = (
    "demo-v1", "grpo-baseline", "grpo-tuned", "grpo-reward-model", "grpo-reward-model-long", "dpo",
    "dpo-length-normalised", "grpo-from-dpo", "grpo-from-sft",
)  # fmt: skip
DEMO_V1 = ("ce38446", "demo/smollm2-grpo-demo")
NEEDS = {"grpo-reward-model": "reward-model-oasst", "grpo-reward-model-long": "reward-model-oasst",
         "grpo-from-sft": "sft"}  # fmt: skip
# The same settings for every candidate; the base is evaluated once for all of them (--base-cache).
# A CPU budget: 2 answers per prompt and model (the default is 3), at most 48 new tokens, pairs scored
# up to 512 tokens (a long reply is cut, the same way for base and tuned).
EVAL_OPTIONS = (
    "--num-generations 2 --max-new-tokens 48 --max-length 512 --temperature 0.7 --batch-size 16".split()
)
EVAL_OPTIONS += ["--base-cache", str(RUNS / "base-cache")]


def sh(command: list[str]) -> dict:
    """Run a command to the end; its wall-clock and its peak resident memory (from the kernel)."""
    print("+", " ".join(command), flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"error: {' '.join(command)} failed (exit {os.waitstatus_to_exitcode(status)})")
    return {"wall_s": round(time.perf_counter() - start, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024)}


def build_data() -> None:
    if (ROOT / DATA / "stats.json").exists():
        return
    sh([sys.executable, "-m", "train.data", "--source", *map(str, SOURCES), "--depth", "all",
        "--eval_fraction", str(EVAL_FRACTION), "--output-dir", str(DATA)])  # fmt: skip


def train(name: str, recipe: Path, output: Path) -> None:
    if (ROOT / output / "training_info.json").exists():
        return
    usage = sh([sys.executable, "-m", "train", "--config", str(recipe)])
    (ROOT / output / "run.json").write_text(json.dumps(usage, indent=2) + "\n")


def evaluate(name: str) -> None:
    from model_card import report_matches

    if report_matches(ROOT / RUNS / name):
        return
    sh([sys.executable, "-m", "train.evaluate", "--adapter", str(RUNS / name), "--pairs", str(DATA / "eval.jsonl"),
        "--judge", str(JUDGE), *EVAL_OPTIONS, "--output-dir", str(RUNS / name / "eval")])  # fmt: skip


def restore_demo_v1() -> None:
    """The pre-study demo adapter, from the commit that held it (its trained trees are left out)."""
    target = ROOT / RUNS / "demo-v1"
    if (target / "adapter_model.safetensors").exists():
        return
    commit, folder = DEMO_V1
    target.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", commit, folder], cwd=ROOT, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "--strip-components=2", "-C", str(target)], input=archive.stdout, check=True)


def check_reward_models() -> dict:
    """Held-out accuracy of the judge on HH-RLHF (its accuracy on the Open Assistant pairs is in every
    report) and of the study's own reward model on the Open Assistant pairs: how much each can be trusted."""
    from train.data import load_pairs
    from train.evaluate.answers import judge_accuracy
    from train.scorer import Scorer

    path = ROOT / RESULTS / "reward_models.json"
    if path.exists():
        return json.loads(path.read_text())
    checks = {}
    if (ROOT / JUDGE / "adapter_config.json").exists():
        held_out = load_pairs(ROOT / "data/hh-rlhf/eval.jsonl")[:200]  # the first 200 in hash order
        checks["judge-hh-rlhf"] = {"hh_rlhf_held_out": judge_accuracy(Scorer(str(ROOT / JUDGE)), held_out)}
    model = ROOT / RUNS / "reward-model-oasst"
    if (model / "adapter_config.json").exists():
        held_out = load_pairs(ROOT / DATA / "eval.jsonl")
        checks["reward-model-oasst"] = {
            "open_assistant_held_out": judge_accuracy(Scorer(str(model)), held_out)
        }
    from assistant.atomic import write_text

    write_text(path, json.dumps(checks, indent=2) + "\n")
    return checks


DEMOS = {"grpo": Path("demo/smollm2-grpo-demo"), "dpo": Path("demo/smollm2-dpo-demo")}
DEMO_FILES = ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json",
              "chat_template.jinja", "special_tokens_map.json", "recipe.yaml", "training_info.json",
              "metrics.jsonl", "data_stats.json", "plots", "eval")  # fmt: skip


def evidence(row: dict) -> tuple[float, float]:
    """How strongly a candidate beats its base on a measure it was not trained on: the smaller p-value
    of its two paired tests where tuned did better (1 where it did not), then minus its judge win rate."""
    tests = [row["preference"]["test"], (row["judge"]["per_prompt"] or {}).get("test")]
    p = min([t["p_value"] for t in tests if t and t["better"] > t["worse"]], default=1.0)
    judge = row["judge"]["per_prompt"]
    return p, -(judge["win"]["rate"] if judge else 0.0)


def promote(rows: list[dict]) -> dict:
    """The demo adapters the apps serve: the GRPO candidate with the best evidence, and the DPO one if
    its evidence is better still (a fixed rule, applied to the table, never a choice by hand)."""
    import shutil

    from model_card import write_card

    by_method = {}
    for row in sorted((r for r in rows if r["name"] != "demo-v1"), key=evidence):
        by_method.setdefault(row["method"], row)
    chosen = {"grpo": by_method.get("grpo")}
    if by_method.get("dpo") and chosen["grpo"] and evidence(by_method["dpo"]) < evidence(chosen["grpo"]):
        chosen["dpo"] = by_method["dpo"]
    for method, row in chosen.items():
        if row is None:
            continue
        source, target = ROOT / RUNS / row["name"], ROOT / DEMOS[method]
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for name in DEMO_FILES:
            if (source / name).is_dir():
                shutil.copytree(source / name, target / name)
            elif (source / name).exists():
                shutil.copy2(source / name, target / name)
        write_card(target)
    return {method: row["name"] for method, row in chosen.items() if row}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.run", description=__doc__.splitlines()[0])
    recipes = sorted(p.stem for p in (ROOT / "recipes/study").glob("*.yaml")) + ["demo-v1"]
    parser.add_argument(
        "--only", choices=recipes, action="append", help="recipes to run, in order (default: all)"
    )
    parser.add_argument("--step", choices=("all", "train", "evaluate", "table", "demo"), default="all")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    names = args.only or list(CANDIDATES)
    if args.step in ("all", "train"):
        build_data()
        for name in names:
            if name == "demo-v1":
                restore_demo_v1()
                continue
            if name in NEEDS:
                train(NEEDS[name], Path(f"recipes/study/{NEEDS[name]}.yaml"), RUNS / NEEDS[name])
            train(name, Path(f"recipes/study/{name}.yaml"), RUNS / name)
    if args.step in ("all", "evaluate"):
        train("judge-hh-rlhf", Path("recipes/judge-hh-rlhf.yaml"), JUDGE)
        for name in names:
            if name in CANDIDATES:
                evaluate(name)
    if args.step in ("all", "table", "demo"):
        from study.table import embed, write_table

        checks = ROOT / RESULTS / "reward_models.json"
        # measured once (a few minutes) by a full run or --step demo, then read from its file
        reward_models = check_reward_models() if args.step != "table" or checks.exists() else {}
        rows = write_table(CANDIDATES, RUNS, RESULTS, reward_models)
        if args.step in ("all", "demo"):
            demos = promote(rows)
            embed(ROOT / "README.md", rows, {DEMOS[method]: name for method, name in demos.items()})
            print(f"demo adapters: {demos}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
