"""The method study: which way of tuning SmolLM2-135M-Instruct on Open Assistant preferences helps?

    python -m study.run                      # everything: data, judge, every candidate, the table
    python -m study.run --only dpo           # one candidate (trained and evaluated), then the table
    python -m study.run --step table         # only re-write the table from the evaluated candidates
    python -m study.run --step demo          # the table, into docs/study.md too; a candidate that met the
                                             # bar on the sealed test becomes its method's demo adapter

Every candidate is a recipe in recipes/study/, trained on the same training pairs (the English Open
Assistant pairs of the oasst1 validation split and the oasst2 sample, at every depth) and evaluated by
``python -m train.evaluate`` on the same dev pairs, with the same judge (demo/judge-combined: two judges trained on HH-RLHF only, chosen by python -m study.judge_skill) and the same
generation settings. Three splits by tree (train.data.splits): dev = the 25% of trees the study held out
before (read many times: every choice is made on it), a sealed test = the next 25% (trees no evaluation
had read), train = the rest. Nothing here reads the sealed test: ``python -m study.sealed`` evaluates the
final candidates on it, once. Finished steps are skipped, so a killed study resumes; an adapter trained on
other pairs than its recipe's is set aside (outputs/study/stale/) and retrained. Adapters and reports
go to outputs/study/<name>/, and every evaluated one is copied into the tree (study/adapters/<name>/):
the table is written from those copies, so any clone can rewrite it. Results: study/results.json,
study/README.md (the table) and study/plots/.
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
DATA = Path("data/study-splits")
# dev: the study's old held-out trees (145 pairs, 65 trees); the sealed test: the next 25% (114 prompts,
# 52 trees: at least 100); train: the other 50% (254 pairs)
EVAL_FRACTION = TEST_FRACTION = 0.25
# The judge: the mean of the two judges' scores, each in units of its sd on held-out HH-RLHF (written by
# study.judge_skill), chosen there by its length-matched accuracy on every Open Assistant pair outside the
# sealed test: 64% of 70, against 59% for demo/judge-hh-rlhf (a reward LoRA on SmolLM2) and 56% for
# demo/judge-minilm-hh (a frozen MiniLM cross-encoder with a head fitted on HH-RLHF) alone.
JUDGES = [Path("demo/judge-minilm-hh"), Path("demo/judge-hh-rlhf")]
JUDGE = Path("demo/judge-combined")
RUNS = Path("outputs/study")
KEPT = Path("study/adapters")  # every evaluated candidate, committed (keep)
RESULTS = Path("study")
# Policies, in the table's order; reward-model-oasst is the reward model both grpo-reward-model* need.
# demo-v1 is the demo adapter committed before the study (recipes/cpu-demo.yaml, 60 steps on 20 pairs
# of the oasst2 sample): GRPO as it was, taken from git as it was committed.
CANDIDATES = (
    "demo-v1", "grpo-baseline", "grpo-tuned", "grpo-reward-model", "grpo-reward-model-long", "dpo",
    "dpo-length-normalised", "grpo-from-dpo", "grpo-from-sft", "sft", "grpo-serving-length", "grpo-no-loop",
    "grpo-content", "grpo-content-more", "grpo-anchored", "grpo-anchored-more", "grpo-anchored-ends",
    "grpo-anchored-whole", "grpo-anchored-whole-ends", "grpo-whole-anchor",
)  # fmt: skip
DEMO_V1 = ("ce38446", "demo/smollm2-grpo-demo")
WARM_STARTS = {
    "grpo-from-sft": "sft", "grpo-from-dpo": "dpo-length-normalised", "grpo-serving-length": "sft",
    "grpo-no-loop": "grpo-serving-length", "grpo-content": "grpo-no-loop",
    "grpo-content-more": "grpo-content", "grpo-anchored": "grpo-content-more",
    "grpo-anchored-more": "grpo-anchored", "grpo-anchored-ends": "grpo-anchored",
    "grpo-anchored-whole": "grpo-anchored", "grpo-anchored-whole-ends": "grpo-anchored",
    "grpo-whole-anchor": "grpo-content-more",
}  # fmt: skip  # GRPO must beat these too
NEEDS = {
    "grpo-reward-model": "reward-model-oasst",
    "grpo-reward-model-long": "reward-model-oasst",
    **WARM_STARTS,
}
# The same settings for every candidate; the base is evaluated once for all of them (--base-cache).
# A CPU budget: 1 answer per prompt and model (the default is 3; at 256 tokens an answer takes seconds of
# this CPU), pairs scored up to 512 tokens (a long reply is cut, the same way for base and tuned). Answers
# run to the apps' serving length, 256 new tokens: a shorter cap hides a model that never stops.
EVAL_OPTIONS = "--num-generations 1 --max-length 512 --temperature 0.7 --batch-size 16".split()
EVAL_OPTIONS += [
    "--max-new-tokens",
    "256",
    "--base-repetition-penalty",
    "1.2",
]  # the base with a skeptic's knob, beside
# The base's side kept in the tree, keyed by all it depends on: a fresh machine skips an hour of it.
BASE_CACHE = Path("study/base-cache")
EVAL_OPTIONS += ["--base-cache", str(BASE_CACHE)]


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
    from train.pieces import missing_source

    if (ROOT / DATA / "stats.json").exists():
        return
    if missing := missing_source([str(source) for source in SOURCES]):
        raise SystemExit(f"error: the study's split {DATA} is not built yet and {missing}")
    sh([sys.executable, "-m", "train.data", "--source", *map(str, SOURCES), "--depth", "all",
        "--eval_fraction", str(EVAL_FRACTION), "--test_fraction", str(TEST_FRACTION),
        "--output-dir", str(DATA)])  # fmt: skip


def train(name: str, recipe: Path, output: Path) -> None:
    info = ROOT / output / "training_info.json"
    if info.exists() and not stale(json.loads(info.read_text()), recipe):
        return
    if info.exists():  # trained on other pairs (before the three splits): keep it aside, train anew
        import shutil

        aside = ROOT / RUNS / "stale" / output.name
        shutil.rmtree(aside, ignore_errors=True)
        aside.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(ROOT / output, aside)
        print(f"{name}: trained on other pairs than {recipe} names; moved to {aside.relative_to(ROOT)}")
    usage = sh([sys.executable, "-m", "train", "--config", str(recipe)])
    (ROOT / output / "run.json").write_text(json.dumps(usage, indent=2) + "\n")


def needs(name: str) -> str | None:
    """The run that ``name``'s recipe reads from outputs/ (its warm start or reward model), to train first;
    None when it has none or reads a committed one (study/adapters/), which is used as it is."""
    import yaml

    need = NEEDS.get(name)
    recipe = yaml.safe_load((ROOT / f"recipes/study/{name}.yaml").read_text())
    return need if need and f"{RUNS}/{need}" in recipe.values() else None


def stale(info: dict, recipe: Path) -> bool:
    """An adapter whose training pairs are not the ones its recipe names now."""
    import yaml

    wanted = yaml.safe_load((ROOT / recipe).read_text()).get("pairs_file")
    return wanted is not None and info.get("pairs_file") != wanted


def evaluate(name: str) -> None:
    from train.card import report_matches

    if not report_matches(ROOT / RUNS / name):
        sh([sys.executable, "-m", "train.evaluate", "--adapter", str(RUNS / name), "--pairs", str(DATA / "dev.jsonl"),
            "--judge", str(JUDGE), *EVAL_OPTIONS, "--output-dir", str(RUNS / name / "eval")])  # fmt: skip
    keep(name)


def keep(name: str, report: str | None = None) -> Path:
    """Copy an evaluated candidate (adapter, tokenizer, recipe, metrics, plots, reports) into the tree,
    study/adapters/NAME: outputs/ does not outlive a machine, and its figures must stay checkable. With
    ``report`` (a report folder: "sealed"), that folder only: the kept folder's other reports (a dev
    report re-judged in the tree) stay as they are."""
    if report is None:
        return copy_run(ROOT / RUNS / name, ROOT / KEPT / name)
    import shutil

    target = ROOT / KEPT / name / report
    shutil.rmtree(target, ignore_errors=True)
    return Path(shutil.copytree(ROOT / RUNS / name / report, target))


def copy_run(source: Path, target: Path) -> Path:
    """A run's adapter and its evidence (DEMO_FILES), copied over ``target``."""
    import shutil

    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for item in DEMO_FILES:
        if (source / item).is_dir():
            shutil.copytree(source / item, target / item)
        elif (source / item).exists():
            shutil.copy2(source / item, target / item)
    return target


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
    from train.scorer import Scorer, load_judge

    path = ROOT / RESULTS / "reward_models.json"
    if path.exists():
        return json.loads(path.read_text())
    checks = {}
    if (ROOT / JUDGE).is_dir():
        from train.hh_rlhf import build_pairs

        _, held_out, _ = build_pairs(SHARED / "hh-rlhf-helpful")  # all 613 held out
        checks[JUDGE.name] = {"hh_rlhf_held_out": judge_accuracy(load_judge(str(ROOT / JUDGE)), held_out)}
    model = ROOT / RUNS / "reward-model-oasst"
    if (model / "adapter_config.json").exists():
        held_out = load_pairs(ROOT / DATA / "dev.jsonl")
        checks["reward-model-oasst"] = {"open_assistant_dev": judge_accuracy(Scorer(str(model)), held_out)}
    from assistant.atomic import write_text

    write_text(path, json.dumps(checks, indent=2) + "\n")
    return checks


