"""The Chat tab: one model at a time, streamed, with a like or dislike on each answer (FastChat's
``gradio_web_server``)."""

import re
import threading
from contextlib import closing

import gradio as gr

from assistant.arena import feedback_record, limit_mark
from assistant.prompt import content_text, normalize_history
from assistant.service import Assistant
from assistant.store import Store
from space.common import EXAMPLES, from_script, gpu, refuse

QUEUED = "*waiting for the model: place {} in the queue…*"


def chat_text(answer, limit: int) -> str:
    """The answer as the Chat tab shows it: its place in the queue before its first token, and the
    limit's mark when it stopped there."""
    if answer.queued:
        return QUEUED.format(answer.queued)
    return f"{answer.text}\n\n{limit_mark(limit)}" if answer.at_limit(limit) else answer.text


def unmarked(text: str) -> str:
    """An answer as the model wrote it: without the marks the page added to it."""
    text = re.sub(r"\n\n\*\[cut off at the \d+-token limit[^\n]*\]\*$", "", text)
    return re.sub(r"^\*waiting for the model: place \d+ in the queue…\*$", "", text)


def plain(history) -> list[dict]:
    """The history as the model wrote it (``unmarked`` answers)."""
    history = normalize_history(history)
    for message in history:
        if message["role"] == "assistant":
            message["content"] = unmarked(message["content"])
    return history


def build_chat(assistant: Assistant, store: Store, controls: list) -> None:
    """The tab's layout and events, inside the caller's ``gr.Tab``; its chat is the API's ``/chat``."""

    @gpu
    def chat(
        message,
        history,
        model,
        system,
        temperature,
        top_p,
        max_new_tokens,
        seed,
        repetition,
        request: gr.Request,
    ):
        stop = threading.Event()  # set when Stop closes this generator: a queued answer never starts
        try:
            chosen = assistant.settings(temperature, top_p, max_new_tokens, seed, repetition)
            prepared = assistant.prepare(message, plain(history), system, chosen)
            if prepared.notice:
                gr.Warning(prepared.notice)
            with closing(assistant.chat(prepared, model, stop)) as answers:
                script = from_script(request)  # a script gets the answer itself, unmarked
                for answer in answers:
                    yield answer.text if script else chat_text(answer, chosen.max_new_tokens)
        except Exception as error:
            refuse(error, "generation", request)  # a refusal: a warning on the page, an error to a script
        finally:
            stop.set()

    def feedback(data: gr.LikeData, history, model):
        history = plain(history)
        upto = data.index[0] + 1 if isinstance(data.index, list) else data.index + 1
        answer = unmarked(content_text(data.value))
        record = feedback_record(model or assistant.chat_model, data.liked, answer, history[:upto])
        try:
            store.append("feedback", record)
        except OSError as error:
            raise gr.Error(f"the feedback could not be saved ({error.strerror})") from None

    model = gr.Dropdown(assistant.models, value=assistant.chat_model, label="Model")
    chatbot = gr.Chatbot(feedback_options=("Like", "Dislike"), height=420)
    gr.ChatInterface(
        chat,
        chatbot=chatbot,
        additional_inputs=[model, *controls],
        examples=[[e] for e in EXAMPLES],
        api_name="chat",
        fill_height=False,
    )
    chatbot.like(feedback, [chatbot, model], None, api_visibility="private")
