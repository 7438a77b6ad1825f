"""The served adapter's evidence, for both apps' Evidence tab: its verdict, read from the evaluation report
committed beside it (``<adapter>/sealed/report.json``, the study's sealed test, where it was read; else
``<adapter>/eval/report.json``; written by ``python -m train.evaluate``), its plots,
and every sample comparison of ``eval/generations.jsonl`` (the write-up this project reproduces shows two
hand-picked ones; the Space shows all of them, with the judge's pick and the marks a reader notices first:
a repetition loop, ``assistant.defects.loops``, and an answer cut off at the token limit).

Reports grow new fields over time: every field but the headline figures is read as optional.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from assistant.defects import loops

# "Better" and "worse" are the judge's pick on each prompt, the report's own per-prompt verdict.
FILTERS = {"all": "All", "better": "Tuned better", "worse": "Tuned worse", "tie": "Same score"}


REPORTS = ("sealed", "eval")  # the sealed test's verdict first: no choice was made on it
ALPHA = 0.05  # the reports' own (train.evaluate.stats.ALPHA; the core does not import the training side)


def find(loaded, name: str | None) -> Path | None:
    """The folder of ``name``'s evaluation (``sealed/``, else ``eval/``): beside the served adapter when
    it is a local folder, else in the repository's demo/ folder; None when neither has one."""
    from assistant.models import demo_dir, short_name

    if not name:
        return None
    candidates = [Path(loaded.adapter)] if loaded.adapter and short_name(loaded.adapter) == name else []
    if demo_dir() is not None:
        candidates.append(demo_dir() / name)
    for folder in candidates:
        for report in REPORTS:
            if (folder / report / "report.json").is_file():
                return folder / report
    return None


def _get(data, *keys, default=None):
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return default
        data = data[key]
    return data


def _pct(rate) -> str:
    return "–" if rate is None else f"{rate:.0%}"


def _interval(ci) -> str:
    """A difference's 95% interval, in points."""
    if not ci or len(ci) != 2 or None in ci:
        return ""
    return f" [{ci[0] * 100:+.0f}, {ci[1] * 100:+.0f}]"


@dataclass
class Comparison:
    number: int  # 1-based, in the file's order
    prompt: list[dict]
    base: dict  # {"answer", "tokens", "ended", "judge", ...}
    tuned: dict
    limit: int | None

    @property
    def pick(self) -> str:
        """The judge's pick: "better" when it scored the tuned answer higher, "worse", or "tie"."""
        base, tuned = self.base.get("judge"), self.tuned.get("judge")
        if base is None or tuned is None or base == tuned:
            return "tie"
        return "better" if tuned > base else "worse"

    def marks(self, side: str) -> list[str]:
        answer = getattr(self, side)
        marks = ["loops (repeats itself)"] if loops(answer.get("answer", "")) else []
        if answer.get("ended") is False:
            limit = f" at the {self.limit}-token limit" if self.limit else ""
            marks.append(f"cut off{limit}: it did not end by itself")
        return marks


