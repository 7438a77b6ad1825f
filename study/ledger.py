"""The sealed test's ledger, read: how often the test has been read, and for whom (study/sealed.json).
Written only by ``python -m study.sealed``; read by it and by the study's table."""

from __future__ import annotations

import json
from pathlib import Path

LEDGER = Path("study/sealed.json")


class SealedError(ValueError):
    """A candidate the sealed test must not evaluate (or cannot): the message says why and what to do."""


def read_ledger(path: Path) -> dict:
    if not path.exists():
        return {"evaluations": 0, "runs": []}
    try:
        ledger = json.loads(path.read_text())
        if not isinstance(ledger.get("runs"), list):
            raise ValueError("no runs list")
    except ValueError as e:
        raise SealedError(
            f"{path}: not a sealed-test ledger ({e}); restore it from git, never rewrite it"
        ) from None
    return ledger


def ledger_line(path: Path = LEDGER) -> str:
    """One sentence for the study's table: how often the sealed test has been read, and for whom."""
    ledger = read_ledger(path)
    if not ledger["runs"]:
        return "The sealed test has not been read: no candidate has been evaluated on it."
    changed = sum(c["changed_after_seen"] for r in ledger["runs"] for c in r["candidates"])
    return (
        f"The sealed test has evaluated {ledger['evaluations']} candidate(s) in {len(ledger['runs'])} run(s) "
        f"({', '.join(ledger['candidates'])}; last on {ledger['runs'][-1]['ran_at']})"
        + (f"; {changed} after its recipe changed" if changed else "")
        + f" (`{path}`)."
    )
