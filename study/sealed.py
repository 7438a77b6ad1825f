"""The sealed test, read once: the study's final candidates evaluated on test.jsonl, and a ledger of it.

    python -m study.sealed NAME [NAME ...]              # outputs/study/NAME, evaluated on the sealed test
    python -m study.sealed NAME --record-changed        # evaluate a candidate whose recipe changed after
                                                        # the test saw it; the ledger says so
    python -m study.sealed NAME --finish-interrupted    # a run stopped before its report: run it again;
                                                        # the ledger counts both and says so

This is the only code that reads ``data/study-splits/test.jsonl`` (train.data.splits); every choice of the
study (learning rates, candidates, steps, the demo pick) is made on dev.jsonl by ``python -m study.run``.
train.evaluate knows the sealed test by its pairs' content, not its file name (a copy under another name,
or a file holding any of its pairs, is the sealed test too), and evaluates on it only with ``--sealed``
for an adapter that a run of this ledger has open: every read is on record.
The ledger, ``study/sealed.json`` (committed), records every run: when it started, each candidate's
recipe sha256 and adapter sha256, and where its report is; and how many candidate evaluations the
sealed test has given in all. A run is written to the ledger *before* the evaluation starts: from that
moment the test has been read, whether or not the evaluation finishes. The ledger is read, checked and
written under a lock (study.ledger.locked), so two runs that overlap both stay on record.

Refusals (one line each, before any model loads): a candidate already evaluated with the same recipe
(its report is there: reading the test again would only let a second look choose); a candidate whose
recipe changed after the test saw it, unless ``--record-changed`` (the ledger then marks that run
``changed_after_seen``: its result is no longer a sealed one).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from assistant.atomic import write_text
from study.run import EVAL_OPTIONS, JUDGE, ROOT, RUNS, keep, sh, stale
from train.evaluate.inputs import SEALED_TEST as TEST
from train.evaluate.inputs import content_sha256
from train.evaluate.ledger import LEDGER, SealedError, locked, read_ledger, seen  # noqa: F401  (tests read them here)


def recipe_file(name: str, runs: Path, recipes: Path) -> Path:
    """The recipe that defines a candidate: recipes/study/NAME.yaml, else the adapter's own copy."""
    for path in (recipes / f"{name}.yaml", runs / name / "recipe.yaml"):
        if path.is_file():
            return path
    raise SealedError(
        f"{name}: no recipe ({recipes / name}.yaml or {runs / name}/recipe.yaml); train it first"
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def plan(
    ledger: dict,
    names: list[str],
    recipes: dict[str, str],
    record_changed: bool,
    finish_interrupted: bool = False,
) -> list[dict]:
    """The candidates to evaluate now, each {name, recipe_sha256, changed_after_seen} (and ``resumes``:
    the run it finishes); raises SealedError for one the sealed test must not evaluate."""
    before, out = seen(ledger), []
    for name in dict.fromkeys(names):
        earlier = before.get(name)
        changed = earlier is not None and earlier["recipe_sha256"] != recipes[name]
        interrupted = earlier is not None and not earlier["finished"] and not Path(earlier["report"]).exists()
        if earlier is not None and not changed and interrupted and finish_interrupted:
            # stopped before it wrote a report: nothing was seen to choose by; this run is on record too
            out.append({"name": name, "recipe_sha256": recipes[name], "changed_after_seen": False,
                        "resumes": earlier["ran_at"]})  # fmt: skip
            continue
        if earlier is not None and not changed:
            hint = "; it stopped before its report: --finish-interrupted runs it again" if interrupted else ""
            raise SealedError(
                f"{name}: already evaluated on the sealed test on {earlier['ran_at']} with this recipe "
                f"(report: {earlier['report']}); it is read once{hint}"
            )
        if changed and not record_changed:
            raise SealedError(
                f"{name}: its recipe changed after the sealed test saw it on {earlier['ran_at']} "
                f"(sha256 {earlier['recipe_sha256'][:12]} -> {recipes[name][:12]}); its result would not be "
                "sealed: pass --record-changed to evaluate it anyway, and the ledger records that"
            )
        out.append({"name": name, "recipe_sha256": recipes[name], "changed_after_seen": changed})
    return out


def record_start(
    path: Path,
    names: list[str],
    recipes: dict,
    record_changed: bool,
    info,
    test: Path,
    finish_interrupted=False,
) -> dict:
    """Under the ledger's lock: re-read it, refuse what it must (plan), append this run and write it,
    all before the test is read; returns the run. ``info(name)`` adds what identifies the adapter."""
    with locked(path):
        ledger = read_ledger(path)
        planned = plan(ledger, names, recipes, record_changed, finish_interrupted)
        candidates = [{**c, **info(c["name"])} for c in planned]
        run = {
            "ran_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "test_file": str(test),
            "test_sha256": sha256(test),
            "test_content_sha256": content_sha256(test),  # the pairs, whatever the file is called
            "candidates": candidates,
            "finished": False,
        }
        ledger = {**ledger, "runs": [*ledger["runs"], run]}
        ledger["evaluations"] = sum(len(r["candidates"]) for r in ledger["runs"])
        ledger["candidates"] = sorted({c["name"] for r in ledger["runs"] for c in r["candidates"]})
        write_text(path, json.dumps(ledger, indent=2) + "\n")
    return run


def record_finish(path: Path, run: dict) -> dict:
    """Under the lock, mark this run finished in the ledger as it is now (another run may have been
    recorded meanwhile: the file is re-read, never written from this run's old copy)."""
    with locked(path):
        ledger = read_ledger(path)
        for entry in ledger["runs"]:
            if entry["ran_at"] == run["ran_at"] and entry["candidates"] == run["candidates"]:
                entry["finished"] = True
        write_text(path, json.dumps(ledger, indent=2) + "\n")
    return ledger


def candidate_info(name: str, runs: Path) -> dict:
    """What identifies the adapter evaluated; refuses one that is missing or trained on other pairs."""
    folder = runs / name
    weights, info = folder / "adapter_model.safetensors", folder / "training_info.json"
    if not weights.is_file():
        raise SealedError(f"{name}: no adapter in {folder}; run python -m study.run --only {name} first")
    recipe = Path("recipes/study") / f"{name}.yaml"
    if info.is_file() and recipe.is_file() and stale(json.loads(info.read_text()), recipe):
        raise SealedError(
            f"{name}: trained on other pairs than its recipe names (before the three splits, its training "
            f"trees may hold sealed-test trees); retrain it with python -m study.run --only {name}"
        )
    return {"adapter_sha256": sha256(weights), "report": str(folder / "sealed" / "report.md")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.sealed", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", help="final candidates (folders of outputs/study/)")
    parser.add_argument(
        "--record-changed", action="store_true", help="evaluate a candidate whose recipe changed after "
        "the test saw it; the ledger marks the run changed_after_seen",
    )  # fmt: skip
    parser.add_argument(
        "--finish-interrupted", action="store_true", help="evaluate again a candidate whose sealed run "
        "stopped before it wrote a report; the ledger counts both runs and marks this one resumes",
    )  # fmt: skip
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    try:
        if not TEST.is_file():
            raise SealedError(
                f"{TEST}: no sealed test; build the splits with python -m study.run --step train"
            )
        recipes = {n: sha256(recipe_file(n, RUNS, Path("recipes/study"))) for n in args.names}
        run = record_start(
            LEDGER, args.names, recipes, args.record_changed, lambda n: candidate_info(n, RUNS), TEST,
            args.finish_interrupted,
        )  # fmt: skip
    except SealedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for c in run["candidates"]:
        sh([sys.executable, "-m", "train.evaluate", "--adapter", str(RUNS / c["name"]), "--pairs", str(TEST),
            "--judge", str(JUDGE), *EVAL_OPTIONS, "--sealed",
            "--output-dir", str(Path(c["report"]).parent)])  # fmt: skip
        keep(c["name"], Path(c["report"]).parent.name)  # the sealed report, into the tree to commit
    ledger = record_finish(LEDGER, run)
    print(
        f"sealed test: {len(run['candidates'])} evaluated now, {ledger['evaluations']} in all; ledger {LEDGER}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
