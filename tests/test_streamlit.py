"""The Streamlit app through streamlit.testing's AppTest, on SmolLM2 + a random LoRA named by env vars."""

import os
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from assistant.generation import BASE, GenerationSettings, generate_side_by_side, generate_texts
from assistant.models import load_model
from tests._helpers_space import make_random_lora

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")
SYSTEM = "Be brief."


@pytest.fixture(scope="module")
def adapter_dir(smollm2_dir, tmp_path_factory):
    return make_random_lora(smollm2_dir, tmp_path_factory.mktemp("lora"))


@pytest.fixture(scope="module")
def env(smollm2_dir, adapter_dir):
    saved = {k: os.environ.get(k) for k in ("ASSISTANT_BASE_MODEL", "ASSISTANT_ADAPTER")}
    os.environ.update(ASSISTANT_BASE_MODEL=str(smollm2_dir), ASSISTANT_ADAPTER=str(adapter_dir))
    yield
    for key, value in saved.items():
        os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


@pytest.fixture(scope="module")
def loaded(smollm2_dir, adapter_dir):
    return load_model(str(smollm2_dir), str(adapter_dir))


def started(env) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    assert not at.exception, at.exception
    at.sidebar.text_area[0].set_value(SYSTEM)
    at.sidebar.slider[0].set_value(0.0)  # greedy, so the answers can be checked
    at.sidebar.slider[2].set_value(12)
    return at


def messages(*turns):
    out = [{"role": "system", "content": SYSTEM}]
    for i, text in enumerate(turns):
        out.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return out


def test_chat_turns_stream_into_the_history(env, loaded):
    at = started(env)
    assert loaded.name in at.caption[0].value
    greedy = GenerationSettings(max_new_tokens=12, temperature=0)
    at.chat_input(key="chat").set_value("What is the capital of France?").run()
    assert not at.exception, at.exception
    first = generate_texts(loaded, [messages("What is the capital of France?")], greedy)[0].text
    assert [m.name for m in at.chat_message] == ["user", "assistant"]
    assert at.chat_message[1].markdown[0].value == first

    at.chat_input(key="chat").set_value("And of Spain?").run()
    second = generate_texts(
        loaded, [messages("What is the capital of France?", first, "And of Spain?")], greedy
    )
    assert [m.name for m in at.chat_message] == ["user", "assistant"] * 2
    assert at.chat_message[3].markdown[0].value == second[0].text
    assert at.session_state.messages[-1] == {"role": "assistant", "content": second[0].text}


def test_empty_message_gets_an_error_and_the_comparison_shows_both_models(env, loaded):
    at = started(env)
    at.chat_input(key="chat").set_value("   ").run()
    assert "empty" in at.error[0].value
    assert at.session_state.messages == []

    at.sidebar.radio[0].set_value("Compare").run()
    at.chat_input(key="compare").set_value("Name a fruit.").run()
    assert not at.exception, at.exception
    ((base, tuned),) = generate_side_by_side(
        loaded, [messages("Name a fruit.")], GenerationSettings(max_new_tokens=12, temperature=0)
    )
    assert base.text != tuned.text
    names = [h.value for h in at.subheader]
    assert names == [
        "SmolLM2-135M-Instruct (base)",
        f"SmolLM2-135M-Instruct + {Path(loaded.adapter).name} (tuned)",
    ]
    left, right = at.columns
    assert left.markdown[0].value == base.text and right.markdown[0].value == tuned.text
    assert base.adapter == BASE