DEMOS = {
    "grpo": Path("demo/smollm2-grpo-demo"),
    "dpo": Path("demo/smollm2-dpo-demo"),
    "sft": Path("demo/smollm2-sft-demo"),
}
DEMO_FILES = ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json",
              "chat_template.jinja", "special_tokens_map.json", "recipe.yaml", "training_info.json",
              "metrics.jsonl", "data_stats.json", "plots", "eval", "sealed")  # fmt: skip


def evidence(row: dict) -> tuple[float, float]:
    """How strongly a candidate beats its base on a measure it was not trained on: the smaller p-value
    of its two paired tests where tuned did better (1 where it did not), then minus its judge win rate."""
    from train.evaluate.stats import tuned_better

    tests = [row["preference"]["test"], (row["judge"]["per_prompt"] or {}).get("test")]
    p = min([t["p_value"] for t in tests if t and tuned_better(t)], default=1.0)
    judge = row["judge"]["per_prompt"]
    return p, -(judge["win"]["rate"] if judge else 0.0)


def passed(row: dict) -> bool:
    return bool(row.get("bar")) and all(c["met"] for c in row["bar"])


def pick_demos(sealed: list[dict], ledger: dict) -> dict:
    """The demo adapters the apps serve, by a fixed rule, never by hand: the candidates that met
    study.bar on the sealed test, in a read the ledger holds for these very weights and an unchanged
    recipe, the best evidence there first, one a method. Dev only chooses what the sealed test reads
    (unread), so a method with no such candidate keeps the adapter it serves. The bar's ends criterion
    also keeps out any adapter the stop-rate guard would flag."""
    from train.evaluate.ledger import seen

    reads, by_method = seen(ledger), {}
    for row in sorted(sealed, key=evidence):
        read = reads.get(row["name"], {})
        sealed_read = read.get("adapter_sha256") == row["adapter_sha256"] and not read["changed_after_seen"]
        if sealed_read and passed(row):
            by_method.setdefault(row["method"], row)
    return by_method


