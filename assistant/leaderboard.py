"""The arena's leaderboard: Bradley-Terry ratings with bootstrap intervals, and how the apps serve it.

``leaderboard(votes)`` is the whole computation (``python -m train.evaluate --votes`` calls it too);
``LiveLeaderboard`` keeps its last result for the apps and refits in a background thread when a vote
arrives, so no page load and no vote waits for a refit (a refit reads and vets every vote on file:
0.19 s with 5,000 votes on a quiet 2-core machine, benchmarks/results/leaderboard.md).

Which votes are rated: anonymous ones only (in a named battle the voter saw the names), and not those
whose answers give a model's identity away (``assistant.votes.reveals_identity``); both kinds are kept
on record and counted under ``left_out``. Which models are rated: those with at least one vote that
compares them (a win, a loss or a tie; "both are bad" compares nothing). Which are ranked: those with
``MIN_VOTES`` such votes; below it the rating is shown as provisional, without a rank.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable

import numpy as np

from assistant.votes import identity_pattern, reveals_identity

log = logging.getLogger(__name__)

ELO_SCALE = 400 / math.log(10)  # one logit of Bradley-Terry strength, in Elo points
ELO_BASE = 1000
# A weak Gaussian prior on the strengths: without it a model that won every vote it had would get an
# infinite rating. 0.1 is worth about one virtual tie against the average model.
RIDGE = 0.1
# Votes comparing a model (wins, losses, ties) before it gets a rank. FastChat's leaderboard hides
# models under 300 battles in a category and 2,000 overall, for an arena of millions of votes; at the
# scale of this Space's arena (tens to hundreds of votes), 20 votes give a 95% interval of about
# +-80 to +-150 Elo points (simulated: two or three evenly matched models, 20 votes each).
MIN_VOTES = 20
RESAMPLES = 1000


def fit(wins: np.ndarray, tol: float = 1e-9, max_steps: int = 200) -> np.ndarray:
    """Bradley-Terry strengths (logits) maximising the ridge-penalised likelihood, for one win matrix
    ``wins[i, j]`` (how often i beat j; ties as halves) or a stack of them (bootstrap resamples).

    Newton's method on the whole stack at once: the penalised likelihood is strictly concave, its
    Hessian a small k x k matrix, so a few batched solves replace a thousand separate optimiser runs
    (the fits are the leaderboard's whole cost). A step is capped at one logit per model so that early
    steps cannot overshoot for a model that won every vote.
    """
    stack = wins[None] if wins.ndim == 2 else wins
    games = stack + stack.transpose(0, 2, 1)
    k = stack.shape[-1]
    beta = np.zeros(stack.shape[:2])
    for _ in range(max_steps):
        p = 1 / (1 + np.exp(beta[:, None, :] - beta[:, :, None]))  # p[r, i, j] = P(i beats j)
        grad = RIDGE * beta - (stack * (1 - p) - stack.transpose(0, 2, 1) * p).sum(-1)
        s = games * p * (1 - p)
        hess = RIDGE * np.eye(k) + s.sum(-1)[..., None] * np.eye(k) - s
        step = np.clip(np.linalg.solve(hess, grad[..., None])[..., 0], -1, 1)
        beta -= step
        if np.abs(step).max() < tol:
            break
    return beta[0] if wins.ndim == 2 else beta


def _no_votes() -> dict:
    return {"votes": 0, "wins": 0, "ties": 0, "losses": 0, "both_bad": 0}


def _tally(rated: list[dict]) -> tuple[dict, list[str], np.ndarray, np.ndarray]:
    """Per-model counts, the models that a vote compares, and the votes grouped by kind (who won
    against whom, or a tie, or nothing compared): each kind's win matrix and how many votes it has."""
    counts = {m: _no_votes() for v in rated for m in (v["model_a"], v["model_b"])}
    compared = sorted({v[k] for v in rated if v["winner"] != "both_bad" for k in ("model_a", "model_b")})
    index = {m: n for n, m in enumerate(compared)}
    kinds: dict[tuple, int] = {}
    for vote in rated:
        a, b, winner = vote["model_a"], vote["model_b"], vote["winner"]
        counts[a]["votes"] += 1
        counts[b]["votes"] += 1
        if winner == "both_bad":
            counts[a]["both_bad"] += 1
            counts[b]["both_bad"] += 1
            kind = ()
        elif winner == "tie":
            counts[a]["ties"] += 1
            counts[b]["ties"] += 1
            kind = ("tie", *sorted((index[a], index[b])))
        else:
            won, lost = (a, b) if winner == "a" else (b, a)
            counts[won]["wins"] += 1
            counts[lost]["losses"] += 1
            kind = ("win", index[won], index[lost])
        kinds[kind] = kinds.get(kind, 0) + 1
    matrices = np.zeros((len(kinds), len(compared), len(compared)))
    for n, kind in enumerate(kinds):
        if kind and kind[0] == "tie":
            matrices[n, kind[1], kind[2]] = matrices[n, kind[2], kind[1]] = 0.5
        elif kind:
            matrices[n, kind[1], kind[2]] = 1
    return counts, compared, matrices, np.array(list(kinds.values()))


def _bootstrap(kinds: np.ndarray, votes: np.ndarray, seed: int, resamples: int) -> np.ndarray:
    """Strengths refitted on ``resamples`` resamples of the votes, one row each. Resampling votes is
    resampling their kinds with the kinds' frequencies: one multinomial draw per resample."""
    n = int(votes.sum())
    draws = np.random.default_rng(seed).multinomial(n, votes / n, size=resamples)
    return fit(np.tensordot(draws, kinds, 1))


def pairs(rated: list[dict]) -> dict:
    """FastChat's battle matrices: for each ordered pair of models, how many rated battles they fought
    and how many the first won (as side A or B; ties and "both are bad" are battles won by neither)."""
    table: dict = {}
    for vote in rated:
        a, b, winner = vote["model_a"], vote["model_b"], vote["winner"]
        for me, other, side in ((a, b, "a"), (b, a, "b")):
            cell = table.setdefault(me, {}).setdefault(other, {"battles": 0, "wins": 0})
            cell["battles"] += 1
            cell["wins"] += winner == side
    return table


def _elo(x) -> float:
    return round(float(ELO_BASE + ELO_SCALE * x), 1)


def leaderboard(
    votes: list[dict], seed: int = 0, resamples: int = RESAMPLES, min_votes: int = MIN_VOTES
) -> dict:
    """Bradley-Terry ratings (Elo scale, 1000 = average) with percentile-bootstrap 95% intervals.

    A tie counts half a win for each side; "both are bad" counts as a vote for both models but as
    neither a win nor a tie. Rows: ranked models by rating, then provisional ones (``rank`` None), then
    models with no comparing vote (``rating`` None), each with its counts of rated votes.
    """
    anonymous = [v for v in votes if v.get("mode", "anonymous") == "anonymous"]
    pattern = identity_pattern({v[k] for v in votes for k in ("model_a", "model_b")})
    rated = [v for v in anonymous if reveals_identity(v, pattern) is None]
    counts, compared, kinds, kind_votes = _tally(rated)
    rows = []
    if compared:
        point = fit(np.tensordot(kind_votes, kinds, 1))
        samples = _bootstrap(kinds, kind_votes, seed, resamples) if resamples else point[None]
        low, high = (np.percentile(samples, q, axis=0) for q in (2.5, 97.5))
        for k, model in enumerate(compared):
            rows.append(
                {"model": model, "rating": _elo(point[k]), "low": _elo(low[k]), "high": _elo(high[k])}
            )
    # A model seen only in left-out or "both are bad" votes is listed too, with no rating.
    listed = sorted({*counts, *(v[k] for v in anonymous for k in ("model_a", "model_b"))} - set(compared))
    rows += [{"model": m, "rating": None, "low": None, "high": None} for m in listed]

    def ranked(row) -> bool:
        return row["rating"] is not None and row["wins"] + row["ties"] + row["losses"] >= min_votes

    for row in rows:
        row.update(counts.get(row["model"]) or _no_votes())
    rows.sort(key=lambda r: (not ranked(r), r["rating"] is None, -(r["rating"] or 0), r["model"]))
    places = iter(range(1, len(rows) + 1))
    for row in rows:
        row["rank"] = next(places) if ranked(row) else None
    return {
        "method": f"Bradley-Terry (ridge {RIDGE}), Elo scale; 95% percentile bootstrap",
        "models": rows,
        "votes": len(anonymous),
        "rated": len(rated),
        "left_out": {"named": len(votes) - len(anonymous), "identity": len(anonymous) - len(rated)},
        "pairs": pairs(rated),
        "min_votes": min_votes,
        "seed": seed,
        "resamples": resamples,
    }


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _cell(row: dict, min_votes: int) -> tuple[str, str, str]:
    """Rank, rating and interval as the table shows them; a provisional rating gets no interval (a
    bootstrap of a handful of votes gives a narrow one, down to zero width for one vote, that claims a
    certainty those votes do not give)."""
    if row["rating"] is None:
        return "–", "–", "no vote compares it yet"
    if row["rank"] is None:
        compared = row["wins"] + row["ties"] + row["losses"]
        return (
            "–",
            f"{row['rating']:.0f} (provisional)",
            f"none yet: {compared} of the {min_votes} votes a rank needs",
        )
    return str(row["rank"]), f"{row['rating']:.0f}", f"{row['low']:.0f} to {row['high']:.0f}"


def matrix_markdown(board: dict) -> str:
    """FastChat's battle matrix: the share of its battles against each other model that a model won,
    and how many they fought."""
    table, models = board.get("pairs") or {}, [r["model"] for r in board["models"]]
    models = [m for m in models if m in table]
    if len(models) < 2:
        return ""
    lines = [
        "| won / fought | " + " | ".join(f"vs {m}" for m in models) + " |",
        "|---|" + "---:|" * len(models),
    ]
    for me in models:
        cells = []
        for other in models:
            cell = table[me].get(other)
            if me == other or cell is None:
                cells.append("–")
            else:
                cells.append(f"{cell['wins'] / cell['battles']:.0%} of {cell['battles']}")
        lines.append(f"| {me} | " + " | ".join(cells) + " |")
    return (
        "\n**Battles between each pair** (rated votes; the row's model won that share of them, ties and "
        '"both are bad" won by neither):\n\n' + "\n".join(lines)
    )


def leaderboard_markdown(board: dict) -> str:
    """The leaderboard as a Markdown table, with what it was computed from and what was left out."""
    named, identity = board["left_out"]["named"], board["left_out"].get("identity", 0)
    notes = [f"{plural(named, 'named vote')} left out: the voter saw the names"] if named else []
    if identity:
        notes.append(f"{identity} left out because an answer names a model or its maker")
    note = f" ({'; '.join(notes)})" if notes else ""
    if not board["models"]:
        return f"No anonymous votes yet{note}. Play a battle in the Arena and vote."
    lines = [
        "| rank | model | rating | 95% interval | votes | wins / ties / losses / both bad |",
        "|---:|---|---:|---|---:|---|",
    ]
    for r in board["models"]:
        rank, rating, interval = _cell(r, board["min_votes"])
        lines.append(
            f"| {rank} | {r['model']} | {rating} | {interval} | {r['votes']} "
            f"| {r['wins']} / {r['ties']} / {r['losses']} / {r['both_bad']} |"
        )
    lines.append(
        f"\n{plural(board['votes'], 'anonymous vote')}{note}. A model is ranked once {board['min_votes']} votes "
        "compare it (wins, ties and losses); before that its rating is provisional, with no interval. "
        f"{board['method']} over {board['resamples']} resamples; a tie counts half a win for each side, "
        '"both are bad" neither.'
    )
    matrix = matrix_markdown(board)
    if matrix:
        lines.append(matrix)
    if board.get("updating"):
        lines.append("\n_Updating with the latest votes…_")
    return "\n".join(lines)


class LiveLeaderboard:
    """The last leaderboard computed, for every page load and vote; a vote (``changed``) asks a
    background thread for a refit, and votes that arrive during one are taken by the next."""

    def __init__(
        self, read: Callable[[], list[dict]], resamples: int = RESAMPLES, min_votes: int = MIN_VOTES
    ):
        self._read, self._options = read, {"resamples": resamples, "min_votes": min_votes}
        self._cond = threading.Condition()
        self._wanted, self._done = 1, 0  # refits asked for, and the one the result is from
        self._board: dict | None = None
        self._error: str | None = None
        threading.Thread(target=self._work, name="leaderboard", daemon=True).start()

    @classmethod
    def of(cls, store, **options) -> LiveLeaderboard:
        """The leaderboard of a ``Store``'s votes, refitted whenever it stores one."""
        live = cls(store.votes, **options)
        store.on_vote.append(live.changed)
        return live

    def changed(self) -> None:
        with self._cond:
            self._wanted += 1
            self._cond.notify_all()

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._wanted > self._done)
                target = self._wanted
            try:
                board, error = leaderboard(self._read(), **self._options), None
            except ValueError as e:  # a damaged votes file: the message names the file and line
                board, error = None, str(e)
            except Exception as e:  # never let the thread die: the next vote tries again
                log.exception("the leaderboard could not be computed")
                board, error = None, f"{type(e).__name__}: {e}"
            with self._cond:
                self._board, self._error, self._done = board, error, target
                self._cond.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Until the result counts every vote stored so far (benchmarks and tests); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._done >= self._wanted, timeout)

    def board(self) -> dict:
        """The last result, with ``updating`` True while a refit for newer votes is pending. Raises
        ``ValueError`` naming the bad line when the votes on file cannot be read."""
        with self._cond:
            board, error, fresh = self._board, self._error, self._done >= self._wanted
        if error is not None:
            raise ValueError(error)
        if board is None:  # the first fit of the votes on file is still running
            board = leaderboard([], **self._options)
        return {**board, "updating": not fresh}

    def markdown(self) -> str:
        try:
            board = self.board()
        except ValueError as error:
            return f"The leaderboard cannot be computed: {error}"
        if board["updating"] and not board["models"] and self._done == 0:
            return "The leaderboard is being computed from the votes on file…"
        return leaderboard_markdown(board)
