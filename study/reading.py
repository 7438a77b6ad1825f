"""The study's results in words: each candidate's line and the verdict over all of them (with the
Benjamini-Hochberg correction), the GRPO runs' gold checks, and the rewards GRPO maximised measured
like the judge. study.table writes them beside its tables."""

from __future__ import annotations

import json
from pathlib import Path

from train.evaluate.defects import line
from train.evaluate.length import judge_caveat
from train.evaluate.stats import ALPHA, fmt, fmt_p, tuned_won


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
        seen = f"; it {line(r['defects'])}" if r.get("defects") else ""
        lines.append(
            f"- `{r['name']}` ({r['method']}): preference accuracy{objective} "
            f"{fmt(p['base'], percent=True)} → {fmt(p['tuned'], percent=True)} "
            f"(McNemar per tree {fmt_p(p['test']['p_value'])}); {judge}{length}{seen}.{flag}"
        )
    penalised = next((r["penalised_base"] for r in rows if r.get("penalised_base")), None)
    if penalised:  # the same base answers for every candidate: one line
        win = ((penalised.get("judge") or {}).get("per_prompt") or {}).get("win")
        lines.append(
            f"- The base with repetition penalty {penalised['repetition_penalty']} (reported, not targeted): "
            f"it {line(penalised, ('base', 'penalised'))}"
            + (
                f"; the judge prefers it to the plain base on {fmt(win, percent=True)} of prompts"
                if win
                else ""
            )
            + "."
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
    kept, lost = [], []
    for (n, m, t), q in zip(tests, adjusted, strict=True):
        if tuned_won(t):
            (kept if tuned_won({**t, "p_value": q}) else lost).append(f"`{n}` ({m}, adjusted {fmt_p(q)})")
    where = f"Corrected for the table's {len(tests)} paired tests (Benjamini-Hochberg)"
    said = (
        f"{where}: {', '.join(kept)} {'remains' if len(kept) == 1 else 'remain'}."
        if kept
        else f"{where}, none remains."
    )
    return said + (f" Not beyond chance after it: {', '.join(lost)}." if lost else "")


# What the record shows was decided after a read of the old sealed test (study/sealed.json's times
# against the recipes' commits): so it no longer tests those designs from outside.
DESIGNS_AFTER_READS = (
    "the preference anchor was added after `grpo-content-more`'s read, citing its loss there; the "
    "whole-pair rule and `grpo-whole-anchor`'s gate were set after `grpo-anchored-more` failed there"
)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error over all of them), in the given order."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def reused_test(sealed: list[dict], ledger: dict, earlier: list[dict] = ()) -> dict:
    """The old sealed test as it now is, a reused test: how often it was read and for how many
    candidates, and each candidate's judge win (per prompt, clustered by tree) corrected over every
    candidate it read: Holm's (the family-wise bar) and Benjamini-Hochberg's beside it. ``earlier``: rows
    of reads whose table was frozen before (study/second-round), so no read is left out of the family."""
    from scipy.stats import false_discovery_control

    rows = {r["name"]: r for r in [*earlier, *sealed]}
    tests = {n: (r["judge"]["per_prompt"] or {}).get("test") for n, r in rows.items()}
    tests = {n: t for n, t in tests.items() if t}
    p = [t["p_value"] for t in tests.values()]
    corrected = zip(tests.items(), holm(p), false_discovery_control(p), strict=True)
    return {
        "reads": ledger["evaluations"],
        "candidates": len({c["name"] for run in ledger["runs"] for c in run["candidates"]}),
        "designs_after_reads": DESIGNS_AFTER_READS,
        "judge": {
            name: {"p_value": t["p_value"], "holm": h, "benjamini_hochberg": float(b), "won": tuned_won(t)}
            for (name, t), h, b in corrected
        },
    }


def reused_line(reused: dict) -> str:
    """The reused test in one paragraph, for the study's README."""
    wins = [f"`{n}` ({fmt_p(j['p_value'])}; Holm-adjusted {fmt_p(j['holm'])}, Benjamini-Hochberg "
            f"{fmt_p(j['benjamini_hochberg'])})" for n, j in reused["judge"].items() if j["won"]]  # fmt: skip
    return (
        f"This is a reused test, not a sealed one: it has been read {reused['reads']} times for "
        f"{reused['candidates']} candidates, and later designs were made after earlier reads "
        f"({reused['designs_after_reads']}). Its figures are a second dev set's. Corrected over the judge's "
        f"per-prompt tests of all {len(reused['judge'])} candidates it read, the judge wins stand at: "
        + (", ".join(wins) if wins else "none")
        + ". A claim needs a fresh test, read once."
    )


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
