"""report.md and samples.md, rendered from report.json (report_template.md, like the model card's)."""

from __future__ import annotations

import html
from pathlib import Path

from train.evaluate.answers import stop_flag, stop_guard
from train.evaluate.length import judge_caveat, judge_skill
from train.evaluate.stats import ALPHA, fmt, fmt_p, tuned_won

TEMPLATE = Path(__file__).with_name("report_template.md")
SMALL_SAMPLE = 30  # below this many pairs the report says its intervals are not to be trusted


def preference_label(method: str | None) -> str:
    """What the log-likelihood margin measures: for DPO it is the training objective itself."""
    if method == "dpo":
        return "the DPO objective on held-out pairs: what DPO trained for, not independent evidence"
    return "the primary measure: human labels" + (", no training reward involved" if method else "")


def render_report(report: dict) -> str:
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    env.filters.update(
        pct=lambda e: fmt(e, percent=True), num=lambda e, digits=2: fmt(e, digits), pvalue=fmt_p
    )
    judge = report.get("judge") or {}
    text = env.from_string(TEMPLATE.read_text(encoding="utf-8")).render(
        r=report,
        p=report["preference"],
        j=report.get("judge_verdicts"),
        a=report.get("answers"),
        t=report.get("training_objective"),
        small_sample=SMALL_SAMPLE,
        preference_label=preference_label((report.get("adapter") or {}).get("method")),
        judge_skill=judge_skill(judge.get("accuracy")),
        judge_caveat=judge_caveat(judge.get("accuracy")),
        d=report.get("defects"),
        pb=report.get("penalised_base"),
        counted=_counted,
        sampling=sampling_text(report.get("settings") or {}),
        stop=stop_guard(report.get("answers")),
        stop_flag=stop_flag(stop_guard(report.get("answers"))),
        clean=clean_line(report.get("judge_verdicts")),
        knob=against_knob(report.get("penalised_base")),
        endpoint=endpoint_line(report.get("endpoint_judge")),
    )
    return text.rstrip() + "\n"


def sampling_text(settings: dict) -> str:
    """The answers' sampling in words, every setting of it (a report from before top_k was recorded
    says so)."""
    if not settings:
        return "settings not recorded"
    k = settings.get("k", 1)
    seeds = f"seeds {settings['seed']}..{settings['seed'] + k - 1}" if k > 1 else f"seed {settings['seed']}"
    top_k = settings.get("top_k")
    sampler = (
        "no top-k, as the Space samples"
        if top_k == 0
        else "top_k not recorded: transformers' default top-k 50 applied"
        if top_k is None
        else f"top-k {top_k}"
    )
    penalty = settings.get("repetition_penalty", 1.0)
    text = (
        f"{seeds}, temperature {settings['temperature']}, top-p {settings['top_p']}, {sampler}"
        + (f", repetition penalty {penalty}" if penalty != 1.0 else "")
        + f", at most {settings['max_new_tokens']} new tokens"
    )
    return text + (f"; {settings['from_recipe']}" if settings.get("from_recipe") else "")


def preference_name(report: dict) -> str:
    """What the verdict calls preference accuracy: for a DPO adapter it is its own objective."""
    method = (report.get("adapter") or {}).get("method")
    return "held-out preference accuracy" + (
        " (the DPO objective on held-out pairs)" if method == "dpo" else ""
    )


def verdict(report: dict) -> str:
    """Plain words: did the tuned model beat its base on a measure it was not trained on? A judge win
    is read again at equal answer length; then the figures (by_how_much); a judge without skill beyond
    length and a model that stopped ending its answers are said so, each in one sentence."""
    judge = report.get("judge_verdicts")
    name = preference_name(report)
    tests = {name: report["preference"]["test"]}
    if judge:
        tests["the independent judge"] = judge["per_prompt"]["test"]
    won = [measure for measure, test in tests.items() if tuned_won(test)]
    if not won:
        text = f"The tuned model does not beat its base at p < {ALPHA} on {' or on '.join(tests)}."
    else:
        text = f"The tuned model beats its base at p < {ALPHA} on {' and on '.join(won)}."
    controlled = (judge or {}).get("length_controlled")
    said = bool("the independent judge" in won and controlled and controlled["ci95"][0] is not None)
    if said:
        holds = controlled["ci95"][0] > 0.5
        text += f" At equal answer length the judge's win rate is {fmt(controlled, percent=True)}" + (
            ", so the win is not only length." if holds else ", so answer length may explain the win."
        )
    lines = [
        text,
        by_how_much(report, controlled=not said),
        judge_caveat((report.get("judge") or {}).get("accuracy")) if judge else None,
        seen(report),
        endpoint_line(report.get("endpoint_judge")),
    ]
    return " ".join(line for line in [*lines, stop_flag(stop_guard(report.get("answers")))] if line)


def endpoint_line(endpoint: dict | None) -> str | None:
    """The endpoint judge's verdict (train.evaluate.endpoint_judge) in one sentence."""
    if not endpoint:
        return None
    overall, clean = endpoint["per_prompt"], endpoint["both_clean"]
    text = (
        f"The endpoint judge `{endpoint['model']}` (asked in both orders) prefers the tuned answer on "
        f"{fmt(overall['win'], percent=True)} of prompts ({_counted(overall['test'])}), and where both answers "
        f"are clean on {fmt(clean['win'], percent=True)} of {clean['prompts']} ({_counted(clean['test'])})"
    )
    agreement = endpoint.get("agreement_with_encoder_judge")
    if agreement and agreement["prompts"]:
        text += f"; it agrees with the encoder judge on {fmt(agreement, percent=True)} of the {agreement['prompts']} prompts both decide"
    return text + "."


