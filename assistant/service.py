"""What the apps call: requests checked against the limits, then streamed from the served models.

The served models are the base and every adapter on it, by their short names (``Assistant.models``);
each request names the model that answers, and two models can answer side by side in one batch.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass

from assistant.engine import stream
from assistant.generation import BASE, Answer, GenerationSettings, RequestError
from assistant.memory import fit_batch_to_gpu
from assistant.prompt import InputTooLong, build_messages, fit_to_context, tokenizer_lock

DEFAULTS = GenerationSettings()  # the one place for the sampling defaults the apps start from


@dataclass(frozen=True)
class Limits:
    """What the apps accept. Each can be set by an environment variable (see ``from_env``)."""

    max_message_chars: int = 8000  # FastChat's arena takes 12,000; these models read far less
    max_input_tokens: int = 1536
    max_new_tokens: int = 512
    max_waiting: int = 16  # requests waiting for the model beyond the batch it is running
    max_batch: int = 16  # rows generated together (a chat is one row, a battle or comparison two)
    max_turns: int = 50  # per battle, as FastChat's arena
    # A battle left this long without a turn or a vote is forgotten (its memory freed); asking or voting
    # on it then says so. Half an hour covers reading two long answers; votes are kept, not battles.
    battle_idle_seconds: int = 1800

    @classmethod
    def from_env(cls) -> Limits:
        names = {
            "max_message_chars": "ASSISTANT_MAX_MESSAGE_CHARS",
            "max_input_tokens": "ASSISTANT_MAX_INPUT_TOKENS",
            "max_new_tokens": "ASSISTANT_MAX_NEW_TOKENS",
            "max_waiting": "ASSISTANT_MAX_QUEUE",
            "max_batch": "ASSISTANT_MAX_BATCH",
            "battle_idle_seconds": "ASSISTANT_BATTLE_IDLE_SECONDS",
        }
        values = {}
        for field_name, env in names.items():
            raw = os.environ.get(env)
            if raw:
                try:
                    values[field_name] = int(raw)
                    if values[field_name] < 1:
                        raise ValueError
                except ValueError:
                    raise RequestError(
                        f"{env}={raw!r} is not a positive whole number; fix or unset it"
                    ) from None
        return cls(**values)


@dataclass(frozen=True)
class Prepared:
    messages: list[dict]
    dropped: int  # past messages dropped to fit the context window
    settings: GenerationSettings

    @property
    def notice(self) -> str | None:
        if not self.dropped:
            return None
        return (
            f"The conversation is longer than the model can read: the oldest {self.dropped} "
            "messages were left out of this answer."
        )


class Assistant:
    """The apps' view of the served models: checks requests against the limits, then streams answers."""

    def __init__(self, loaded, limits: Limits | None = None):
        self.loaded = loaded
        # The batch the card's free memory holds (assistant.memory): a T4 cannot hold 16 full rows.
        self.limits = fit_batch_to_gpu(loaded, limits or Limits.from_env())
        self.base_name = loaded.base_name
        self._routes = {self.base_name: BASE, **loaded.adapters}
        self.models = list(self._routes)  # the base first, then the adapters in load order
        self.tuned_name = next(iter(loaded.adapters), None)  # the first adapter: what Chat talks to

    @property
    def chat_model(self) -> str:
        return self.tuned_name or self.base_name

    def route(self, model: str | None) -> str:
        """The PEFT routing of a served model's name (``None``: the chat model)."""
        model = model or self.chat_model
        if model not in self._routes:
            raise RequestError(f"unknown model {model!r}; this app serves {', '.join(self.models)}")
        return self._routes[model]

    @property
    def context_window(self) -> int | None:
        return getattr(self.loaded.model.config, "max_position_embeddings", None)

    def settings(
        self,
        temperature=DEFAULTS.temperature,
        top_p=DEFAULTS.top_p,
        max_new_tokens=DEFAULTS.max_new_tokens,
        seed=DEFAULTS.seed,
        repetition_penalty=DEFAULTS.repetition_penalty,
    ) -> GenerationSettings:
        """Settings from UI or API values, checked against the limits."""
        try:
            temperature, top_p, max_new_tokens = float(temperature), float(top_p), int(max_new_tokens)
            seed = None if seed is None or seed == "" else int(seed)
            repetition_penalty = float(repetition_penalty)
        except (TypeError, ValueError):
            raise RequestError(
                "temperature, top-p and the repetition penalty must be numbers, max new tokens and seed "
                "whole numbers"
            ) from None
        if not 1 <= repetition_penalty <= 2:
            raise RequestError(
                f"the repetition penalty must be between 1 (off) and 2, not {repetition_penalty}"
            )
        if not 0 <= temperature <= 2:
            raise RequestError(f"temperature must be between 0 and 2, not {temperature}")
        if not 0 < top_p <= 1:
            raise RequestError(f"top-p must be above 0 and at most 1, not {top_p}")
        if not 1 <= max_new_tokens <= self.limits.max_new_tokens:
            raise RequestError(
                f"max new tokens must be between 1 and {self.limits.max_new_tokens}, not {max_new_tokens}"
            )
        return GenerationSettings(
            max_new_tokens, temperature, top_p, seed, repetition_penalty=repetition_penalty
        )

    @property
    def default_max_new_tokens(self) -> int:
        return min(DEFAULTS.max_new_tokens, self.limits.max_new_tokens)

    def prepare(
        self, message, history=None, system=None, settings: GenerationSettings | None = None
    ) -> Prepared:
        settings = settings or GenerationSettings(max_new_tokens=self.default_max_new_tokens)
        message = message if isinstance(message, str) else ""
        if not message.strip():
            raise RequestError("the message is empty: type a question first")
        if len(message) > self.limits.max_message_chars:
            raise RequestError(
                f"the message is too long ({len(message):,} characters; at most "
                f"{self.limits.max_message_chars:,}): shorten it"
            )
        if history is not None and not isinstance(history, (list, tuple)):
            raise RequestError("the history must be a list of {role, content} messages")
        budget = self.limits.max_input_tokens
        if self.context_window:
            budget = min(budget, self.context_window - settings.max_new_tokens)
        try:
            with tokenizer_lock(self.loaded.tokenizer):
                messages, dropped = fit_to_context(
                    self.loaded.tokenizer, build_messages(message, history, system), budget
                )
        except InputTooLong as error:
            raise RequestError(str(error)) from None
        except (AttributeError, TypeError):
            raise RequestError("the history must be a list of {role, content} messages") from None
        return Prepared(messages, dropped, settings)

    def side_by_side(
        self, prepared: Sequence[Prepared], models: Sequence[str], stop: threading.Event | None = None
    ) -> Iterator[tuple[Answer, ...]]:
        """One answer per (prepared, model), as they grow, from one batched generation, each row with its
        own prepared settings (and seed); other people's requests may share the batch."""
        routes = [self.route(m) for m in models]
        rows = stream(
            self.loaded,
            [p.messages for p in prepared],
            routes,
            [p.settings for p in prepared],
            stop,
            self.limits.max_waiting,
            self.limits.max_batch,
        )
        with closing(rows):  # closing this generator closes the stream, which stops generate
            yield from (tuple(r) for r in rows)

    def chat(
        self, prepared: Prepared, model: str | None = None, stop: threading.Event | None = None
    ) -> Iterator[Answer]:
        """The answer of ``model`` (default: the first adapter, else the base), as it grows."""
        with closing(self.side_by_side([prepared], [model or self.chat_model], stop)) as rows:
            for (answer,) in rows:
                yield answer

    def compare(
        self, prepared: Prepared, stop: threading.Event | None = None
    ) -> Iterator[tuple[Answer, Answer]]:
        """(base, tuned) answers to the same prompt, as they grow, from one batched generation."""
        if self.tuned_name is None:
            raise RequestError(
                f"{self.base_name} is served without an adapter, so there is nothing to compare the "
                "base with; set ASSISTANT_ADAPTERS"
            )
        yield from self.side_by_side([prepared, prepared], [self.base_name, self.tuned_name], stop)
