"""The evaluations a card shows, sealed (or reused) test first: each report's verdict in words, its
report.md nested under the card's headings, and the images beside it; only reports of these very weights."""

from __future__ import annotations

import json
import re
from pathlib import Path


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def caption(path: Path) -> str:
    return path.stem.replace("_", " ").replace("-", " ").capitalize()


def report_matches(output_dir: Path, folder: str = "eval") -> bool:
    """Whether ``folder`` (eval/: dev; sealed/: the sealed test) holds a report of the adapter in
    ``output_dir`` (its weights' sha256 recorded in report.json): a re-run of training into a folder with
    an old report must not publish old numbers."""
    from train.identity import file_sha256

    report = read_json(output_dir / folder / "report.json") or {}
    weights = output_dir / "adapter_model.safetensors"
    recorded = (report.get("adapter") or {}).get("sha256")
    return bool(recorded) and weights.is_file() and recorded == file_sha256(weights)


# The evaluations a card shows, sealed test first: (folder, heading, what the pairs are)
EVALUATIONS = (
    ("sealed", "Sealed test", "trees no choice was made on before it was read; every read is on its ledger"),
    ("eval", "Held-out pairs", "the pairs the adapter was evaluated on"),
)
# the study's dev split picks among candidates: a win there was looked for, and the card says so
DEV = ("dev.jsonl", "the dev split, where the study chooses among candidates (a choice, not a proof)")


def section(output_dir: Path, folder: str = "eval") -> tuple[str | None, list[str]]:
    """``folder``/report.md, with its headings nested under the card's and its relative links rebased;
    none when the report belongs to other weights than the adapter's."""
    report = output_dir / folder / "report.md"
    if not report.is_file():
        return None, []
    if not report_matches(output_dir, folder):
        print(
            f"note: {output_dir}/{folder} is not a report of this adapter (sha256 differs); left out of the card"
        )
        return None, []
    text = report.read_text(encoding="utf-8").strip()

    # The report lives in its folder, the card at the root: its relative links must gain the prefix.
    def rebase(match: re.Match) -> str:
        target = match.group(2)
        if re.match(r"^([a-z][a-z0-9+.-]*:|/|#)", target, re.I):
            return match.group(0)
        return f"{match.group(1)}{folder}/{target}{match.group(3)}"

    text = re.sub(r"(\]\()([^)\s]+)(\))", rebase, text)
    # Its top heading goes under the card's "### <evaluation>", the rest keep their nesting.
    levels = [len(m) for m in re.findall(r"^(#{1,6}) ", text, flags=re.M)]
    shift = max(0, 4 - min(levels)) if levels else 0
    text = re.sub(r"^(#{1,6}) ", lambda m: "#" * min(len(m.group(1)) + shift, 6) + " ", text, flags=re.M)
    linked = set(re.findall(rf"\]\(({folder}/[^)\s]+)\)", text))
    extra = [
        f"{folder}/{p.name}"
        for p in sorted((output_dir / folder).glob("*.png"))
        if f"{folder}/{p.name}" not in linked
    ]
    return text, extra


def verdict_of(output_dir: Path, method: str, folder: str = "eval") -> str:
    """The report's verdict in words: with the length-controlled judge win, the judge's weakness
    beside length and the stop-rate flag, each where it applies (``method`` from training_info, for a
    report that does not record it: for DPO the preference margin is its own objective); and, where
    the study compared the adapter with its warm start on the same pairs (versus.json), that too."""
    from train.evaluate.report import verdict

    report = read_json(output_dir / folder / "report.json") or {}
    adapter = {"method": method, **(report.get("adapter") or {})}
    text = verdict({**report, "adapter": {**adapter, "method": adapter["method"] or method}})
    versus = (read_json(output_dir / folder / "versus.json") or {}).get("summary")
    return text + (f" Against its warm start: {versus}." if versus else "")


def reused_what(reused: dict) -> str:
    return (
        f"the study's old sealed test, a reused test now: read {reused['reads']} times for "
        f"{reused['candidates']} candidates, and later designs were made after earlier reads "
        f"({reused['designs_after_reads']}; `{reused['ledger']}`)"
    )


def reused_correction(reused: dict) -> str:
    judge = reused.get("judge")
    if not judge:
        return ""
    from train.evaluate.stats import fmt_p

    clean = reused.get("both_clean")
    content = (
        f" Where both answers are clean (ended by themselves, no loop), on {clean['prompts']} prompts, the judge "
        f"prefers the tuned answer on {clean['win']['rate']:.0%} (trees {clean['test']['trees']['better']} better, "
        f"{clean['test']['trees']['worse']} worse, {fmt_p(clean['test']['p_value'])}): content, where endings "
        "and loops cannot decide."
        if clean and clean.get("prompts")
        else ""
    )
    return (
        f" Corrected over the judge's tests of all {reused['family']} candidates this test read, the judge's "
        f"win is {fmt_p(judge['holm'])} (Holm; Benjamini-Hochberg {fmt_p(judge['benjamini_hochberg'])})."
        + content
    )


def sealed_first(output_dir: Path, method: str) -> list[dict]:
    """Every evaluation of these weights the folder holds, sealed test first."""
    out = []
    for folder, heading, what in EVALUATIONS:
        report, images = section(output_dir, folder)
        if report:
            report_json = read_json(output_dir / folder / "report.json") or {}
            pairs, settings = report_json.get("pairs") or {}, report_json.get("settings") or {}
            length = f", answers of at most {settings['max_new_tokens']} new tokens" if settings else ""
            what = DEV[1] if Path(str(pairs.get("file"))).name == DEV[0] else what
            verdict = verdict_of(output_dir, method, folder)
            reused = read_json(output_dir / folder / "reused.json")
            if reused:  # the study's old sealed test, read again since: a reused test (study.run)
                heading, what, verdict = (
                    "Reused test",
                    reused_what(reused),
                    verdict + reused_correction(reused),
                )
            out.append({
                "heading": heading,
                "what": f"{pairs.get('prompts', '?')} prompts of `{pairs.get('file', '?')}`, {what}{length}",
                "verdict": verdict,
                "report": report,
                "images": [(caption(Path(p)), p) for p in images],
            })  # fmt: skip
    return out
