"""What the leaderboard shows (unrated and provisional models, the vote threshold, votes left out because
an answer gives a model away) and how the apps serve it (the last result, refitted when a vote arrives)."""

import json
import threading

import numpy as np

from assistant.leaderboard import RIDGE, LiveLeaderboard, fit, leaderboard, leaderboard_markdown
from assistant.store import Store
from assistant.votes import read_votes


def vote(a, b, winner, answers=("Paris.", "It is Paris."), mode="anonymous", n=None):
    record = {
        "type": "vote",
        "mode": mode,
        "model_a": a,
        "model_b": b,
        "winner": winner,
        "turns": [{"prompt": "Capital of France?", "a": answers[0], "b": answers[1]}],
    }
    return record | ({"id": str(n)} if n is not None else {})


def rows(board):
    return {r["model"]: r for r in board["models"]}


def test_the_fit_is_the_penalised_likelihoods_maximum_even_for_a_model_that_won_everything():
    wins = np.array([[0, 500, 3], [0, 0, 2.5], [1, 0.5, 0]])
    for matrix in (wins, np.array([[0, 1000.0], [0, 0]])):
        beta = fit(matrix)
        p = 1 / (1 + np.exp(beta[None, :] - beta[:, None]))
        gradient = RIDGE * beta - (matrix * (1 - p) - matrix.T * p).sum(1)
        assert np.abs(gradient).max() < 1e-6 and np.isfinite(beta).all()
    stacked = fit(np.stack([wins, wins.T]))  # a stack is fitted row by row
    assert np.allclose(stacked[0], fit(wins)) and np.allclose(stacked[1], fit(wins.T))


def test_a_model_with_only_both_bad_votes_is_listed_without_a_rating_below_the_rated_ones():
    votes = [vote("x", "y", "a")] * 25 + [vote("y", "x", "a")] * 20 + [vote("z", "x", "both_bad")] * 6
    board = rows(leaderboard(votes, resamples=50))
    assert board["z"]["rating"] is None and board["z"]["rank"] is None and board["z"]["both_bad"] == 6
    assert board["x"]["rank"] == 1 and board["y"]["rank"] == 2  # z is not "1000 [1000, 1000]" above them
    assert [r["model"] for r in leaderboard(votes, resamples=50)["models"]] == ["x", "y", "z"]
    text = leaderboard_markdown(leaderboard(votes, resamples=50))
    assert "| – | z | – | no vote compares it yet | 6 | 0 / 0 / 0 / 6 |" in text


def test_a_model_is_ranked_only_after_the_minimum_number_of_comparing_votes():
    votes = [vote("x", "y", "a")] * 3 + [vote("y", "x", "tie")] * 2 + [vote("z", "x", "b")]
    board = leaderboard(votes, resamples=50, min_votes=5)
    ranked = rows(board)
    assert (ranked["x"]["rank"], ranked["y"]["rank"], ranked["z"]["rank"]) == (1, 2, None)
    assert ranked["z"]["rating"] is not None  # provisional: shown, not ranked
    assert [r["model"] for r in board["models"]] == ["x", "y", "z"]
    text = leaderboard_markdown(board)
    assert "| – | z |" in text and "(provisional)" in text and "ranked once 5 votes compare it" in text
    assert (
        "| none yet: 1 of the 5 votes a rank needs | 1 | 0 / 0 / 1 / 0 |" in text
        and "6 anonymous votes." in text
    )
    # One vote alone: every resample is that vote, a zero-width interval the table does not show.
    one = leaderboard(votes[-1:], resamples=50)
    assert all(r["low"] == r["high"] for r in one["models"])
    text = leaderboard_markdown(one)
    assert "1 anonymous vote." in text and " to " not in text.split("\n\n")[0]


