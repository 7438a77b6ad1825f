"""report.md and samples.md, rendered from report.json (report_template.md, like the model card's)."""

from __future__ import annotations

import html
from pathlib import Path

from train.evaluate.stats import ALPHA, fmt, fmt_p, tuned_won

TEMPLATE = Path(__file__).with_name("report_template.md")
SMALL_SAMPLE = 30  # below this many pairs the report says its intervals are not to be trusted


def render_report(report: dict) -> str:
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    env.filters.update(
        pct=lambda e: fmt(e, percent=True), num=lambda e, digits=2: fmt(e, digits), pvalue=fmt_p
    )
    text = env.from_string(TEMPLATE.read_text(encoding="utf-8")).render(
        r=report,
        p=report["preference"],
        j=report.get("judge_verdicts"),
        a=report.get("answers"),
        t=report.get("training_objective"),
        small_sample=SMALL_SAMPLE,
    )
    return text.rstrip() + "\n"


def verdict(report: dict, length: dict | None = None) -> str:
    """Plain words: did the tuned model beat its base on a measure it was not trained on? ``length`` is
    answers.length_control of the same answers: a judge win that does not hold where all answers have
    the same length is said to be possibly length."""
    judge = report.get("judge_verdicts")
    tests = {"held-out preference accuracy": report["preference"]["test"]}
    if judge:
        tests["the independent judge"] = judge["per_prompt"]["test"]
    won = [measure for measure, test in tests.items() if tuned_won(test)]
    if not won:
        return f"The tuned model does not beat its base at p < {ALPHA} on {' or on '.join(tests)}."
    text = f"The tuned model beats its base at p < {ALPHA} on {' and on '.join(won)}."
    same = (length or {}).get("equal_length")
    if "the independent judge" in won and same and not tuned_won(same["test"]):
        text += (
            f" The judge's win does not hold on the {same['prompts']} prompts where every answer was cut at "
            f"the token limit ({fmt_p(same['test']['p_value'])}), so answer length may explain part of it."
        )
    return text


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
