"""Streamlit variant of the Space: the same chat and base-vs-tuned comparison on the same core.

    streamlit run streamlit_app.py

The model comes from the same environment variables as app.py (ASSISTANT_BASE_MODEL, ASSISTANT_ADAPTER,
ASSISTANT_REVISION; nothing set: the project's adapter, else the offline demo) and is loaded once per
process (``st.cache_resource``), shared by every session; ``assistant.generation`` locks generation.
"""

from __future__ import annotations

import os
from contextlib import closing

import streamlit as st

from assistant.generation import Assistant, Limits, RequestError
from assistant.models import ModelLoadError, load_for_serving
from assistant.prompt import DEFAULT_SYSTEM


@st.cache_resource(show_spinner="Loading the model (once)…")
def get_assistant(base: str | None, adapter: str | None, revision: str | None) -> Assistant:
    loaded = load_for_serving(base, adapter, revision)
    print(loaded.describe(), flush=True)
    return Assistant(loaded, Limits.from_env())


def deltas(answers, shown: list[str]):
    """The new text of each snapshot, for ``st.write_stream``; ``shown[0]`` keeps the latest full text."""
    for answer in answers:
        text = answer.text
        if text.startswith(shown[0]):
            yield text[len(shown[0]) :]
        shown[0] = text


st.set_page_config(page_title="Phi-2 assistant", page_icon="💬", layout="wide")
try:
    assistant = get_assistant(
        os.environ.get("ASSISTANT_BASE_MODEL") or None,
        os.environ.get("ASSISTANT_ADAPTER") or None,
        os.environ.get("ASSISTANT_REVISION") or None,
    )
except (ModelLoadError, RequestError) as error:
    st.error(f"The model could not be loaded: {error}")
    st.stop()

st.title("Phi-2 assistant")
st.caption(assistant.loaded.describe())

with st.sidebar:
    view = st.radio("View", ["Chat", "Compare"], horizontal=True)
    system = st.text_area("System prompt", DEFAULT_SYSTEM, placeholder="none (as in training)")
    temperature = st.slider("Temperature (0 = greedy)", 0.0, 2.0, 0.7, 0.05)
    top_p = st.slider("Top-p", 0.05, 1.0, 0.95, 0.05)
    limit = assistant.limits.max_new_tokens
    max_new_tokens = st.slider("Max new tokens", 1, limit, min(256, limit))
    seed = st.number_input("Seed", value=0, step=1)
    if st.button("Clear conversation"):
        st.session_state.messages = []
        st.session_state.comparison = None

st.session_state.setdefault("messages", [])
st.session_state.setdefault("comparison", None)
settings = assistant.settings(temperature, top_p, max_new_tokens, seed)

if view == "Chat":
    for message in st.session_state.messages:
        with st.chat_message(message["role"]):
            st.markdown(message["content"])
    prompt = st.chat_input("Ask something", key="chat", submit_mode="stop")
    if prompt is not None:
        with st.chat_message("user"):
            st.markdown(prompt)
        try:
            prepared = assistant.prepare(prompt, st.session_state.messages, system, settings)
        except RequestError as error:
            st.error(str(error))
        else:
            if prepared.notice:
                st.info(prepared.notice)
            st.session_state.messages.append({"role": "user", "content": prompt})
            shown = [""]
            with st.chat_message("assistant"):
                placeholder = st.empty()
                try:
                    # The stop button ends this script run; closing the stream stops generate itself.
                    with closing(assistant.chat(prepared)) as answers:
                        with placeholder.container():
                            st.write_stream(deltas(answers, shown))
                    placeholder.markdown(
                        shown[0] or "_(no answer)_"
                    )  # the final text, in case it was cut back
                except RequestError as error:
                    st.error(str(error))
                except Exception as error:  # this session sees it; the app keeps serving
                    st.error(f"generation failed: {error}")
                finally:
                    st.session_state.messages.append({"role": "assistant", "content": shown[0]})
else:
    st.write("The base model and the tuned model answer the same prompt, with the same settings and seed.")
    prompt = st.chat_input("Ask both models", key="compare", submit_mode="stop")
    asked = prompt if prompt is not None else (st.session_state.comparison or [None])[0]
    if asked:
        st.markdown(f"**Prompt:** {asked}")
    left, right = st.columns(2)
    left.subheader(assistant.base_name)
    right.subheader(assistant.tuned_name)
    if prompt is not None:
        st.session_state.comparison = None
        try:
            prepared = assistant.prepare(prompt, [], system, settings)
            boxes = (left.empty(), right.empty())
            with closing(assistant.compare(prepared)) as pairs:
                for pair in pairs:
                    for box, answer in zip(boxes, pair, strict=True):
                        box.markdown(answer.text)
            st.session_state.comparison = (prompt, pair[0].text, pair[1].text)
        except RequestError as error:
            st.error(str(error))
        except Exception as error:
            st.error(f"generation failed: {error}")
    elif st.session_state.comparison:
        _, base, tuned = st.session_state.comparison
        left.markdown(base)
        right.markdown(tuned)
