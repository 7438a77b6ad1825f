"""The Streamlit app through streamlit.testing's AppTest, on SmolLM2 + a random LoRA named by env vars."""

import json
import os
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from assistant.models import load_model
from assistant.service import Assistant, Limits
from tests._helpers_precision import cpu_dtype
from tests._helpers_space import make_random_lora

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")
SYSTEM = "Be brief."
KEYS = ("ASSISTANT_BASE_MODEL", "ASSISTANT_ADAPTERS", "ASSISTANT_DATA_DIR", "ASSISTANT_CPU_DTYPE")


@pytest.fixture(scope="module")
def adapter_dir(smollm2_dir, tmp_path_factory):
    return make_random_lora(smollm2_dir, tmp_path_factory.mktemp("lora") / "tuned")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def env(smollm2_dir, adapter_dir, data_dir):
    saved = {k: os.environ.get(k) for k in KEYS}
    os.environ.update(
        ASSISTANT_BASE_MODEL=str(smollm2_dir),
        ASSISTANT_ADAPTERS=str(adapter_dir),
        ASSISTANT_DATA_DIR=str(data_dir),
        ASSISTANT_CPU_DTYPE="fp32",  # the app's answers are checked against each alone: exact in fp32 only
    )
    yield
    for key, value in saved.items():
        os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


@pytest.fixture(scope="module")
def core(smollm2_dir, adapter_dir):
    from assistant import models

    # What the app serves: the configured adapter, then every demo adapter on the same base.
    with cpu_dtype("fp32"):
        return Assistant(load_model(str(smollm2_dir), [str(adapter_dir), *models.demo_adapters()]), Limits())


def started(env, view="Chat") -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    assert not at.exception, at.exception
    at.sidebar.text_area[0].set_value(SYSTEM)
    at.sidebar.slider[0].set_value(0.0)  # greedy, so the answers can be checked
    at.sidebar.slider[2].set_value(12)
    at.sidebar.radio[0].set_value(view)
    return at.run()


def unmarked(text: str) -> str:
    """An answer without the page's mark for one cut off at the 12-token limit."""
    return text.split("\n\n*[cut off at the 12-token limit")[0]


def alone(core, message, model, history=()):
    prepared = core.prepare(message, list(history), SYSTEM, core.settings(0, 1, 12, 0))
    return [a.text for a in core.chat(prepared, model)][-1]


def test_chat_turns_stream_into_the_history_from_the_chosen_model(env, core):
    at = started(env)
    assert "Serving the base SmolLM2-135M-Instruct" in at.caption[0].value and "tuned" in at.caption[0].value
    assert "/tmp" not in at.caption[0].value
    at.chat_input(key="chat").set_value("What is the capital of France?").run()
    assert not at.exception, at.exception
    first = alone(core, "What is the capital of France?", "tuned")
    assert [m.name for m in at.chat_message] == ["user", "assistant"]
    assert unmarked(at.chat_message[1].markdown[0].value) == first

    at.chat_input(key="chat").set_value("And of Spain?").run()
    history = [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": first},
    ]
    second = alone(core, "And of Spain?", "tuned", history)
    assert [m.name for m in at.chat_message] == ["user", "assistant"] * 2
    assert unmarked(at.chat_message[3].markdown[0].value) == second
    at.selectbox[0].set_value("SmolLM2-135M-Instruct")
    at.chat_input(key="chat").set_value("Say hello.").run()
    assert at.session_state.messages[-1]["model"] == "SmolLM2-135M-Instruct"

    at.chat_input(key="chat").set_value("   ").run()
    assert "empty" in at.warning[0].value and not at.error  # a refusal is a warning


def test_an_arena_battle_hides_the_names_until_the_vote_and_the_leaderboard_counts_it(env, core, data_dir):
    at = started(env, "Arena")
    at.chat_input(key="arena").set_value("Name a fruit.").run()
    assert not at.exception, at.exception
    titles = [h.value for h in at.subheader]
    assert titles == ["Model A: hidden", "Model B: hidden"]
    answers = [m.markdown[0].value for m in at.chat_message if m.name == "assistant"]
    answers = [unmarked(a) for a in answers]
    at.button(key="vote-a").click().run()
    assert not at.exception, at.exception
    revealed = at.success[0].value
    assert revealed.startswith("A was ") and "Your vote: A is better" in revealed
    model_a = revealed[len("A was ") :].split(", B was ")[0]
    model_b = revealed.split(", B was ")[1].split(".")[0]
    assert answers == [alone(core, "Name a fruit.", model_a), alone(core, "Name a fruit.", model_b)]
    (votes,) = Path(data_dir).glob("votes-*.jsonl")
    (record,) = [json.loads(line) for line in votes.read_text().splitlines()]
    assert (record["model_a"], record["model_b"], record["winner"]) == (model_a, model_b, "a")

    at.sidebar.radio[0].set_value("Leaderboard").run()
    for _ in range(120):  # the refit runs in the background; the page shows the last result meanwhile
        table = at.markdown[-1].value  # the board (the About note's text comes first)
        if "1 anonymous vote." in table and "Updating" not in table:
            break
        time.sleep(0.5)
        at.run()
    # One vote: both models are rated, provisionally (no rank before MIN_VOTES votes).
    assert f"| – | {model_a} |" in table and "(provisional)" in table and "1 anonymous vote." in table


def test_an_expired_battle_says_so_and_the_next_message_starts_a_new_one(env, monkeypatch, tmp_path):
    monkeypatch.setenv("ASSISTANT_BATTLE_IDLE_SECONDS", "1")
    monkeypatch.setenv("ASSISTANT_DATA_DIR", str(tmp_path))  # a store of its own: an arena of its own
    at = started(env, "Arena")
    at.chat_input(key="arena").set_value("Name a fruit.").run()
    first = at.session_state.battle
    time.sleep(1.5)
    at.run()
    assert not at.exception, at.exception
    assert at.warning[0].value == (
        "this battle expired after 1 second without a turn or a vote; start a new battle."
    )
    assert at.session_state.battle is None
    at.chat_input(key="arena").set_value("Name a colour.").run()
    assert not at.exception, at.exception
    assert at.session_state.battle not in (None, first) and not at.warning
    assert [h.value for h in at.subheader] == ["Model A: hidden", "Model B: hidden"]


def test_a_refusal_is_a_warning_not_an_error_and_the_evidence_view_says_what_it_has(env):
    at = started(env, "Arena")
    at.chat_input(key="arena").set_value("word " * 9000).run()
    assert not at.exception, at.exception
    assert not at.error and any("too long" in w.value for w in at.warning)
    at.sidebar.radio[0].set_value("Evidence").run()
    assert not at.exception, at.exception
    assert "No evaluation report is committed for tuned" in at.info[0].value
