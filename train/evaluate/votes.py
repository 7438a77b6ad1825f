"""Arena votes: reading them back and the leaderboard (Bradley-Terry ratings with bootstrap intervals).

One vote is one JSON object a line, as the Space writes it (``assistant/arena.py``)::

    {"type": "vote", "id": "...", "mode": "anonymous", "model_a": "x", "model_b": "y",
     "winner": "a" | "b" | "tie" | "both_bad", ...}

Lines without ``"type": "vote"`` (a Chat-tab like or dislike kept in the same folder) are skipped. Votes
from the older Compare tab (``"vote": "left" | "right" | "tie"`` with ``left``/``right`` models) are read
as named votes.

    from train.evaluate.votes import read_votes, leaderboard, leaderboard_markdown
    print(leaderboard_markdown(leaderboard(read_votes("votes.jsonl"))))
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

WINNERS = ("a", "b", "tie", "both_bad")
ELO_SCALE = 400 / math.log(10)  # one logit of Bradley-Terry strength, in Elo points
ELO_BASE = 1000
# A weak Gaussian prior on the strengths: without it a model that won every vote it had would get an
# infinite rating. 0.1 is worth about one virtual tie against the average model.
RIDGE = 0.1


class VotesError(ValueError):
    """A votes file that cannot be read; the message names the file and line."""


def _vote(raw: dict, where: str) -> dict | None:
    if "vote" in raw and "winner" not in raw:  # the older Compare tab's format
        old = {"left": "a", "right": "b", "tie": "tie"}
        if raw["vote"] not in old:
            raise VotesError(f"{where}: 'vote' must be left, right or tie, got {raw['vote']!r}")
        sides = [raw.get(s) for s in ("left", "right")]
        if not all(isinstance(s, dict) and s.get("model") for s in sides):
            raise VotesError(f"{where}: an old-format vote needs left.model and right.model")
        raw = {**raw, "type": "vote", "mode": "named", "winner": old[raw["vote"]]}
        raw["model_a"], raw["model_b"] = (str(s["model"]) for s in sides)
    if raw.get("type", "vote") != "vote":
        return None
    if raw.get("winner") not in WINNERS:
        raise VotesError(f"{where}: 'winner' must be one of {', '.join(WINNERS)}, got {raw.get('winner')!r}")
    for key in ("model_a", "model_b"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise VotesError(f"{where}: {key!r} must name a model")
    if raw["model_a"] == raw["model_b"]:
        raise VotesError(f"{where}: a vote needs two different models, got {raw['model_a']!r} twice")
    return raw


def _read_file(path: Path) -> list[dict]:
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or type(error).__name__
        raise VotesError(f"{path}: cannot read the votes file ({reason})") from None
    votes = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):  # no newline after it: a write cut short by a crash
                break
            raise VotesError(f"{where}: malformed JSON ({error.msg}); fix or remove the line") from None
        if not isinstance(raw, dict):
            raise VotesError(f"{where}: a vote must be a JSON object")
        vote = _vote(raw, where)
        if vote is not None:
            votes.append(vote)
    return votes


def read_votes(path) -> list[dict]:
    """The votes in a JSONL file, or in every ``votes*.jsonl`` under a folder (a downloaded dataset repo).

    A last line cut short (no newline, not JSON) is skipped; any other bad line raises ``VotesError``
    naming ``file:line``. A vote seen twice (same ``id``, e.g. in a local file and its pushed copy) counts
    once.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.rglob("votes*.jsonl"))
    elif path.exists():
        files = [path]
    else:
        raise VotesError(f"{path}: no such file or folder")
    seen, votes = set(), []
    for file in files:
        for vote in _read_file(file):
            key = vote.get("id")
            if key is not None:
                if key in seen:
                    continue
                seen.add(key)
            votes.append(vote)
    return votes


def _fit(models: list[str], wins: np.ndarray) -> np.ndarray:
    """Bradley-Terry strengths (logits) from ``wins[i, j]``: how often i beat j (ties as halves)."""
    from scipy.optimize import minimize

    games = wins + wins.T
    i, j = np.nonzero(np.triu(games, 1))

    def loss(beta):
        p = 1 / (1 + np.exp(beta[j] - beta[i]))  # P(i beats j)
        value = -(wins[i, j] * np.log(p) + wins[j, i] * np.log1p(-p)).sum() + RIDGE / 2 * beta @ beta
        g = wins[i, j] * (1 - p) - wins[j, i] * p  # d log-likelihood / d beta_i
        grad = RIDGE * beta
        np.subtract.at(grad, i, g)
        np.add.at(grad, j, g)
        return value, grad

    return minimize(loss, np.zeros(len(models)), jac=True, method="L-BFGS-B").x


