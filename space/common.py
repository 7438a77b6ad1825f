"""What every tab shares: the generation settings controls, the error the user sees, the GPU decorator."""

import logging

import gradio as gr

from assistant.generation import RequestError
from assistant.prompt import DEFAULT_SYSTEM
from assistant.service import DEFAULTS, Assistant

log = logging.getLogger("app")  # the server log's name for the Space, whichever tab writes to it

try:  # ZeroGPU Spaces: marks the functions that need the GPU; absent elsewhere
    import spaces

    gpu = spaces.GPU(duration=120)
except ImportError:

    def gpu(fn):
        return fn


EXAMPLES = [
    "Explain the difference between a list and a tuple in Python.",
    "Give me three tips for a good night's sleep.",
    "Write a short, friendly email declining a meeting invitation.",
    "What causes the seasons on Earth?",
]


def user_error(error: Exception, what: str) -> gr.Error:
    """The error a script sees; anything unexpected is logged, and the app keeps serving."""
    if isinstance(error, RequestError):  # an expected refusal: one quiet line, no traceback
        log.info("%s refused: %s", what, error)
        return gr.Error(str(error), print_exception=False)
    log.exception("%s failed", what)
    return gr.Error(f"{what} failed: {error}")


def from_script(request: gr.Request | None) -> bool:
    """Whether the event came from ``gradio_client`` (which marks its calls), not from the page."""
    return request is not None and request.headers.get("x-gradio-user") == "api"


def refuse(error: Exception, what: str, request: gr.Request | None = None) -> None:
    """Show a refusal to a person as a warning toast (an "Error" badge on the outputs would say that
    something broke); a script gets an error it can catch, and a real failure stays an error."""
    if not isinstance(error, RequestError) or from_script(request):
        raise user_error(error, what) from None
    log.info("%s refused: %s", what, error)
    gr.Warning(str(error))


def settings_controls(assistant: Assistant) -> list[gr.components.Component]:
    """The Settings accordion; returns its inputs in the order ``Assistant.settings`` and the system
    prompt are passed: system, temperature, top_p, max_new_tokens, seed, repetition_penalty."""
    with gr.Accordion("Settings", open=False):
        system = gr.Textbox(
            DEFAULT_SYSTEM, label="System prompt", lines=2, placeholder="none (as in training)"
        )
        with gr.Row():
            temperature = gr.Slider(
                0, 2, value=DEFAULTS.temperature, step=0.05, label="Temperature (0 = greedy)"
            )
            top_p = gr.Slider(0.05, 1, value=DEFAULTS.top_p, step=0.05, label="Top-p")
            max_new_tokens = gr.Slider(
                1,
                assistant.limits.max_new_tokens,
                value=assistant.default_max_new_tokens,
                step=1,
                label="Max new tokens",
            )
            # empty by default: each battle and chat draws fresh seeds (kept with the vote, for a replay)
            seed = gr.Number(None, label="Seed (empty: fresh each time)", precision=0)
            # the decoding knob a skeptic tries first against loops; never on the end-of-turn tokens
            repetition = gr.Slider(
                1, 2, value=DEFAULTS.repetition_penalty, step=0.05, label="Repetition penalty (1 = off)"
            )
    return [system, temperature, top_p, max_new_tokens, seed, repetition]