def test_the_battle_matrix_counts_each_pair_from_both_sides():
    votes = (
        [vote("x", "y", "a")] * 3
        + [vote("y", "x", "tie")] * 2
        + [vote("z", "x", "b"), vote("x", "z", "both_bad")]
    )
    votes.append(vote("x", "y", "a", mode="named"))  # not rated: not in the matrix either
    board = leaderboard(votes, resamples=50, min_votes=5)
    assert board["pairs"]["x"]["y"] == {"battles": 5, "wins": 3} and board["pairs"]["y"]["x"] == {
        "battles": 5,
        "wins": 0,
    }
    assert board["pairs"]["x"]["z"] == {"battles": 2, "wins": 1} and board["pairs"]["z"]["x"] == {
        "battles": 2,
        "wins": 0,
    }
    assert "z" not in board["pairs"]["y"]
    text = leaderboard_markdown(board)
    assert "| won / fought | vs x | vs y | vs z |" in text
    assert "| x | – | 60% of 5 | 50% of 2 |" in text and "| y | 0% of 5 | – | – |" in text


def test_a_battle_whose_answer_names_a_model_keeps_its_vote_but_leaves_the_ratings(tmp_path):
    clean = [vote("tuned", "base", "a", n=i) for i in range(4)]
    leaks = [
        vote("tuned", "base", "b", ("Paris.", "I am SmolLM2, and it is Paris."), n="self"),
        vote("base", "tuned", "a", ("As tuned, I say Paris.", "Paris."), n="name"),  # a served name
        vote("base", "tuned", "a", ("Paris. HUGGING FACE made me.", "Paris."), n="maker"),
    ]
    unrelated = vote("base", "tuned", "b", ("Paris, the city of philosophy.", "Paris."), n="fine")
    path = tmp_path / "votes.jsonl"
    path.write_text("".join(json.dumps(v) + "\n" for v in clean + leaks + [unrelated]))
    votes = read_votes(path)
    assert len(votes) == 8  # kept on record
    board = leaderboard(votes, resamples=20, min_votes=1)
    assert board["votes"] == 8 and board["rated"] == 5 and board["left_out"]["identity"] == 3
    assert rows(board)["tuned"]["wins"] == 5 and rows(board)["base"]["losses"] == 5
    assert "3 left out because an answer names a model or its maker" in leaderboard_markdown(board)


def test_the_served_leaderboard_is_refitted_once_per_new_vote_and_read_from_its_last_result(tmp_path):
    store = Store(tmp_path / "data")
    reads = []

    def read():
        reads.append(1)
        return store.votes()

    live = LiveLeaderboard(read, resamples=20, min_votes=1)
    store.on_vote.append(live.changed)
    assert live.wait(60)
    assert "No anonymous votes yet" in live.markdown()
    for _ in range(20):  # page loads: served from the last result, nothing read again
        live.board()
    assert len(reads) == 1

    store.append("votes", vote("x", "y", "a", n=1))
    assert live.wait(60) and len(reads) == 2
    board = live.board()
    assert board["votes"] == 1 and board["updating"] is False and rows(board)["x"]["rank"] == 1

    gate = threading.Event()  # a refit in progress: the last result is served, marked as updating
    live._read = lambda: (gate.wait(60), store.votes())[1]
    store.append("votes", vote("y", "x", "a", n=2))
    stale = live.board()
    assert stale["votes"] == 1 and stale["updating"] and "Updating with the latest votes" in live.markdown()
    gate.set()
    assert live.wait(60) and live.board()["votes"] == 2


def test_a_damaged_votes_file_is_named_on_the_page_and_the_next_vote_is_counted_once_fixed(tmp_path):
    store = Store(tmp_path / "data")
    live = LiveLeaderboard.of(store, resamples=10)
    (tmp_path / "data" / "votes-old.jsonl").write_text("not json\n{}\n")
    store.append("votes", vote("x", "y", "a", n=1))
    assert live.wait(60)
    assert live.markdown().startswith("The leaderboard cannot be computed: ") and "votes-old.jsonl:1" in (
        live.markdown()
    )
    (tmp_path / "data" / "votes-old.jsonl").unlink()
    store.append("votes", vote("x", "y", "b", n=2))
    assert live.wait(60) and live.board()["votes"] == 2
