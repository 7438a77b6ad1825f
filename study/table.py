"""The study's tables and plot, written from the finished runs' own files (report.json of
``python -m train.evaluate`` on dev, in eval/, and of ``python -m study.sealed`` on the sealed test, in
sealed/; training_info.json of ``python -m train``; run.json of ``study.run``), with each GRPO candidate
against its warm start (study.versus)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from study.reading import gold_lines, reading, reused_line, reused_test, rewards_optimised
from study.rows import SPLITS, row
from train.evaluate.ledger import LEDGER, ledger_line, read_ledger
from train.evaluate.length import judge_caveat, judge_skill
from train.evaluate.stats import fmt, fmt_p


def _defect_cell(r: dict, measure: str) -> str:
    """``17% → 9%, trees 12 / 3, p = 0.04``: base → tuned and the exact paired test (better / worse)."""
    d = (r.get("defects") or {}).get(measure)
    if not d:
        return "n/a"
    unit = d["test"].get("trees") or d["test"]
    return (
        f"{fmt(d['base'], percent=True)} → {fmt(d['tuned'], percent=True)}, "
        f"+{unit['better']} / −{unit['worse']}, {fmt_p(d['test']['p_value'])}"
    )


def _cells(r: dict) -> list[str]:
    p, j = r["preference"], r["judge"]["per_prompt"]
    objective = r["objective"]
    trained = (
        f"{objective['name']} {objective['first_tenth']:.3f} → {objective['last_tenth']:.3f}"
        if objective["first_tenth"] is not None
        else "n/a"
    )
    guard = r.get("stop_guard")
    return [
        f"`{r['name']}`",
        f"{fmt(p['base'], percent=True)} → {fmt(p['tuned'], percent=True)}"
        + (" (the DPO objective)" if r["method"] == "dpo" else ""),
        _test_cell(p["test"]),
        fmt(j["win"], percent=True) if j else "n/a",
        _test_cell(j["test"]) if j else "n/a",
        fmt(r.get("length_controlled"), percent=True),
        _clean_cell(r["judge"].get("both_clean")),
        trained,
        f"{r['answer_tokens']['base']['mean']:.0f} → {r['answer_tokens']['tuned']['mean']:.0f}",
        _defect_cell(r, "loop"),
        _defect_cell(r, "end") + (" **flagged**" if guard and guard["flagged"] else ""),
        "n/a" if r["frac_reward_zero_std"] is None else f"{r['frac_reward_zero_std']:.2f}",
        f"{r['train_runtime_s'] / 60:.0f} min, {r['steps']} steps"
        + (" (resumed: the last part only)" if r.get("resumed") else "")
        if r["train_runtime_s"]
        else "n/a",
        f"{r['peak_rss_mb'] / 1024:.1f} GB" if r["peak_rss_mb"] else "n/a",
    ]


def _clean_cell(clean: dict | None) -> str:
    if not clean:
        return "n/a"
    return f"{fmt(clean['win'], percent=True)} of {clean['prompts']}; {_test_cell(clean['test'])}"


def _test_cell(test: dict) -> str:
    """Items better / worse, and the trees' counts the p-value is computed from where items share trees."""
    trees = test.get("trees")
    per_tree = f" (trees +{trees['better']} / −{trees['worse']})" if trees else ""
    return f"+{test['better']} / −{test['worse']}{per_tree}, {fmt_p(test['p_value'])}"


HEADER = [
    "candidate",
    "preference accuracy, base → tuned",
    "pairs flipped right / wrong, McNemar per tree",
    "judge: tuned wins (per prompt)",
    "judge: prompts better / worse, sign test per tree",
    "judge: tuned wins at equal length (length-controlled, in characters; prompts where both were cut left out)",
    "judge: tuned wins where both answers are clean (ended, no loop): content; prompts, sign test per tree",
    "training objective, first → last tenth",
    "answer tokens",
    "loops, base → tuned; prompts (trees) fewer / more, exact paired test",
    "ends by itself, base → tuned; more / fewer, exact paired test (flagged: > 10 points below base)",
    "GRPO groups with zero reward spread",
    "training time",
    "peak memory",
]


