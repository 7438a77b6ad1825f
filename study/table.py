"""The study's tables and plot, written from the finished runs' own files (report.json of
``python -m train.evaluate`` on dev, in eval/, and of ``python -m study.sealed`` on the sealed test, in
sealed/; training_info.json of ``python -m train``; run.json of ``study.run``), with each GRPO candidate
against its warm start (study.versus)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from study.ledger import ledger_line
from train.evaluate.answers import SIDES, stop_guard
from train.evaluate.length import judge_caveat, judge_skill
from train.evaluate.stats import ALPHA, fmt, fmt_p, tuned_won

OBJECTIVE = {
    "grpo": "reward",
    "dpo": "rewards/margins",
}  # what each method's training log calls its objective


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _metrics(path: Path) -> list[dict]:
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    )


def _metric_mean(path: Path, key: str) -> float | None:
    """Mean of a logged metric over every step of a run (metrics.jsonl), None when never logged."""
    values = [r[key] for r in _metrics(path) if isinstance(r.get(key), (int, float))]
    return sum(values) / len(values) if values else None


GOLD = ("reward", "judge", "judge_win", "ended", "length", "prompts")  # a gold check's (train.callbacks)


def gold_checks(path: Path) -> list[dict]:
    """A GRPO run's gold checks (its training reward and the judge on the same dev answers), by step."""
    return [
        {"step": r["step"], **{k: r.get(f"gold/{k}") for k in GOLD}}
        for r in _metrics(path)
        if "gold/judge" in r
    ]


SPLITS = {"eval": "dev", "sealed": "sealed test"}  # the folder of each split's report: its name


def row(name: str, runs: Path, folder: str = "eval") -> dict | None:
    """A candidate's figures on one split, or None until it has a report of its current weights."""
    from train.card import report_matches

    if not report_matches(runs / name, folder):
        return None
    report = _read(runs / name / folder / "report.json")
    info, usage = _read(runs / name / "training_info.json"), _read(runs / name / "run.json")
    p, j, a = report["preference"], report.get("judge_verdicts") or {}, report["answers"]
    method = info.get("method", "?")
    trend = (info.get("trends") or {}).get(OBJECTIVE.get(method, ""), {})
    return {
        "name": name,
        "split": SPLITS[folder],
        "method": method,
        "adapter_sha256": report["adapter"]["sha256"],
        "pairs": p["n"],
        "preference": {
            "base": p["base"]["accuracy"],
            "tuned": p["tuned"]["accuracy"],
            "difference": p["tuned_minus_base"]["accuracy"],
            "test": p["test"],
        },
        "judge": {
            "per_prompt": j.get("per_prompt"),
            "difference": j.get("tuned_minus_base"),
            "accuracy": (report.get("judge") or {}).get("accuracy"),  # its own, on these held-out pairs
            "name": (report.get("judge") or {}).get("name"),
        },
        "settings": report["settings"],
        "objective": {
            "name": OBJECTIVE.get(method),
            "first_tenth": trend.get("first_tenth_mean"),
            "last_tenth": trend.get("last_tenth_mean"),
        },
        "length_controlled": j.get("length_controlled"),
        "answer_tokens": {side: a[side]["answer_tokens"] for side in SIDES},
        "ended_properly": {side: a[side]["ended_properly"] for side in SIDES},
        "stop_guard": stop_guard(a),  # flagged: never promoted to a demo adapter
        # a GRPO group whose answers all score the same teaches nothing
        "frac_reward_zero_std": _metric_mean(runs / name / "metrics.jsonl", "frac_reward_zero_std"),
        "gold_checks": gold_checks(runs / name / "metrics.jsonl"),
        "train_runtime_s": info.get("train_runtime_s"),
        "resumed": bool(info.get("resumed_from")),  # then the time and memory are the last process's only
        "steps": info.get("global_step"),
        "peak_rss_mb": usage.get("peak_rss_mb"),
    }


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
        trained,
        f"{r['answer_tokens']['base']['mean']:.0f} → {r['answer_tokens']['tuned']['mean']:.0f}",
        f"{100 * guard['base']:.0f}% → {100 * guard['tuned']:.0f}%"
        + (" **flagged**" if guard["flagged"] else "")
        if guard
        else "n/a",
        "n/a" if r["frac_reward_zero_std"] is None else f"{r['frac_reward_zero_std']:.2f}",
        f"{r['train_runtime_s'] / 60:.0f} min, {r['steps']} steps"
        + (" (resumed: the last part only)" if r.get("resumed") else "")
        if r["train_runtime_s"]
        else "n/a",
        f"{r['peak_rss_mb'] / 1024:.1f} GB" if r["peak_rss_mb"] else "n/a",
    ]


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
    "judge: tuned wins at equal length (length-controlled)",
    "training objective, first → last tenth",
    "answer tokens",
    "ended by itself (flagged: > 10 points below base)",
    "GRPO groups with zero reward spread",
    "training time",
    "peak memory",
]


