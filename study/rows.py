"""A candidate's figures on one split, read from its kept run's own files: report.json of
``python -m train.evaluate`` (dev, in eval/) or of ``python -m study.sealed`` (the old sealed test, in
sealed/), training_info.json of ``python -m train``, run.json of ``study.run``, metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

from train.evaluate.answers import SIDES, TIE_TOLERANCE, stop_guard
from train.evaluate.defects import both_clean

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


def _both_clean(folder: Path, verdicts: dict) -> dict | None:
    """The judge's verdict where both answers are clean (train.evaluate.defects.both_clean): the
    report's, or for a report written before it measured that, the same function on the report's own
    answers and judge scores (its generations.jsonl)."""
    if verdicts.get("both_clean"):
        return verdicts["both_clean"]
    path = folder / "generations.jsonl"
    rows = (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    )
    if not rows or any("judge" not in a for r in rows for side in SIDES for a in r[side]):
        return None
    clean = {side: [[a["ended"] and not a["loops"] for a in r[side]] for r in rows] for side in SIDES}
    scores = {side: [[a["judge"] for a in r[side]] for r in rows] for side in SIDES}
    return both_clean(clean, scores, [r["tree_id"] for r in rows], TIE_TOLERANCE)


def row(name: str, runs: Path, folder: str = "eval") -> dict | None:
    """A candidate's figures on one split, or None until it has a report of its current weights."""
    from study.bar import criteria
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
            "both_clean": _both_clean(runs / name / folder, j),
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
        "defects": report.get("defects"),  # loops and ends, base → tuned, with the paired exact test
        "penalised_base": _penalised(report.get("penalised_base")),
        "stop_guard": stop_guard(a),  # flagged: never promoted to a demo adapter
        "bar": criteria(report) if report.get("defects") and j else None,  # study.bar: served or not
        # a GRPO group whose answers all score the same teaches nothing
        "frac_reward_zero_std": _metric_mean(runs / name / "metrics.jsonl", "frac_reward_zero_std"),
        "gold_checks": gold_checks(runs / name / "metrics.jsonl"),
        "train_runtime_s": info.get("train_runtime_s"),
        "resumed": bool(info.get("resumed_from")),  # then the time and memory are the last process's only
        "steps": info.get("global_step"),
        "peak_rss_mb": info.get("peak_rss_mb", usage.get("peak_rss_mb")),  # training_info's since it has it
    }


def _penalised(penalised: dict | None) -> dict | None:
    """The base under a repetition penalty against the plain base, without its judge scores."""
    if not penalised:
        return None
    judge = {"per_prompt": penalised["judge"]["per_prompt"]} if penalised.get("judge") else None
    return {**{k: v for k, v in penalised.items() if k != "judge"}, "judge": judge}