def unread(dev: list[dict], ledger: dict) -> list[str]:
    """The candidates that met study.bar on dev and the sealed test has not read, the best dev evidence
    first: the ones a sealed read (python -m study.sealed NAME) could promote."""
    from train.evaluate.ledger import seen

    read = seen(ledger)
    return [r["name"] for r in sorted(dev, key=evidence) if passed(r) and r["name"] not in read]


def promote(dev: list[dict], sealed: list[dict]) -> dict:
    """Copy the picked candidates (pick_demos) over the demo adapters and write their cards."""
    from train.card import write_card
    from train.evaluate.ledger import LEDGER, read_ledger

    ledger = read_ledger(ROOT / LEDGER)
    chosen = pick_demos(sealed, ledger)
    for method, row in chosen.items():
        write_card(copy_run(ROOT / KEPT / row["name"], ROOT / DEMOS[method]))
    if waiting := unread(dev, ledger):
        print(f"met the bar on dev, not read on the sealed test: {', '.join(waiting)}")
    return {method: row["name"] for method, row in chosen.items()}


def mark_reused(sealed: list[dict]) -> None:
    """Beside every report of the old sealed test (kept, and served), ``reused.json``: that the test is
    a reused one now, and the candidate's judge win corrected over every candidate it read, which the
    card and the Evidence tab state. A served adapter's card is written again."""
    from assistant.atomic import write_text
    from study.table import reused
    from train.card import write_card
    from train.evaluate.ledger import LEDGER
    from train.identity import file_sha256

    record = reused(sealed)
    for row in sealed:
        mark = {
            **{k: record[k] for k in ("reads", "candidates", "designs_after_reads")},
            "judge": record["judge"].get(row["name"]),
            "family": len(record["judge"]),
            "both_clean": row["judge"].get("both_clean"),  # content, where endings and loops cannot decide
            "ledger": str(LEDGER),
            "written_by": "python -m study.run --step table",
        }
        text = json.dumps(mark, indent=2) + "\n"
        write_text(ROOT / KEPT / row["name"] / "sealed" / "reused.json", text)
        for folder in DEMOS.values():
            weights = ROOT / folder / "adapter_model.safetensors"
            if weights.is_file() and file_sha256(weights) == row["adapter_sha256"]:
                write_text(ROOT / folder / "sealed" / "reused.json", text)
                write_card(ROOT / folder)


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
            if need := needs(name):
                train(need, Path(f"recipes/study/{need}.yaml"), RUNS / need)
            train(name, Path(f"recipes/study/{name}.yaml"), RUNS / name)
    if args.step in ("all", "evaluate"):
        if not (ROOT / JUDGES[0] / "judge_head.json").exists():
            sh([sys.executable, "-m", "study.judge_train", "--output", str(JUDGES[0])])
        if not (ROOT / JUDGE / "judges.json").exists():
            sh([sys.executable, "-m", "study.judge_skill", *map(str, JUDGES), "--hh-limit", "100",
                "--matched-only"])  # fmt: skip
        for name in names:
            if name in CANDIDATES:
                evaluate(name)
    if args.step in ("all", "table", "demo"):
        from study.table import embed, write_table

        checks = ROOT / RESULTS / "reward_models.json"
        # measured once (a few minutes) by a full run or --step demo, then read from its file
        reward_models = check_reward_models() if args.step != "table" or checks.exists() else {}
        tables = write_table(CANDIDATES, KEPT, RESULTS, reward_models, WARM_STARTS)
        mark_reused(tables[1])
        if args.step in ("all", "demo"):
            demos = promote(*tables[:2])  # served only on a sealed pass
            embed(ROOT / "docs" / "study.md", tables, {DEMOS[method]: name for method, name in demos.items()})
            print(f"demo adapters: {demos}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