def table_markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.6 * len(rows) + 1.8), sharey=True)
    names = [f"{r['name']} ({r['split']})" for r in rows]
    for y, r in enumerate(rows):
        d = r["preference"]["difference"]
        left.errorbar(
            d["mean"], y, xerr=[[d["mean"] - d["ci95"][0]], [d["ci95"][1] - d["mean"]]], fmt="o", capsize=4
        )
        j = r["judge"]["per_prompt"]
        if j:
            w = j["win"]
            right.errorbar(
                w["rate"],
                y,
                xerr=[[w["rate"] - w["ci95"][0]], [w["ci95"][1] - w["rate"]]],
                fmt="o",
                capsize=4,
            )
    left.axvline(0, color="black", linewidth=0.8)
    right.axvline(0.5, color="black", linewidth=0.8)
    left.set_yticks(range(len(names)), names)
    left.set_xlabel("preference accuracy: tuned − base (95% Newcombe, per tree)")
    right.set_xlabel("judge: share of prompts where tuned wins (95% Wilson, per tree)")
    left.invert_yaxis()
    fig.suptitle("Method study: tuned against base on held-out Open Assistant trees (dev, sealed test)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


SECOND_ROUND = Path("study/second-round/results.json")  # reads of the old test whose table was frozen


def reused(sealed: list[dict]) -> dict:
    """The old sealed test's record as a reused test (study.reading.reused_test), from the ledger and
    every read's row, the frozen second round's included."""
    earlier = json.loads(SECOND_ROUND.read_text())["sealed_test"] if SECOND_ROUND.is_file() else []
    return reused_test(sealed, read_ledger(LEDGER), earlier)


BEGIN, END = "<!-- study table: written by python -m study.run -->", "<!-- end of study table -->"


def sections(dev: list[dict], sealed: list[dict], versus: list[dict], level: str = "##") -> list[str]:
    """The study's results in words and tables: dev (where every choice was made), the old sealed test
    (now a reused test, with its ledger and the correction over every candidate it read) and each GRPO
    candidate against its warm start."""
    from study.versus import summary

    def split(rows: list[dict]) -> list[str]:
        if not rows:
            return ["No candidate has been evaluated here yet."]
        settings = rows[0]["settings"]
        return [
            f"{rows[0]['pairs']} pairs, none from a training tree. The judge's verdicts: {settings['k']} "
            f"answer(s) per prompt and model, temperature {settings['temperature']}, at most "
            f"{settings['max_new_tokens']} new tokens.",
            "",
            table_markdown(rows),
            *reading(rows),
        ]

    return [
        f"{level} Dev: every choice is made here",
        "",
        *split(dev),
        "",
        f"{level} Reused test (the old sealed test)",
        "",
        ledger_line(),
        "",
        reused_line(reused(sealed)),
        "",
        *split(sealed),
        "",
        f"{level} GRPO against its warm start",
        "",
        *(
            [f"- {summary(v)}." for v in versus]
            or ["No GRPO candidate with a warm start has been evaluated yet."]
        ),
        "",
        *gold_lines(dev),
    ]


def embed(readme: Path, rows: tuple[list, list, list], demos: dict[Path, str]) -> None:
    """The tables, their reading and which candidates the demo adapters are, in docs/study.md between
    the markers (so its figures are the current results file's, never typed by hand); ``rows`` is
    write_table's (dev, sealed test, against the warm start)."""
    from assistant.atomic import write_text

    text = readme.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"error: {readme} has no study table markers; add {BEGIN} and {END} lines")
    head, rest = text.split(BEGIN, 1)
    body = sections(*rows, level="###") + [
        f"`{folder}` is the `{name}` adapter: it met the bar on the sealed test (`study.run.pick_demos`)."
        for folder, name in demos.items()
    ]
    write_text(readme, head + BEGIN + "\n" + "\n".join(body) + "\n" + END + rest.split(END, 1)[1])