class Evidence:
    """One adapter's committed evaluation: ``verdict()``, ``plots`` and ``comparisons(filter)``."""

    def __init__(self, folder: Path, name: str):
        self.folder, self.name = Path(folder), name
        self.report = json.loads((self.folder / "report.json").read_text())
        self.limit = _get(self.report, "settings", "max_new_tokens")
        rows = []
        generations = self.folder / "generations.jsonl"
        if generations.is_file():
            for n, line in enumerate(generations.read_text().splitlines(), 1):
                row = json.loads(line) if line.strip() else None
                if row and row.get("base") and row.get("tuned"):
                    rows.append(
                        Comparison(n, row.get("prompt") or [], row["base"][0], row["tuned"][0], self.limit)
                    )
        self.all = rows
        plots = [self.folder / "margins.png", self.folder / "judge.png"]
        plots += sorted((self.folder.parent / "plots").glob("*.png"))
        self.plots = [p for p in plots if p.is_file()]

    def _reused(self) -> str:
        """What ``reused.json`` beside the report says (``python -m study.run`` writes it): the test was
        read again since, for other candidates, and the judge's win corrected over all of them."""
        path = self.folder / "reused.json"
        if not path.is_file():
            return ""
        reused = json.loads(path.read_text())
        judge = reused.get("judge") or {}
        corrected = (
            f" Corrected over all {reused['family']} candidates it read, the judge's win (p = "
            f"{judge['p_value']:.3f} alone) is p = {judge['holm']:.3f} (Holm; Benjamini-Hochberg "
            f"{judge['benjamini_hochberg']:.3f})."
            if judge
            else ""
        )
        clean = reused.get("both_clean") or {}
        content = (
            f" Where both answers are clean (ended by themselves, no loop), on {clean['prompts']} prompts, the "
            f"judge prefers the tuned answer on {clean['win']['rate']:.0%} (trees "
            f"{clean['test']['trees']['better']} better, {clean['test']['trees']['worse']} worse, p = "
            f"{clean['test']['p_value']:.2f}): content, where endings and loops cannot decide."
            if clean.get("prompts")
            else ""
        )
        return (
            f"This test was read {reused['reads']} times for {reused['candidates']} candidates, and later "
            f"designs were made after earlier reads ({reused['designs_after_reads']}): its figures are a "
            f"second dev set's, not a sealed test's.{corrected}{content}"
        )

    def comparisons(self, which: str = "all") -> list[Comparison]:
        return self.all if which == "all" else [c for c in self.all if c.pick == which]

    def verdict(self) -> str:
        """The verdict first (does the adapter beat its base on preference accuracy, by how much, on which
        split), then the judge's and the answers' figures, as Markdown."""
        r = self.report
        base = _get(r, "adapter", "base", "id", default="its base")
        split, n = _get(r, "pairs", "file", default="held-out pairs"), _get(r, "pairs", "n")
        accuracy = _get(r, "preference", "tuned_minus_base", "accuracy") or {}
        diff, ci = accuracy.get("mean"), accuracy.get("ci95")
        if diff is None:
            headline = "The report has no preference-accuracy comparison."
        elif ci and ci[0] > 0:
            headline = f"**It beats its base**: preference accuracy {diff * 100:+.1f} points."
        elif ci and ci[1] < 0:
            headline = f"**It is worse than its base**: preference accuracy {diff * 100:+.1f} points."
        else:
            headline = (
                f"**It does not beat its base beyond chance**: preference accuracy {diff * 100:+.1f} points, "
                "an interval that holds zero."
            )
        sealed = (
            " (the study's sealed test, after every choice was made)" if self.folder.name == "sealed" else ""
        )
        reused = self._reused()
        if reused:
            sealed = " (the study's old sealed test, now a reused test: see below)"
        lines = [
            f"### {self.name} against {base}",
            headline,
            *([f"- **A reused test.** {reused}"] if reused else []),
            *(f"- {line}" for line in self._seen()),
            "",
            f"On {n or 'the'} held-out pairs of `{split}`{sealed} (human preference labels the adapter never saw).",
            "",
            "| measure | base | tuned | tuned − base |",
            "|---|---|---|---|",
        ]
        pref = _get(r, "preference") or {}
        lines.append(
            f"| preference accuracy (primary) | {_pct(_get(pref, 'base', 'accuracy', 'rate'))} "
            f"| {_pct(_get(pref, 'tuned', 'accuracy', 'rate'))} "
            f"| {'–' if diff is None else f'{diff * 100:+.1f} points'}{_interval(ci)} |"
        )
        verdicts = _get(r, "judge_verdicts") or {}
        win = _get(verdicts, "per_prompt", "win")
        judge = _get(r, "judge", "name", default="the judge")
        if win:
            ci = win.get("ci95") or []
            spread = f" [{ci[0]:.0%}, {ci[1]:.0%}]" if len(ci) == 2 else ""
            lines.append(
                f"| {judge} scores the tuned answer higher | | {_pct(win.get('rate'))}{spread} of prompts "
                "| 50% is even |"
            )
            controlled = _get(verdicts, "length_controlled", "rate")
            if controlled is not None:
                lines.append(f"| … at equal answer length | | {_pct(controlled)} of prompts | |")
        for key, label in (("end", "end by themselves"), ("loop", "loop")):
            b, t = (_get(r, "defects", key, side, "rate") for side in ("base", "tuned"))
            if b is None and key == "end":  # a report written before the defects section
                b, t = (_get(r, "answers", side, "ended_properly", "rate") for side in ("base", "tuned"))
            if isinstance(b, (int, float)) and isinstance(t, (int, float)):
                lines.append(
                    f"| answers that {label} | {_pct(b)} | {_pct(t)} | {(t - b) * 100:+.0f} points |"
                )
        own = _get(r, "judge", "accuracy", "rate")
        longer = _get(r, "judge", "accuracy", "baselines", "longer_wins", "rate")
        if isinstance(own, (int, float)) and isinstance(longer, (int, float)) and own <= longer:
            lines += [
                "",
                f'_Caution: {judge} agrees with people on {own:.0%} of these pairs, "the longer reply '
                f'wins" on {longer:.0%}: its picks may be about length more than quality._',
            ]
        lines += [
            "",
            f"From `{self.folder.parent.name}/{self.folder.name}/report.json` (the full report: `report.md` there).",
        ]
        return "\n".join(lines)

    def _seen(self) -> list[str]:
        """The judge's per-prompt verdict and what a reader sees (loops, ends), each with its paired test
        per conversation tree, in words; none for a report without them."""
        out = []
        test = _get(self.report, "judge_verdicts", "per_prompt", "test")
        win = _get(self.report, "judge_verdicts", "per_prompt", "win", "rate")
        if test and win is not None:
            judge = _get(self.report, "judge", "name", default="the judge")
            prefers = "prefers" if _won(test) else "does not prefer, beyond chance,"
            out.append(f"{judge} {prefers} its answers: on {win:.0%} of prompts ({_counted(test)}).")
        for key, what, better in (("loop", "loops", "less"), ("end", "ends by itself", "more")):
            defect = _get(self.report, "defects", key)
            if defect:
                b, t, test = defect["base"]["rate"], defect["tuned"]["rate"], defect["test"]
                verdict = (
                    f"{better} often than its base"
                    if _won(test)
                    else "no differently from its base, beyond chance"
                )
                out.append(f"It {what} {verdict}: {t:.0%} of answers against {b:.0%} ({_counted(test)}).")
        return out


