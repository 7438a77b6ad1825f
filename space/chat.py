"""The Chat tab: one model at a time, streamed, with a like or dislike on each answer (FastChat's
``gradio_web_server``)."""

from contextlib import closing

import gradio as gr

from assistant.arena import feedback_record
from assistant.prompt import content_text, normalize_history
from assistant.service import Assistant
from assistant.store import Store
from space.common import EXAMPLES, gpu, user_error


def build_chat(assistant: Assistant, store: Store, controls: list) -> None:
    """The tab's layout and events, inside the caller's ``gr.Tab``; its chat is the API's ``/chat``."""

    @gpu
    def chat(message, history, model, system, temperature, top_p, max_new_tokens, seed):
        try:
            chosen = assistant.settings(temperature, top_p, max_new_tokens, seed)
            prepared = assistant.prepare(message, history, system, chosen)
            if prepared.notice:
                gr.Warning(prepared.notice)
            with closing(assistant.chat(prepared, model)) as answers:  # closed on stop: generation stops
                for answer in answers:
                    yield answer.text
        except Exception as error:
            raise user_error(error, "generation") from None

    def feedback(data: gr.LikeData, history, model):
        history = normalize_history(history)
        upto = data.index[0] + 1 if isinstance(data.index, list) else data.index + 1
        answer = content_text(data.value)
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
