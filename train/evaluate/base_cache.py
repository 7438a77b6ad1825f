"""The base model's side of an evaluation, kept for the next adapter on the same base.

A study evaluates several adapters of one base on the same pairs with the same settings: the base's
log-likelihoods, answers and judge scores are the same every time, and are half the cost. They are
kept under a key made of everything they depend on (base weights, pairs, settings, judge), so a
change to any of them misses the cache rather than reusing what no longer applies.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path


def cache_key(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def load(folder: str | Path, key: str) -> dict:
    """{"preference", "answers", "judge", "judge_accuracy"} of the base (answers and judge scores by
    side: "base", and "penalised" where the evaluation asked for it), or {} when never kept."""
    from assistant.generation import Answer

    path = Path(folder) / f"{key}.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    data["answers"] = {
        side: [[Answer(**a) for a in row] for row in rows] for side, rows in data["answers"].items()
    }
    return data


def save(folder: str | Path, key: str, preference: dict, answers: dict, judged: dict) -> None:
    """``answers``: by side (base, penalised); ``judged``: the judge's scores of them by side and its
    accuracy on the pairs, if judged."""
    from assistant.atomic import write_text

    data = {
        "preference": [[p["base"]["chosen"], p["base"]["rejected"]] for p in preference["pairs"]],
        "answers": {side: [[asdict(a) for a in row] for row in rows] for side, rows in answers.items()},
        **judged,
    }
    write_text(Path(folder) / f"{key}.json", json.dumps(data) + "\n")