def seen(report: dict) -> str | None:
    """Loops and ends of base → tuned, and of the base under a repetition penalty, in one sentence."""
    from train.evaluate.defects import line

    if not report.get("defects"):
        return None
    text = f"What a reader sees: the tuned model {line(report['defects'])}"
    penalised = report.get("penalised_base")
    if penalised:
        from train.evaluate.answers import knob_label

        label = knob_label(penalised.get("knob") or {"repetition_penalty": penalised["repetition_penalty"]})
        text += f"; the base with {label} {line(penalised, ('base', 'penalised'))}"
        win = ((penalised.get("judge") or {}).get("per_prompt") or {}).get("win")
        if win:
            test = penalised["judge"]["per_prompt"]["test"]
            text += (
                f", and the judge prefers it to the plain base on {fmt(win, percent=True)} of prompts "
                f"({_counted(test)})"
            )
        if against := against_knob(penalised):
            text += f". {against}"
    return text + "."


def against_knob(penalised: dict | None) -> str | None:
    """The tuned model against the decoding knob, in one sentence: what "tuning helps" must beat too."""
    from train.evaluate.defects import line

    against = (penalised or {}).get("tuned_against_it") or {}
    if not against.get("judge"):
        return None
    overall, clean = against["judge"]["per_prompt"], against["judge"]["both_clean"]
    return (
        f"Against that knob, the tuned model {line(against, ('penalised', 'tuned'))}; the judge prefers the "
        f"tuned answer on {fmt(overall['win'], percent=True)} of prompts ({_counted(overall['test'])}), and "
        f"where both are clean on {fmt(clean['win'], percent=True)} of {clean['prompts']} ({_counted(clean['test'])})"
    )


def clean_line(verdicts: dict | None) -> str | None:
    """The judge where both answers are clean, in one sentence: content, where ends and loops cannot decide."""
    clean = (verdicts or {}).get("both_clean")
    if not clean:
        return None
    return (
        f"Where both answers are clean (ended by themselves, no loop), the judge prefers the tuned answer on "
        f"{fmt(clean['win'], percent=True)} of {clean['prompts']} prompts ({_counted(clean['test'])}): content, "
        "where endings and loops cannot decide."
    )


def _counted(test: dict) -> str:
    """``trees 34 better, 31 worse, p = 0.804``: what the paired test counted (each tree once), and its p."""
    unit, label = (test["trees"], "trees") if test.get("trees") else (test, "items")
    return f"{label} {unit['better']} better, {unit['worse']} worse, {fmt_p(test['p_value'])}"


def by_how_much(report: dict, controlled: bool = True) -> str | None:
    """The figures behind the verdict, in one sentence: the effect with its interval, and the paired test
    (with the length-controlled win rate unless the verdict has already read it)."""
    preference, judge = report.get("preference") or {}, report.get("judge_verdicts") or {}
    parts = []
    if "accuracy" in (preference.get("base") or {}) and preference.get("test"):
        parts.append(
            f"{preference_name(report)} {fmt(preference['base']['accuracy'], percent=True)} → "
            f"{fmt(preference['tuned']['accuracy'], percent=True)} ({_counted(preference['test'])})"
        )
    win = (judge.get("per_prompt") or {}).get("win")
    if win and judge["per_prompt"].get("test"):
        text = (
            f"the judge prefers the tuned answer on {fmt(win, percent=True)} of prompts "
            f"({_counted(judge['per_prompt']['test'])})"
        )
        if controlled and judge.get("length_controlled"):
            text += f", {fmt(judge['length_controlled'], percent=True)} at equal answer length"
        parts.append(text)
    return f"By how much: {'; '.join(parts)}." if parts else None


def _prompt_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(f"**{m['role']}:** {m['content']}" for m in prompt)


def render_samples(report: dict) -> str:
    """samples.md: each sample's prompt, then the base and tuned answers side by side (an HTML table)."""
    lines = [
        "### Side-by-side samples",
        "",
        f"Base `{report['adapter']['base']['id']}` and tuned (+ `{report['adapter']['name']}`), the first "
        "answer of each (same seed and settings); the first held-out prompts in sha256 order.",
        "",
    ]
    cell = lambda text: html.escape(text or "(empty)").replace("\n", "<br>")  # noqa: E731
    for index, sample in enumerate(report["samples"], 1):
        judged = "" if sample.get("judge") is None else " (judge {:.2f})"
        lines += [
            f"#### Sample {index}",
            "",
            "> " + "\n> ".join(_prompt_text(sample["prompt"]).splitlines() or [""]),
            "",
            f"<table><tr><th>Base{judged.format(sample['judge']['base']) if judged else ''}</th>"
            f"<th>Tuned{judged.format(sample['judge']['tuned']) if judged else ''}</th></tr>",
            f'<tr><td valign="top">{cell(sample["base"])}</td><td valign="top">{cell(sample["tuned"])}</td></tr></table>',
            "",
        ]
    return "\n".join(lines)