def compare_warm_starts(runs: Path, warm_starts: dict[str, str]) -> list[dict]:
    """Each candidate against its warm start on every split both were evaluated on; the result also
    goes into the candidate's report folder (versus.json), for its card."""
    from assistant.atomic import write_text
    from study.versus import compare, summary
    from train.card import report_matches

    out = []
    for name, warm in warm_starts.items():
        for folder in SPLITS:
            if report_matches(runs / name, folder) and report_matches(runs / warm, folder):
                result = compare(runs / name / folder, runs / warm / folder, (name, warm))
                result = {"split": SPLITS[folder], **result, "summary": summary(result)}
                write_text(runs / name / folder / "versus.json", json.dumps(result, indent=2) + "\n")
                out.append(result)
    return out


def lost_rows(path: Path, dev: list[dict], sealed: list[dict]) -> list[str]:
    """The rows of the results at ``path`` that the new ones would drop (split: name)."""
    if not path.is_file():
        return []
    before = json.loads(path.read_text())
    return [
        f"{split}: {r['name']}"
        for split, rows in (("dev", dev), ("sealed_test", sealed))
        for r in before.get(split) or []
        if r["name"] not in {n["name"] for n in rows}
    ]


def write_table(
    candidates, runs: Path, results: Path, reward_models: dict, warm_starts: dict[str, str] | None = None
) -> tuple[list[dict], list[dict], list[dict]]:
    """results.json, README.md and the plot; returns (dev rows, sealed-test rows, against the warm start)."""
    from assistant.atomic import write_text

    dev, sealed = ([r for r in (row(name, runs, folder) for name in candidates) if r] for folder in SPLITS)
    if lost := lost_rows(results / "results.json", dev, sealed):
        # a kept report gone, or one of other weights: re-writing would erase the committed evidence
        raise SystemExit(
            f"error: {', '.join(lost)} are in {results / 'results.json'} but their reports are not in {runs}; "
            f"run them again (python -m study.run --only NAME), or delete {results / 'results.json'} to start anew"
        )
    versus = compare_warm_starts(runs, warm_starts or {})
    write_text(
        results / "results.json",
        json.dumps(
            {
                "dev": dev,
                "sealed_test": sealed,
                "reused_test": reused(sealed),
                "versus_warm_start": versus,
                "reward_models": reward_models,
            },
            indent=2,
        )
        + "\n",
    )
    if not dev:
        return dev, sealed, versus
    plot(dev + sealed, results / "plots" / "study.png")
    for r in (r for r in dev if r.get("gold_checks")):  # the over-optimisation curve, kept with the results
        curve = runs / r["name"] / "plots" / "gold_check.png"
        if curve.is_file():
            shutil.copy2(curve, results / "plots" / f"{r['name']}-gold_check.png")
    accuracy = next((r["judge"]["accuracy"] for r in dev if r["judge"]["accuracy"]), None)
    judge = next((r["judge"]["name"] for r in dev if r["judge"].get("name")), "the judge")
    checks = [
        f"- `{judge}` on the dev pairs: {judge_skill(accuracy)}."
        + "".join(f" **{line}**" for line in [judge_caveat(accuracy)] if line)
    ] * bool(accuracy) + [
        f"- `{name}`, {where.replace('_', ' ')}: {judge_skill(rate)}."
        + "".join(f" **{line}**" for line in [judge_caveat(rate)] if line)
        for name, c in reward_models.items()
        for where, rate in c.items()
    ]
    checks += rewards_optimised(results / "reward_skill.json")
    text = "\n".join(
        [
            "# Method study: results",
            "",
            "Written by `python -m study.run` from the runs' own files (`results.json` has every figure). "
            "Rates with Wilson 95% intervals; paired exact tests of tuned against base on the same pairs / "
            "prompts, counting each conversation tree once.",
            "",
            *sections(dev, sealed, versus),
            "![Study](plots/study.png)",
            "",
            "Held-out accuracy of the reward models (how often each prefers the human-chosen reply), beside "
            "what length alone scores on the same pairs:",
            "",
            *checks,
            "",
        ]
    )
    write_text(results / "README.md", text)
    return dev, sealed, versus
