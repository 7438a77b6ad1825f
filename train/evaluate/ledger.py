"""The sealed test's ledger, read: how often the test has been read, and for whom (study/sealed.json).
Written only by ``python -m study.sealed``, always under ``locked``; read by it, by train.evaluate
(which reads the sealed test only for a run the ledger has open) and by the study's table. It lives
below both train.evaluate and study, so the guard and the study read one ledger with no import upward."""

from __future__ import annotations

import fcntl
import json
from contextlib import contextmanager
from pathlib import Path

LEDGER = Path("study/sealed.json")


class SealedError(ValueError):
    """A candidate the sealed test must not evaluate (or cannot): the message says why and what to do."""


@contextmanager
def locked(path: Path):
    """Hold the ledger's lock (a lock file beside it: the ledger itself is replaced on every write, so
    it cannot carry the lock) for a read-change-write. Two runs of study.sealed that overlap each
    re-read the ledger under the lock before writing, so neither's record is lost, and the check that a
    candidate is read once and the record of its reading are one step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, even if the process dies
        yield


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


def seen(ledger: dict) -> dict[str, dict]:
    """Per candidate, its latest evaluation on the sealed test."""
    out = {}
    for run in ledger["runs"]:
        for candidate in run["candidates"]:
            out[candidate["name"]] = {
                **candidate,
                "ran_at": run["ran_at"],
                "finished": run.get("finished", True),
            }
    return out


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