def table_markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def reading(rows: list[dict]) -> list[str]:
    """The table in words, one line per candidate and a verdict: which candidates beat their base at
    p < 0.05 on a measure they were not trained on (held-out preference accuracy, or the judge)."""
    lines, winners = [], []
    for r in rows:
        p, j = r["preference"], r["judge"]["per_prompt"]
        won = [
            measure
            for measure, test in ((_preference_name(r), p["test"]), ("the judge", j and j["test"]))
            if tuned_won(test)
        ]
        if won:
            winners.append((r, won))
        judge = (
            f"the judge prefers its answers on {fmt(j['win'], percent=True)} of prompts (sign test "
            f"{fmt_p(j['test']['p_value'])})"
            if j
            else "no judge verdicts"
        )
        control = r.get("length_controlled") or {}
        rho = control.get("length_vs_judge_spearman")
        length = (f"; at equal length it wins {fmt(control, percent=True)}" if control else "") + (
            f"; length and judge differences, Spearman ρ = {rho['rho']:.2f}" if rho else ""
        )
        objective = " (its own training objective)" if r["method"] == "dpo" else ""
        flag = " **Flagged: it ends its answers by itself far less often than its base.**" * bool(
            (r.get("stop_guard") or {}).get("flagged")
        )
        lines.append(
            f"- `{r['name']}` ({r['method']}): preference accuracy{objective} "
            f"{fmt(p['base'], percent=True)} → {fmt(p['tuned'], percent=True)} "
            f"(McNemar per tree {fmt_p(p['test']['p_value'])}); {judge}{length}.{flag}"
        )
    grpo = [r["name"] for r, _ in winners if r["method"] == "grpo"]
    verdict = (
        f"**Beat their base at p < {ALPHA}:** "
        + "; ".join(f"`{r['name']}` ({', '.join(won)}{_length_caveat(r, won)})" for r, won in winners)
        + "."
        if winners
        else f"**No candidate beat its base at p < {ALPHA}** on held-out preference accuracy or on the judge."
    )
    if winners and not grpo:
        verdict += " No GRPO candidate did."
    if winners:
        verdict += " " + _corrected(rows)
    # every candidate is judged by the same judge: its weakness beside length goes with the verdict
    caveat = judge_caveat(next((r["judge"]["accuracy"] for r in rows if r["judge"]["accuracy"]), None))
    return [*lines, "", verdict + (f" **{caveat}**" if caveat else "")]


def _preference_name(r: dict) -> str:
    """For DPO the log-likelihood margin is its own training objective: a win there is not independent."""
    return "preference accuracy" + (" (its own DPO objective)" if r["method"] == "dpo" else "")


def _length_caveat(r: dict, won: list[str]) -> str:
    """A judge win whose length-controlled win rate does not exclude 50% may be length."""
    controlled = r.get("length_controlled")
    if (
        "the judge" not in won
        or not controlled
        or controlled["ci95"][0] is None
        or controlled["ci95"][0] > 0.5
    ):
        return ""
    return f", but not at equal length: {fmt(controlled, percent=True)}"


