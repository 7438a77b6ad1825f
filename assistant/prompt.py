"""The one prompt format shared by training, evaluation and the apps.

Phi-2 ships no chat template; its documented instruction format is ``Instruct: <prompt>\\nOutput:``.
We turn that into a Jinja chat template, set it on the tokenizer and save it next to the adapter, so
every later consumer (TRL, the evaluation, the apps) renders prompts through
``tokenizer.apply_chat_template`` and never by hand. Models that ship a template keep their own.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

PHI2_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] }}{{ '\\n\\n' }}"
    "{%- elif message['role'] == 'user' -%}Instruct: {{ message['content'] }}{{ '\\n' }}"
    "{%- elif message['role'] == 'assistant' -%}Output: {{ message['content'] }}{{ eos_token }}{{ '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}Output:{%- endif -%}"
)

# Training and evaluation send no system prompt, so neither do the apps unless the user writes one:
# the model then sees exactly the prompt format it was tuned on.
DEFAULT_SYSTEM = ""

# Text that opens a new user turn in the formats we serve; an answer that contains one has run on
# into inventing the user's next message. Used to cut answers in the apps and to penalise it in GRPO.
USER_TURN_MARKERS = ("Instruct:", "<|im_start|>user", "\nUser:", "\nHuman:")


class InputTooLong(ValueError):
    """The system prompt plus the latest message alone do not fit the context window."""


def ensure_chat_template(tokenizer):
    """Give a tokenizer without a chat template the Phi-2 one, and a pad token if it has none."""
    if not tokenizer.chat_template:
        tokenizer.chat_template = PHI2_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def cut_at_user_turn(text: str) -> tuple[str, bool]:
    """Cut ``text`` where it starts inventing a new user turn; say whether it did."""
    positions = [i for i in (text.find(m) for m in USER_TURN_MARKERS) if i >= 0]
    if not positions:
        return text, False
    return text[: min(positions)].rstrip(), True


def content_text(content: Any) -> str:
    """Plain text of a message's content: a string, or Gradio 6's list of content blocks."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return content.get("text", "") if content.get("type", "text") == "text" else ""
    if isinstance(content, (list, tuple)):
        return "".join(content_text(block) for block in content)
    return str(content)


def normalize_history(history: list[dict] | None) -> list[dict]:
    """``[{"role", "content": str}]`` from a history as Gradio's browser, its API or Streamlit send it."""
    messages = []
    for message in history or []:
        role = message.get("role")
        if role not in ("user", "assistant"):
            continue
        text = content_text(message.get("content"))
        if text.strip():
            messages.append({"role": role, "content": text})
    return messages


def build_messages(message: str, history: list[dict] | None = None, system: str | None = None) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system and system.strip() else []
    return messages + normalize_history(history) + [{"role": "user", "content": message}]


def count_tokens(tokenizer, messages: list[dict]) -> int:
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return len(ids)


def fit_to_context(tokenizer, messages: list[dict], max_input_tokens: int) -> tuple[list[dict], int]:
    """Drop whole past turns, oldest first, until the prompt fits ``max_input_tokens``.

    The system prompt and the latest user message are never cut. Returns the messages kept and the
    number of past messages dropped; raises ``InputTooLong`` when even those two do not fit.
    """
    system = [m for m in messages[:1] if m["role"] == "system"]
    past, latest = messages[len(system) : -1], messages[-1:]
    dropped = 0
    while count_tokens(tokenizer, system + past + latest) > max_input_tokens:
        if not past:
            raise InputTooLong(
                f"the message is too long: it needs more than {max_input_tokens} tokens "
                "with the system prompt; shorten it"
            )
        # A turn is a user message and the answers that follow it; drop it whole.
        cut = 1
        while cut < len(past) and past[cut]["role"] != "user":
            cut += 1
        past, dropped = past[cut:], dropped + cut
    return system + past + latest, dropped


_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCKS_MUTEX = threading.Lock()


def tokenizer_lock(tokenizer) -> threading.Lock:
    """One lock per tokenizer. A fast tokenizer keeps its padding and truncation settings as state that
    each call sets, so two threads tokenizing at once (one padding a batch, one counting a prompt) can
    pad each other's calls; every tokenizer call in the apps holds this lock."""
    with _LOCKS_MUTEX:
        lock = _LOCKS.get(tokenizer)
        if lock is None:
            lock = _LOCKS[tokenizer] = threading.Lock()
        return lock


_MARK_USER, _MARK_ANSWER, _MARK_NEXT = "q9xUSERq9x", "q9xANSWERq9x", "q9xNEXTq9x"


def turn_stops(tokenizer) -> tuple[set[int], tuple[str, ...]]:
    """What ends an answer in this tokenizer's chat template: the special token ids the template puts
    after an assistant message and before the next user message (ChatML's ``<|im_end|>`` and
    ``<|im_start|>``; Phi-2's EOS), and the plain-text user-turn marker where it is not a special token
    (Phi-2's ``Instruct:``), found by rendering a two-turn conversation."""
    cached = getattr(tokenizer, "_assistant_turn_stops", None)
    if cached is not None:
        return cached
    messages = [
        {"role": "user", "content": _MARK_USER},
        {"role": "assistant", "content": _MARK_ANSWER},
        {"role": "user", "content": _MARK_NEXT},
    ]
    with tokenizer_lock(tokenizer):
        rendered = tokenizer.apply_chat_template(messages, tokenize=False)
        between = rendered.split(_MARK_ANSWER, 1)[1].split(_MARK_NEXT, 1)[0]
        ids = tokenizer(between, add_special_tokens=False)["input_ids"]
        special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    stop_ids = {i for i in ids if i in special}
    plain = tokenizer.decode([i for i in ids if i not in special], skip_special_tokens=True)
    # "\nInstruct: " -> "Instruct:"; a role word alone ("user") is no marker: it cuts real answers.
    marker = plain.strip()
    texts = (marker,) if marker and not marker.isalpha() else ()
    tokenizer._assistant_turn_stops = stops = (stop_ids, texts)
    return stops
