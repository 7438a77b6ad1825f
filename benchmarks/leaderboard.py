"""How long a page load and a vote wait for the leaderboard, with thousands of votes on file.

    python -m benchmarks.leaderboard [--votes 5000] [--repeats 3]

Writes ``--votes`` synthetic anonymous votes (four models of known strengths, one to three turns each,
ties and "both are bad" among them) through ``assistant.store.Store``, as the app writes them, then times:

- baseline: what every page load and vote did before, on the request path: read every votes file and
  refit with 1,000 bootstrap rounds, with the previous code (``train/evaluate/votes.py`` at commit
  ``BASELINE_COMMIT``, read from git history);
- the same full refit with the current code (``assistant.leaderboard``: batched Newton fits), which
  now runs in the background after each vote;
- what a page load and a vote wait for now: ``LiveLeaderboard.markdown()``, served from the last result,
  and a vote (``Store.append``, fsync included) followed by the page it returns.

Writes benchmarks/results/leaderboard.json and leaderboard.md. Goal: a page load and a vote well under
a second with thousands of votes.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from assistant.leaderboard import LiveLeaderboard, leaderboard, leaderboard_markdown
from assistant.store import Store
from benchmarks.serving_common import ROOT, machine, write

BASELINE_COMMIT = "f25a3ed"  # the last commit with the leaderboard in train/evaluate/votes.py
STRENGTH = {"base": 0.0, "dpo": 0.4, "grpo": 0.2, "other": -0.3}  # logits
ANSWER = "A plain answer of a couple of sentences, as the small models give them. " * 3


def fill(store: Store, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    for i in range(n):
        a, b = rng.sample(sorted(STRENGTH), 2)
        p = 1 / (1 + 2.718281828 ** (STRENGTH[b] - STRENGTH[a]))
        r = rng.random()
        winner = "both_bad" if r < 0.05 else "tie" if r < 0.15 else "a" if rng.random() < p else "b"
        turns = [{"prompt": f"Question {i}.{t}?", "a": ANSWER, "b": ANSWER} for t in range(rng.randint(1, 3))]
        record = {"type": "vote", "id": f"v{i}", "mode": "anonymous", "model_a": a, "model_b": b}
        store.append("votes", record | {"winner": winner, "battle": f"b{i}", "turns": turns})


def baseline_module():
    """The previous leaderboard code, from git history (the same-run baseline)."""
    source = subprocess.run(
        ["git", "show", f"{BASELINE_COMMIT}:train/evaluate/votes.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if source.returncode:
        sys.exit(
            f"error: the baseline needs git history with commit {BASELINE_COMMIT}: {source.stderr.strip()}"
        )
    path = Path(tempfile.mkdtemp(prefix="bench-old-")) / "old_votes.py"
    path.write_text(source.stdout)
    spec = importlib.util.spec_from_file_location("old_votes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timings(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--votes", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    record = {"machine": machine(), "votes": args.votes}
    store = Store(Path(tempfile.mkdtemp(prefix="bench-votes-")) / "data")
    fill(store, args.votes)
    old = baseline_module()

    before = timings(
        lambda: old.leaderboard_markdown(old.leaderboard(old.read_votes(store.folder))), args.repeats
    )
    refit = timings(lambda: leaderboard_markdown(leaderboard(store.votes())), args.repeats)
    live = LiveLeaderboard.of(store)
    live.wait()
    page = timings(live.markdown, 1000)
    vote_n = [0]

    def vote():
        vote_n[0] += 1
        store.append(
            "votes",
            {
                "type": "vote",
                "id": f"new{vote_n[0]}",
                "mode": "anonymous",
                "model_a": "base",
                "model_b": "dpo",
                "winner": "b",
                "turns": [],
            },
        )
        live.markdown()

    votes, refreshed = [], []
    for _ in range(args.repeats):
        votes += timings(vote, 1)
        refreshed += timings(live.wait, 1)  # until the page counts the vote (in the background)
    record["seconds"] = {
        "baseline_full_refit_per_request": before,
        "current_full_refit": refit,
        "page_load_served_median": round(statistics.median(page), 9),
        "page_load_served_max": round(max(page), 9),
        "vote_and_page": votes,
        "vote_counted_after": refreshed,
    }
    m = {k: statistics.median(v) if isinstance(v, list) else v for k, v in record["seconds"].items()}
    record["ratios"] = {
        "baseline_over_served_page": round(
            m["baseline_full_refit_per_request"] / m["page_load_served_median"]
        ),
        "baseline_over_vote": round(m["baseline_full_refit_per_request"] / m["vote_and_page"], 1),
        "baseline_over_current_refit": round(
            m["baseline_full_refit_per_request"] / m["current_full_refit"], 1
        ),
    }
    write("leaderboard", record, report(record, m))


def report(record: dict, m: dict) -> str:
    r = record["ratios"]
    return f"""# The leaderboard with {record["votes"]:,} votes on file

| what a request waits for | median seconds | vs. the baseline |
|---|---:|---:|
| baseline: read the votes and refit (1,000 bootstrap rounds) on every page load and vote (commit {BASELINE_COMMIT}) | {m["baseline_full_refit_per_request"]:.3f} | 1 |
| now, a page load: the last result (`LiveLeaderboard.markdown`) | {m["page_load_served_median"]:.6f} | {r["baseline_over_served_page"]:,}x faster |
| now, a vote: append + fsync, then the page | {m["vote_and_page"]:.4f} | {r["baseline_over_vote"]:,}x faster |
| now, in the background: read the votes and refit (batched Newton) | {m["current_full_refit"]:.3f} | {r["baseline_over_current_refit"]}x faster |
| now, a vote until the page counts it (the background refit) | {m["vote_counted_after"]:.3f} | |

Slowest of 1,000 served page loads: {m["page_load_served_max"]:.6f} s. Same run, same votes, same machine.
"""


if __name__ == "__main__":
    main()