def _corrected(rows: list[dict]) -> str:
    """The table makes two paired tests per candidate: which wins survive the Benjamini-Hochberg
    correction over all of them (scipy.stats.false_discovery_control)."""
    from scipy.stats import false_discovery_control

    tests = [
        (r["name"], measure, test)
        for r in rows
        for measure, test in (
            ("preference", r["preference"]["test"]),
            ("judge", (r["judge"]["per_prompt"] or {}).get("test")),
        )
        if test
    ]
    adjusted = false_discovery_control([t["p_value"] for _, _, t in tests])
    kept = [
        f"`{n}` ({m}, adjusted {fmt_p(q)})"
        for (n, m, t), q in zip(tests, adjusted, strict=True)
        if tuned_won({**t, "p_value": q})
    ]
    where = f"Corrected for the table's {len(tests)} paired tests (Benjamini-Hochberg)"
    return (
        f"{where}: {', '.join(kept)} {'remains' if len(kept) == 1 else 'remain'}."
        if kept
        else f"{where}, none remains."
    )


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


BEGIN, END = "<!-- study table: written by python -m study.run -->", "<!-- end of study table -->"


def sections(dev: list[dict], sealed: list[dict], versus: list[dict], level: str = "##") -> list[str]:
    """The study's results in words and tables: dev (where every choice was made), the sealed test
    (read once, with its ledger) and each GRPO candidate against its warm start."""
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
        f"{level} Sealed test: read once",
        "",
        ledger_line(),
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


def gold_lines(rows: list[dict]) -> list[str]:
    """Each GRPO run's gold checks: its training reward beside the judge on the same dev answers, by step
    (the over-optimisation curve; the judge's win is against the warm start's answers)."""
    lines = []
    for r in (r for r in rows if r.get("gold_checks")):
        checks = r["gold_checks"]
        win = lambda c: "n/a" if c["judge_win"] is None else f"{100 * c['judge_win']:.0f}%"  # noqa: E731
        lines += [
            f"Gold checks of `{r['name']}` on {checks[0]['prompts']} dev prompts, one answer each: its training "
            "reward and the judge's mean score, how often the judge prefers the answer to the warm start's, "
            f"and the share that ended by itself (![the curve](plots/{r['name']}-gold_check.png)):",
            "",
            "| step | training reward | judge score | judge prefers it | ended |",
            "|---:|---:|---:|---:|---:|",
            *[
                f"| {c['step']} | {c['reward']:.3f} | {c['judge']:.3f} | {win(c)} | {100 * c['ended']:.0f}% |"
                for c in checks
            ],
            "",
        ]
    return lines


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
        f"`{folder}` is the `{name}` adapter (the fixed rule `study.run.evidence`, on dev)."
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


def rewards_optimised(path: Path) -> list[str]:
    """The rewards GRPO maximised, measured like the judge (study.reward_skill): beside length."""
    if not path.is_file():
        return []
    skill = json.loads(path.read_text())
    return [
        f"- `{name}` (a reward GRPO maximised; `{path.name}`), on {skill['pairs']}: {fmt(r['all']['reward'], percent=True)}; "
        f"the longer reply wins {fmt(r['all']['longer_wins'], percent=True)} ({fmt_p(r['all']['reward_vs_longer']['p_value'])}); "
        f"on the {r['length_matched']['reward']['n']} length-matched pairs {fmt(r['length_matched']['reward'], percent=True)} "
        f"(the longer reply {fmt(r['length_matched']['longer_wins'], percent=True)})."
        for name, r in skill["rewards"].items()
    ]


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
        # a fresh clone has the committed results but not the runs: re-writing would erase the evidence
        raise SystemExit(
            f"error: {', '.join(lost)} are in {results / 'results.json'} but their reports are not in {runs}; "
            f"run them again (python -m study.run --only NAME), or delete {results / 'results.json'} to start anew"
        )
    versus = compare_warm_starts(runs, warm_starts or {})
    write_text(
        results / "results.json",
        json.dumps(
            {"dev": dev, "sealed_test": sealed, "versus_warm_start": versus, "reward_models": reward_models},
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
