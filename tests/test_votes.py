"""Votes: reading them back, the Bradley-Terry ratings, and the store that pushes them to a dataset repo
(the real huggingface_hub CommitScheduler against the loopback Hub stand-in). What the leaderboard
shows and when it is refitted: tests/test_leaderboard.py."""

import json
import random

import pytest

from assistant.leaderboard import leaderboard, leaderboard_markdown
from assistant.votes import VotesError, read_votes

TOKEN, USER = "hf_test_token", "tester"


def vote(a, b, winner, mode="anonymous", n=None):
    record = {"type": "vote", "mode": mode, "model_a": a, "model_b": b, "winner": winner}
    return record | ({"id": str(n)} if n is not None else {})


def write(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def test_ratings_follow_the_true_strengths_with_intervals_that_narrow_as_votes_grow():
    strength = {"strong": 1.0, "middle": 0.0, "weak": -1.0}
    rng = random.Random(0)

    def votes(n):
        out = []
        for _ in range(n):
            a, b = rng.sample(sorted(strength), 2)
            p = 1 / (1 + 10 ** ((strength[b] - strength[a]) * 173.7 / 400))
            out.append(vote(a, b, "a" if rng.random() < p else "b"))
        return out

    small, large = leaderboard(votes(30), resamples=200), leaderboard(votes(600), resamples=200)
    assert [r["model"] for r in large["models"]] == ["strong", "middle", "weak"]
    assert all(r["low"] <= r["rating"] <= r["high"] for r in large["models"])
    width = {
        b: {r["model"]: r["high"] - r["low"] for r in board["models"]}
        for b, board in (("s", small), ("l", large))
    }
    assert all(width["l"][m] < width["s"][m] for m in strength)
    assert sum(r["votes"] for r in large["models"]) == 2 * 600
    assert leaderboard(votes(30), seed=3, resamples=50) != leaderboard(votes(30), seed=4, resamples=50)


def test_a_tie_counts_half_and_both_bad_counts_as_a_vote_but_not_a_win():
    one_each = leaderboard([vote("x", "y", "a"), vote("x", "y", "b")], resamples=20)
    ties = leaderboard([vote("x", "y", "tie"), vote("y", "x", "tie")], resamples=20)
    assert [r["rating"] for r in one_each["models"]] == [r["rating"] for r in ties["models"]] == [1000, 1000]
    base = [vote("x", "y", "a"), vote("y", "x", "b")]
    with_bad = leaderboard(base + [vote("x", "y", "both_bad")] * 5, resamples=20)
    without = leaderboard(base, resamples=20)
    assert [r["rating"] for r in with_bad["models"]] == [r["rating"] for r in without["models"]]
    x = with_bad["models"][0]
    assert x["model"] == "x" and (x["votes"], x["wins"], x["both_bad"]) == (7, 2, 5)
    assert x["rating"] > 1000  # two wins, no loss: above average, and finite


def test_named_votes_are_kept_out_of_the_ratings_and_said_so():
    board = leaderboard([vote("x", "y", "a"), vote("x", "y", "a", mode="named")], resamples=10, min_votes=1)
    assert board["votes"] == 1 and board["left_out"] == {"named": 1, "identity": 0}
    text = leaderboard_markdown(board)
    assert "| 1 | x |" in text and "1 named vote left out" in text
    assert "No anonymous votes yet" in leaderboard_markdown(leaderboard([vote("x", "y", "a", mode="named")]))


def test_read_votes_names_the_bad_line_tolerates_a_cut_last_line_and_counts_each_id_once(tmp_path):
    good = [vote("x", "y", "a", n=1), {"type": "feedback", "liked": True}, vote("y", "x", "tie", n=2)]
    path = write(tmp_path / "votes-1.jsonl", good, tail='{"type": "vote", "model_a": "x", "mod')
    assert [v["id"] for v in read_votes(path)] == ["1", "2"]  # the feedback line and the cut line skipped
    write(tmp_path / "votes-2.jsonl", [vote("x", "y", "a", n=1), vote("x", "y", "b", n=3)])
    assert sorted(v["id"] for v in read_votes(tmp_path)) == ["1", "2", "3"]  # a folder, id 1 once
    old = {"vote": "left", "left": {"model": "base"}, "right": {"model": "tuned"}, "left_is": "base"}
    (converted,) = read_votes(write(tmp_path / "old.jsonl", [old]))
    assert (converted["mode"], converted["model_a"], converted["model_b"], converted["winner"]) == (
        "named",
        "base",
        "tuned",
        "a",
    )

    for bad, message in [
        ("not json\n" + json.dumps(vote("x", "y", "a")) + "\n", "malformed JSON"),
        (json.dumps(vote("x", "y", "maybe")) + "\n", "'winner' must be one of"),
        (json.dumps(vote("x", "x", "a")) + "\n", "two different models"),
        ("[1]\n", "must be a JSON object"),
    ]:
        (tmp_path / "bad.jsonl").write_text(bad)
        with pytest.raises(VotesError, match=message) as error:
            read_votes(tmp_path / "bad.jsonl")
        assert str(error.value).startswith(f"{tmp_path / 'bad.jsonl'}:1: ") and "\n" not in str(error.value)
    with pytest.raises(VotesError, match="no such file"):
        read_votes(tmp_path / "missing.jsonl")


@pytest.fixture
def hub(monkeypatch):
    from huggingface_hub import constants

    from tests._helpers_space import dataset_hub

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the stand-in is on loopback
    with dataset_hub(TOKEN, USER) as server:
        yield server


def repo_votes(hub, repo_id):
    files = hub.repos[repo_id].commits[-1]["files"]
    lines = [line for path, data in sorted(files.items()) for line in data.decode().splitlines()]
    assert all(path.startswith("data/votes-") or path.startswith("data/feedback-") for path in files)
    return [json.loads(line) for line in lines if '"type": "vote"' in line]


def test_the_store_pushes_to_the_dataset_repo_and_a_restart_goes_on_from_there(hub, tmp_path):
    from huggingface_hub import HfApi

    from assistant.store import Store

    api = HfApi(endpoint=hub.url, token=TOKEN)
    first = Store(tmp_path / "run1" / "data", f"{USER}/feedback", api=api, every=60)
    assert first.problem is None and "dataset repo" in first.where
    first.append("votes", vote("x", "y", "a", n="v1"))
    first.append("feedback", {"type": "feedback", "id": "f1", "liked": True})
    first.push_now()
    assert [v["id"] for v in repo_votes(hub, f"{USER}/feedback")] == ["v1"]

    # A restart: a fresh disk, a new Store on the same repo. The earlier vote is read back, the new one
    # goes to a file of its own, so the pushed file of the first run is never overwritten.
    second = Store(tmp_path / "run2" / "data", f"{USER}/feedback", api=api, every=60)
    assert [v["id"] for v in second.votes()] == ["v1"]
    second.append("votes", vote("y", "x", "b", n="v2"))
    second.push_now()
    assert sorted(v["id"] for v in repo_votes(hub, f"{USER}/feedback")) == ["v1", "v2"]
    assert sorted(v["id"] for v in second.votes()) == ["v1", "v2"]
    assert hub.repos[f"{USER}/feedback"].private and not hub.unhandled


def test_an_unreachable_feedback_repo_keeps_the_votes_local_and_says_why(hub, tmp_path):
    from huggingface_hub import HfApi

    from assistant.store import Store

    store = Store(
        tmp_path / "data", f"{USER}/feedback", api=HfApi(endpoint="http://127.0.0.1:9", token=TOKEN)
    )
    assert store.scheduler is None and store.where == "this server"
    assert "kept on this server only" in store.problem and "\n" not in store.problem
    store.append("votes", vote("x", "y", "a", n=1))
    assert [v["id"] for v in store.votes()] == ["1"]