def _won(test: dict) -> bool:
    """Whether a report's paired test says tuned did better: more often than worse, at p < ALPHA."""
    return test["better"] > test["worse"] and test.get("p_value") is not None and test["p_value"] < ALPHA


def _counted(test: dict) -> str:
    """``trees 41 better, 24 worse, p = 0.046``: what the paired test counted, each tree once."""
    unit = test.get("trees") or test
    p = test.get("p_value")
    p = "p n/a" if p is None else "p < 0.001" if p < 0.001 else f"p = {p:.2g}"
    return f"trees {unit['better']} better, {unit['worse']} worse, {p}"


def comparison_markdown(c: Comparison) -> tuple[str, str, str]:
    """The prompt, and each answer with its judge score and marks, as the Evidence tab shows them."""
    prompt = next((m["content"] for m in reversed(c.prompt) if m.get("role") == "user"), "")
    earlier = len(c.prompt) - 1
    head = f"**Comparison {c.number}**" + (f" (after {earlier} earlier messages)" if earlier > 0 else "")
    pick = {"better": "the tuned answer", "worse": "the base answer", "tie": "neither"}[c.pick]
    head += f"; the judge prefers {pick}.\n\n> " + prompt.replace("\n", "\n> ")

    def side(name, answer, marks):
        score = answer.get("judge")
        score = f"judge score {score:.2f}" if isinstance(score, (int, float)) else "no judge score"
        tokens = f", {answer['tokens']} tokens" if "tokens" in answer else ""
        flagged = "".join(f"\n\n**⚠ {m}**" for m in marks)
        return f"**{name}** ({score}{tokens}){flagged}\n\n{answer.get('answer', '')}"

    return head, side("Base", c.base, c.marks("base")), side("Tuned", c.tuned, c.marks("tuned"))
