"""Streamlit variant of the Space: the same chat, arena and leaderboard on the same core.

    streamlit run streamlit_app.py

The models come from the same environment variables as app.py (ASSISTANT_BASE_MODEL, ASSISTANT_ADAPTERS,
ASSISTANT_REVISION; nothing set: the published adapter, else the offline demo, with every demo adapter)
and are loaded once per process (``st.cache_resource``), shared by every session, as are the battles and
the store of votes (ASSISTANT_DATA_DIR, ASSISTANT_FEEDBACK_REPO) and the leaderboard (refitted in the
background after each vote); ``assistant.generation`` locks generation. docs/space.md describes the Space.
"""

from __future__ import annotations

import os
from contextlib import closing

import streamlit as st

from assistant.arena import CHOICES, Arena, BattleGone, about, feedback_record, limit_mark, revealed
from assistant.evidence import FILTERS, Evidence, comparison_markdown, find
from assistant.generation import RequestError
from assistant.leaderboard import LiveLeaderboard
from assistant.models import ModelLoadError, load_for_serving
from assistant.prompt import DEFAULT_SYSTEM
from assistant.service import DEFAULTS, Assistant, Limits
from assistant.store import Store


@st.cache_resource(show_spinner="Loading the models (once)…")
def get_arena(base, adapters, revision, data_dir, repo) -> tuple[Arena, LiveLeaderboard]:
    loaded = load_for_serving(base, adapters, revision)
    print(loaded.describe(), flush=True)
    store = Store(data_dir, repo)
    return Arena(Assistant(loaded, Limits.from_env()), store), LiveLeaderboard.of(store)


@st.cache_resource
def get_evidence(folder: str, name: str) -> Evidence:
    return Evidence(folder, name)


def deltas(answers, shown: list[str], at_limit: list[bool], limit: int):
    """The new text of each snapshot, for ``st.write_stream``; ``shown[0]`` keeps the latest full text,
    ``at_limit[0]`` whether the answer stopped at the token limit."""
    for answer in answers:
        text = answer.text
        if text.startswith(shown[0]):
            yield text[len(shown[0]) :]
        shown[0], at_limit[0] = text, answer.at_limit(limit)


def pane_text(answer, limit: int) -> str:
    """An arena pane while it streams: the queue before the first token, the limit's mark at the end."""
    if answer.queued:
        return f"*waiting for the model: place {answer.queued} in the queue…*"
    return f"{answer.text}\n\n{limit_mark(limit)}" if answer.done and answer.at_limit(limit) else answer.text


st.set_page_config(page_title="Open Assistant preference tuning", page_icon="💬", layout="wide")
try:
    arena, live = get_arena(
        os.environ.get("ASSISTANT_BASE_MODEL") or None,
        os.environ.get("ASSISTANT_ADAPTERS") or os.environ.get("ASSISTANT_ADAPTER") or None,
        os.environ.get("ASSISTANT_REVISION") or None,
        os.environ.get("ASSISTANT_DATA_DIR") or "user_data",
        os.environ.get("ASSISTANT_FEEDBACK_REPO") or None,
    )
except (ModelLoadError, RequestError) as error:
    st.error(f"The model could not be loaded: {error}")
    st.stop()
assistant, store = arena.assistant, arena.store

st.title(f"Open Assistant preference tuning: {len(assistant.models)} models")
st.caption(
    f"{assistant.loaded.describe()} Your messages, the answers, votes and likes are kept on {store.where} "
    "(see About this arena)."
)
with st.expander("About this arena"):
    st.markdown(about(assistant, store))
if store.problem:
    st.warning(store.problem)

with st.sidebar:
    view = st.radio("View", ["Chat", "Arena", "Leaderboard", "Evidence"], horizontal=True)
    system = st.text_area("System prompt", DEFAULT_SYSTEM, placeholder="none (as in training)")
    temperature = st.slider("Temperature (0 = greedy)", 0.0, 2.0, DEFAULTS.temperature, 0.05)
    top_p = st.slider("Top-p", 0.05, 1.0, DEFAULTS.top_p, 0.05)
    limit = assistant.limits.max_new_tokens
    max_new_tokens = st.slider("Max new tokens", 1, limit, assistant.default_max_new_tokens)
    # empty by default: each battle and chat draws fresh seeds (kept with the vote, for a replay)
    seed = st.number_input("Seed (empty: fresh each time)", value=None, step=1, placeholder="fresh")
    # the decoding knob a skeptic tries first against loops; never on the end-of-turn tokens
    repetition = st.slider("Repetition penalty (1 = off)", 1.0, 2.0, DEFAULTS.repetition_penalty, 0.05)
    if st.button("Clear conversation"):
        st.session_state.messages = []
        st.session_state.battle = None

st.session_state.setdefault("messages", [])
st.session_state.setdefault("battle", None)
settings = assistant.settings(temperature, top_p, max_new_tokens, seed, repetition)


def like(index: int, model: str) -> None:
    liked = st.session_state[f"feedback-{index}"]
    history = st.session_state.messages[: index + 1]
    store.append("feedback", feedback_record(model, liked == 1, history[-1]["content"], history))


