"""The pairwise judge on an OpenAI-compatible chat endpoint (train.evaluate.endpoint_judge), through the
real huggingface_hub client against a loopback server that speaks the protocol (tests/_helpers_endpoint.py)."""

from types import SimpleNamespace

import pytest

from tests._helpers_endpoint import JudgeEndpoint
from train.evaluate.endpoint_judge import EndpointJudge, endpoint_verdicts

ASK = [{"role": "user", "content": "What is the capital of France?"}]
GOOD, BAD = "Paris is the capital of France.", "I like turtles."


@pytest.fixture(autouse=True)
def online(monkeypatch):
    """The tests run with HF_HUB_OFFLINE; the client may reach the stand-in, which is on loopback."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def answer(text, ended=True):
    return SimpleNamespace(text=text, ended=ended)


def test_each_pair_is_asked_in_both_orders_and_only_an_agreement_decides(monkeypatch):
    monkeypatch.setenv("JUDGE_API_KEY", "secret")
    with JudgeEndpoint() as endpoint:
        judge = EndpointJudge(endpoint.url, "stand-in")
        assert judge.verdict(ASK, BAD, GOOD) == 1.0  # the tuned answer picked in both orders
        assert judge.verdict(ASK, GOOD, BAD) == 0.0
        assert judge.verdict(ASK, BAD, "Maybe.") == 0.5  # "a" both times: a position bias, a tie
    asked = endpoint.requests
    assert (
        len(asked) == 6
        and {r["auth"] for r in asked} == {"Bearer secret"}
        and asked[0]["model"] == "stand-in"
    )
    first, second = (r["messages"][-1]["content"] for r in asked[:2])
    assert first.index(BAD) < first.index(GOOD) and second.index(GOOD) < second.index(BAD)  # both orders


def test_the_verdicts_are_per_prompt_per_tree_where_both_are_clean_and_beside_the_encoder_judge():
    answers = {
        "base": [[answer(BAD), answer(BAD)], [answer(GOOD)], [answer(BAD, ended=False)]],
        "tuned": [[answer(GOOD), answer(BAD)], [answer(BAD)], [answer(GOOD)]],
    }
    answers["base"][1].append(answer(GOOD))
    answers["tuned"][1].append(answer(BAD))
    with JudgeEndpoint() as endpoint:
        result = endpoint_verdicts(
            EndpointJudge(endpoint.url, "stand-in"),
            [ASK] * 3,
            answers,
            ["t1", "t2", "t3"],
            encoder=[0.3, 0.2, 0.1],
        )
    # prompt 1: a win and a tie; prompt 2: two losses; prompt 3: a win, but the base's answer never ended
    test = result["per_prompt"]["test"]
    assert (test["better"], test["worse"], test["n"]) == (2, 1, 3)
    assert result["both_clean"]["prompts"] == 2 and result["both_clean"]["test"]["better"] == 1
    agreement = result["agreement_with_encoder_judge"]
    assert (agreement["k"], agreement["n"], agreement["prompts"]) == (
        2,
        3,
        3,
    )  # the encoder said tuned on all three