def leaderboard(votes: list[dict], seed: int = 0, resamples: int = 1000) -> dict:
    """Bradley-Terry ratings (Elo scale, 1000 = average) with percentile-bootstrap 95% intervals.

    Only anonymous votes are rated: in a named battle the voter saw the names, so those votes carry label
    bias (they are counted under ``left_out``). A tie counts half a win for each side. "Both are bad"
    counts as a vote for both models but as neither a win nor a tie: it says nothing about which is
    better. Intervals come from refitting on ``resamples`` resamples of the votes (with replacement).
    """
    rated = [v for v in votes if v.get("mode", "anonymous") == "anonymous"]
    models = sorted({v[k] for v in rated for k in ("model_a", "model_b")})
    index = {m: n for n, m in enumerate(models)}
    counts = {m: {"votes": 0, "wins": 0, "ties": 0, "losses": 0, "both_bad": 0} for m in models}
    cells = np.zeros((len(rated), len(models), len(models)))  # each vote's contribution to wins
    for n, vote in enumerate(rated):
        a, b, winner = vote["model_a"], vote["model_b"], vote["winner"]
        ia, ib = index[a], index[b]
        counts[a]["votes"] += 1
        counts[b]["votes"] += 1
        if winner == "both_bad":
            counts[a]["both_bad"] += 1
            counts[b]["both_bad"] += 1
        elif winner == "tie":
            counts[a]["ties"] += 1
            counts[b]["ties"] += 1
            cells[n, ia, ib] = cells[n, ib, ia] = 0.5
        else:
            won, lost = (a, b) if winner == "a" else (b, a)
            counts[won]["wins"] += 1
            counts[lost]["losses"] += 1
            cells[n, index[won], index[lost]] = 1
    rows = []
    if models:
        point = _fit(models, cells.sum(axis=0))
        # Resampling votes is resampling their kinds (pair and outcome) with the kinds' frequencies:
        # one multinomial draw per resample, however many votes there are.
        kinds, inverse = np.unique(cells.reshape(len(rated), -1), axis=0, return_inverse=True)
        share = np.bincount(inverse.reshape(-1), minlength=len(kinds)) / len(rated)
        kinds = kinds.reshape(len(kinds), len(models), len(models))
        rng = np.random.default_rng(seed)
        samples = np.array(
            [
                _fit(models, np.tensordot(rng.multinomial(len(rated), share), kinds, 1))
                for _ in range(resamples)
            ]
        ).reshape(resamples, len(models))
        low, high = (np.percentile(samples, q, axis=0) if resamples else point for q in (2.5, 97.5))
        for m in models:
            k = index[m]
            rows.append(
                {
                    "model": m,
                    "rating": round(float(ELO_BASE + ELO_SCALE * point[k]), 1),
                    "low": round(float(ELO_BASE + ELO_SCALE * low[k]), 1),
                    "high": round(float(ELO_BASE + ELO_SCALE * high[k]), 1),
                    **counts[m],
                }
            )
        rows.sort(key=lambda r: (-r["rating"], r["model"]))
    return {
        "method": "Bradley-Terry (ridge 0.1), Elo scale; 95% percentile bootstrap",
        "models": rows,
        "votes": len(rated),
        "left_out": {"named": len(votes) - len(rated)},
        "seed": seed,
        "resamples": resamples,
    }


def leaderboard_markdown(board: dict) -> str:
    """The leaderboard as a Markdown table, with what it was computed from."""
    named = board["left_out"]["named"]
    note = f" ({named} named votes left out: the voter saw the names)" if named else ""
    if not board["models"]:
        return f"No anonymous votes yet{note}. Play a battle in the Arena and vote."
    lines = [
        "| rank | model | rating | 95% interval | votes | wins / ties / losses / both bad |",
        "|---:|---|---:|---|---:|---|",
    ]
    for rank, r in enumerate(board["models"], 1):
        lines.append(
            f"| {rank} | {r['model']} | {r['rating']:.0f} | {r['low']:.0f} to {r['high']:.0f} | {r['votes']} "
            f"| {r['wins']} / {r['ties']} / {r['losses']} / {r['both_bad']} |"
        )
    lines.append(
        f"\n{board['votes']} anonymous votes{note}. {board['method']} over {board['resamples']} "
        'resamples; a tie counts half a win for each side, "both are bad" neither.'
    )
    return "\n".join(lines)