if view == "Chat":
    model = st.selectbox("Model", assistant.models, index=assistant.models.index(assistant.chat_model))
    for i, message in enumerate(st.session_state.messages):
        with st.chat_message(message["role"]):
            st.markdown(message["content"])
            if message["role"] == "assistant":
                st.feedback(
                    "thumbs", key=f"feedback-{i}", on_change=like, args=(i, message.get("model", model))
                )
    prompt = st.chat_input("Ask something", key="chat", submit_mode="stop")
    if prompt is not None:
        with st.chat_message("user"):
            st.markdown(prompt)
        try:
            prepared = assistant.prepare(prompt, st.session_state.messages, system, settings)
        except RequestError as error:  # a refusal, not a failure: a warning
            st.warning(str(error))
        else:
            if prepared.notice:
                st.info(prepared.notice)
            st.session_state.messages.append({"role": "user", "content": prompt})
            shown, answer_at_limit = [""], [False]
            with st.chat_message("assistant"):
                placeholder = st.empty()
                try:
                    # The stop button ends this script run; closing the stream stops generate itself.
                    with closing(assistant.chat(prepared, model)) as answers:
                        with placeholder.container():
                            st.write_stream(deltas(answers, shown, answer_at_limit, settings.max_new_tokens))
                    final = shown[0] or "_(no answer)_"  # the final text, in case it was cut back
                    if answer_at_limit[0]:
                        final += f"\n\n{limit_mark(settings.max_new_tokens)}"
                    placeholder.markdown(final)
                except RequestError as error:
                    st.warning(str(error))
                except Exception as error:  # this session sees it; the app keeps serving
                    st.error(f"generation failed: {error}")
                finally:
                    st.session_state.messages.append(
                        {"role": "assistant", "content": shown[0], "model": model}
                    )

elif view == "Arena":
    named = st.toggle("Named battle (pick the two models)")
    if named:
        left, right = st.columns(2)
        model_a = left.selectbox("Model A", assistant.models, index=0)
        model_b = right.selectbox("Model B", assistant.models, index=min(1, len(assistant.models) - 1))
    try:
        battle = arena.get(st.session_state.battle) if st.session_state.battle else None
    except BattleGone as gone:  # expired while the page was open: say so, and start afresh
        st.warning(f"{gone}.")
        battle = st.session_state.battle = None
    prompt = st.chat_input("Ask both models", key="arena", submit_mode="stop")
    if prompt is not None and (battle is None or battle.winner is not None):
        try:
            battle = arena.start(model_a, model_b) if named else arena.start()
            st.session_state.battle = battle.id
        except RequestError as error:
            st.warning(str(error))
    if battle is not None:
        name_a, name_b = battle.names()
        columns = st.columns(2)
        for column, title in zip(
            columns, (f"Model A: {name_a or 'hidden'}", f"Model B: {name_b or 'hidden'}"), strict=False
        ):
            column.subheader(title)
        for column, side in zip(columns, "ab", strict=False):
            for message in battle.history(side, marked=True):
                column.chat_message(message["role"]).markdown(message["content"])
        if prompt is not None:
            boxes = []
            for column in columns:
                column.chat_message("user").markdown(prompt)
                boxes.append(column.chat_message("assistant").empty())
            try:
                with closing(arena.ask(battle.id, prompt, system, settings)) as answers:
                    for pair in answers:
                        for box, answer in zip(boxes, pair, strict=False):
                            box.markdown(pane_text(answer, settings.max_new_tokens))
            except RequestError as error:
                st.warning(str(error))
            except Exception as error:
                st.error(f"generation failed: {error}")
        buttons = st.columns(len(CHOICES) + 2)
        for column, (key, label) in zip(buttons, CHOICES.items(), strict=False):
            if column.button(
                label, key=f"vote-{key}", disabled=battle.winner is not None or not battle.turns
            ):
                try:
                    arena.vote(battle.id, key)
                    st.rerun()
                except RequestError as error:
                    st.warning(str(error))
        if buttons[-2].button("Regenerate", disabled=battle.winner is not None or not battle.turns):
            try:
                for _ in arena.regenerate(battle.id):
                    pass
                st.rerun()
            except RequestError as error:
                st.warning(str(error))
        if buttons[-1].button("New battle"):
            st.session_state.battle = None
            st.rerun()
        if battle.winner is not None:
            st.success(revealed(battle))
    else:
        st.write("Ask something: two models answer side by side, their names hidden until you vote.")

elif view == "Leaderboard":
    st.markdown(live.markdown())  # the last result: a refit runs in the background after each vote
    st.button("Refresh")  # a rerun shows the newest result

else:
    folder = find(assistant.loaded, assistant.tuned_name)
    if folder is None:
        st.info(
            f"No evaluation report is committed for {assistant.tuned_name or 'this model'} "
            "(`<adapter>/eval/report.json`): `python -m train.evaluate` writes one."
        )
        st.stop()
    evidence = get_evidence(str(folder), assistant.tuned_name)
    st.markdown(evidence.verdict())
    if evidence.plots:
        st.image([str(p) for p in evidence.plots], width=360)
    st.subheader(f"The {len(evidence.all)} sample comparisons")
    which = st.radio("Show", list(FILTERS), format_func=FILTERS.get, horizontal=True)
    chosen = evidence.comparisons(which)
    if not chosen:
        st.write(f"No comparison is {FILTERS[which].lower()}.")
    else:
        number = (
            st.number_input(f"Comparison (of {len(chosen)})", 1, len(chosen), 1) if len(chosen) > 1 else 1
        )
        head, base, tuned = comparison_markdown(chosen[number - 1])
        st.markdown(head)
        left, right = st.columns(2)
        left.markdown(base)
        right.markdown(tuned)
