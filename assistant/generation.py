"""Generation on the one shared model: streaming, base-vs-tuned side by side, stopping and locking.

Every request names its own adapter routing (``"__base__"`` or the adapter's name, one per row) and
one lock per model lets a single ``generate`` run at a time: under the lock, a mixed batch is routed by
PEFT's ``adapter_names`` (which installs hooks on the shared layers for the call), and a batch through
one adapter sets that state on the model for the call, so no request depends on state another left.
A streamed request runs ``generate`` in a thread of its own that holds the lock; the caller reads
snapshots from a queue, and stopping (or abandoning) the stream sets an event that a
``StoppingCriteria`` checks at every step, so the model itself stops.
"""

from __future__ import annotations

import os
import queue
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from assistant.prompt import InputTooLong, build_messages, cut_at_user_turn, fit_to_context

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch


class RequestError(ValueError):
    """A request the app refuses, with a message meant for the user."""


class Busy(RequestError):
    """Too many requests are already waiting for the model."""


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 256
    temperature: float = 0.7  # 0 means greedy
    top_p: float = 0.95
    seed: int | None = 0
    min_new_tokens: int = 0  # forces fixed lengths for benchmarks

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0

    def generate_kwargs(self) -> dict:
        kwargs = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample}
        if self.min_new_tokens:
            kwargs["min_new_tokens"] = self.min_new_tokens
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
        return kwargs


@dataclass(frozen=True)
class Answer:
    """One generated answer (or a snapshot of one while it streams)."""

    text: str
    ended: bool  # the model closed it itself (EOS)
    cut: bool  # it ran on into a new user turn and was cut there
    tokens: int  # tokens generated, up to the end or the cut
    adapter: str  # BASE or the adapter's name
    done: bool = True  # False for a snapshot of a row still being generated


@dataclass(frozen=True)
class Limits:
    """What the apps accept. Each can be set by an environment variable (see ``from_env``)."""

    max_message_chars: int = 8000
    max_input_tokens: int = 1536
    max_new_tokens: int = 512
    max_waiting: int = 16

    @classmethod
    def from_env(cls) -> Limits:
        names = {
            "max_message_chars": "ASSISTANT_MAX_MESSAGE_CHARS",
            "max_input_tokens": "ASSISTANT_MAX_INPUT_TOKENS",
            "max_new_tokens": "ASSISTANT_MAX_NEW_TOKENS",
            "max_waiting": "ASSISTANT_MAX_QUEUE",
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


# --- one lock per model -------------------------------------------------------------------------


class _Gate:
    """The lock around ``generate`` on one model, and a count of the requests waiting for it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._mutex = threading.Lock()
        self.waiting = 0

    @contextmanager
    def hold(self, max_waiting: int | None = None):
        with self._mutex:
            if max_waiting is not None and self.waiting >= max_waiting:
                raise Busy(f"the model is busy ({self.waiting} requests waiting); try again in a moment")
            self.waiting += 1
        try:
            self.lock.acquire()
        finally:
            with self._mutex:
                self.waiting -= 1
        try:
            yield
        finally:
            self.lock.release()


_GATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_GATES_MUTEX = threading.Lock()


def _gate(model) -> _Gate:
    with _GATES_MUTEX:
        gate = _GATES.get(model)
        if gate is None:
            gate = _GATES[model] = _Gate()
        return gate


def model_lock(loaded) -> threading.Lock:
    """The lock every ``generate`` on this model runs under (for callers that generate themselves)."""
    return _gate(loaded.model).lock


# --- adapters -------------------------------------------------------------------------------------


def tuned_adapter(loaded) -> str | None:
    """The name of the adapter on the model (PEFT's ``"default"``), or None when it has none."""
    if not hasattr(loaded.model, "peft_config"):
        return None
    active = loaded.model.active_adapter
    return active[0] if isinstance(active, (list, tuple)) else active


def _check_adapters(loaded, adapters: Sequence[str]) -> None:
    available = {BASE} | set(getattr(loaded.model, "peft_config", {}) or {})
    for name in set(adapters) - available:
        if name != BASE and len(available) == 1:
            raise RequestError(f"{loaded.name} has no adapter, so there is no tuned model to use; load one")
        raise RequestError(f"unknown adapter {name!r}; this model has {sorted(available)}")


# --- streaming ------------------------------------------------------------------------------------


class RowStreamer(BaseStreamer):
    """Decodes every row of a batch as it grows; ``put()`` gets one token id per row per step.

    (transformers' ``TextIteratorStreamer`` takes batch size 1 only.) A row is done at EOS or where
    its text starts a new user turn; ``snapshot()`` gives the answers so far.
    """

    def __init__(self, tokenizer, adapters: Sequence[str], eos_ids: set[int], on_step=None):
        self.tokenizer = tokenizer
        self.adapters = list(adapters)
        self.eos_ids = eos_ids
        self.on_step = on_step
        size = len(self.adapters)
        self.tokens: list[list[int]] = [[] for _ in range(size)]
        self.texts = [""] * size
        self.ended = [False] * size
        self.cut = [False] * size
        self.finished = False
        self._prompt_seen = False

    @property
    def done(self) -> list[bool]:
        return [e or c for e, c in zip(self.ended, self.cut, strict=True)]

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate's first call carries the prompt
            self._prompt_seen = True
            return
        for row, token in enumerate(value.reshape(-1).tolist()):
            if self.ended[row] or self.cut[row]:
                continue  # generate pads finished rows; those tokens are not the answer's
            if token in self.eos_ids:
                self.ended[row] = True
                continue
            self.tokens[row].append(token)
            text = self.tokenizer.decode(self.tokens[row], skip_special_tokens=True)
            self.texts[row], self.cut[row] = cut_at_user_turn(text)
        if self.on_step is not None:
            self.on_step(self.snapshot())

    def end(self) -> None:
        self.finished = True
        if self.on_step is not None:
            self.on_step(self.snapshot())

    def snapshot(self) -> list[Answer]:
        answers = []
        for row, adapter in enumerate(self.adapters):
            done = self.finished or self.ended[row] or self.cut[row]
            # A multi-byte character arrives over several tokens: hide its head until it is whole.
            text = self.texts[row] if done else self.texts[row].rstrip("\ufffd")
            answers.append(
                Answer(text.strip(), self.ended[row], self.cut[row], len(self.tokens[row]), adapter, done)
            )
        return answers


class _StopWhen(StoppingCriteria):
    """Stops every row once ``stop`` is set, and each row the streamer has seen finish."""

    def __init__(self, stop: threading.Event, streamer: RowStreamer):
        self.stop = stop
        self.streamer = streamer

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        if self.stop.is_set():
            return torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        return torch.tensor(self.streamer.done, dtype=torch.bool, device=input_ids.device)


def eos_ids(loaded) -> set[int]:
    """Every token id that ends an answer: the generation config's and the tokenizer's."""
    ids = loaded.model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
    if loaded.tokenizer.eos_token_id is not None:
        ids.add(loaded.tokenizer.eos_token_id)
    return ids


def _encode(loaded, conversations: Sequence[list[dict]]):
    tokenizer = loaded.tokenizer
    texts = [
        tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations
    ]
    # Left padding keeps every row's last prompt token next to its first generated one.
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return batch.to(loaded.model.device)


@contextmanager
def _routing(model, adapters: Sequence[str]):
    """Route this batch through the adapters it names; the caller holds the model's lock.

    A mixed batch passes PEFT's ``adapter_names``. A batch through one adapter (or none) sets that state
    on the model for the call instead, whatever an earlier caller left: ``adapter_names`` costs about
    8% of a generation on the CPU (measured, benchmarks/streaming.py) for routing nothing.
    """
    names = set(adapters)
    if not hasattr(model, "peft_config"):
        yield {}
    elif len(names) > 1:
        yield {"adapter_names": list(adapters)}
    elif names == {BASE}:
        with model.disable_adapter():
            yield {}
    else:
        model.base_model.enable_adapter_layers()
        (name,) = names
        if model.active_adapter != name:
            model.set_adapter(name)
        yield {}


def _generate(loaded, conversations, adapters, settings, streamer, stop, max_waiting=None) -> None:
    """One ``generate`` call for all rows, under the model's lock."""
    _check_adapters(loaded, adapters)
    batch = _encode(loaded, conversations)
    with _gate(loaded.model).hold(max_waiting):
        if stop.is_set():  # stopped while waiting for the lock
            streamer.end()
            return
        if settings.seed is not None:
            torch.manual_seed(settings.seed)
        kwargs = dict(
            **batch,
            **settings.generate_kwargs(),
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([_StopWhen(stop, streamer)]),
            pad_token_id=loaded.tokenizer.pad_token_id,
        )
        with _routing(loaded.model, adapters) as routing, torch.inference_mode():
            loaded.model.generate(**kwargs, **routing)


def stream(
    loaded,
    conversations: Sequence[list[dict]],
    adapters: Sequence[str],
    settings: GenerationSettings,
    stop: threading.Event | None = None,
    max_waiting: int | None = None,
) -> Iterator[list[Answer]]:
    """Generate one answer per conversation (row ``i`` through ``adapters[i]``) in one batch, yielding
    snapshots of all rows as tokens arrive; the last snapshot is final.

    Closing the iterator (or setting ``stop``) stops the generation itself within one step.
    """
    if len(conversations) != len(adapters):
        raise ValueError("give one adapter name per conversation")
    stop = stop or threading.Event()
    updates: queue.Queue = queue.Queue()
    streamer = RowStreamer(loaded.tokenizer, adapters, eos_ids(loaded), on_step=updates.put)
    finished = object()

    def work() -> None:
        try:
            _generate(loaded, conversations, adapters, settings, streamer, stop, max_waiting)
            updates.put(finished)
        except BaseException as error:  # handed to the caller, who shows it to the user
            updates.put(error)

    threading.Thread(target=work, name="generate", daemon=True).start()
    shown = None
    try:
        while True:
            item = updates.get()
            while item is not finished and not isinstance(item, BaseException):
                try:  # a slow reader gets the newest snapshot, not a backlog
                    item = updates.get_nowait()
                except queue.Empty:
                    break
            if isinstance(item, BaseException):
                raise item
            snapshot = streamer.snapshot() if item is finished else item
            if snapshot != shown:
                shown = snapshot
                yield snapshot
            if item is finished:
                return
    finally:
        stop.set()


def generate(
    loaded,
    conversations: Sequence[list[dict]],
    adapters: Sequence[str],
    settings: GenerationSettings,
    batch_size: int | None = None,
) -> list[Answer]:
    """Like ``stream`` but returns the final answers, in batches of ``batch_size`` rows (default: all)."""
    if len(conversations) != len(adapters):
        raise ValueError("give one adapter name per conversation")
    batch_size = batch_size or max(1, len(conversations))
    answers: list[Answer] = []
    for start in range(0, len(conversations), batch_size):
        rows = slice(start, start + batch_size)
        streamer = RowStreamer(loaded.tokenizer, adapters[rows], eos_ids(loaded))
        _generate(loaded, conversations[rows], adapters[rows], settings, streamer, threading.Event())
        streamer.finished = True
        answers += streamer.snapshot()
    return answers


def generate_texts(
    loaded,
    conversations: Sequence[list[dict]],
    settings: GenerationSettings,
    adapter: str | None = None,
    batch_size: int | None = 8,
) -> list[Answer]:
    """One answer per conversation through ``adapter`` (default: the tuned adapter, else the base)."""
    adapter = adapter or tuned_adapter(loaded) or BASE
    return generate(loaded, conversations, [adapter] * len(conversations), settings, batch_size)


def generate_side_by_side(
    loaded,
    conversations: Sequence[list[dict]],
    settings: GenerationSettings,
    batch_size: int | None = 8,
) -> list[tuple[Answer, Answer]]:
    """(base, tuned) answers per conversation, both rows of each pair in the same batched ``generate``
    from one copy of the weights, with the same settings and seed."""
    tuned = tuned_adapter(loaded)
    if tuned is None:
        raise RequestError(
            f"{loaded.name} has no adapter, so there is no tuned model to compare with the base"
        )
    rows = [c for c in conversations for _ in range(2)]
    adapters = [BASE, tuned] * len(conversations)
    batch_size = 2 * batch_size if batch_size else None
    answers = generate(loaded, rows, adapters, settings, batch_size)
    return [(answers[i], answers[i + 1]) for i in range(0, len(answers), 2)]


# --- what the apps call ---------------------------------------------------------------------------


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


def _short(name: str) -> str:
    path = Path(name)
    return path.name if path.is_absolute() or path.is_dir() else name


class Assistant:
    """The apps' view of the model: checks requests against the limits, then streams answers."""

    def __init__(self, loaded, limits: Limits | None = None):
        self.loaded = loaded
        self.limits = limits or Limits.from_env()
        self.tuned = tuned_adapter(loaded)

    @property
    def chat_adapter(self) -> str:
        return self.tuned or BASE

    @property
    def base_name(self) -> str:
        """Display name of the base model (a local folder by its last part)."""
        return f"{_short(self.loaded.base)} (base)"

    @property
    def tuned_name(self) -> str:
        if not self.tuned:
            return "no adapter loaded"
        return f"{_short(self.loaded.base)} + {_short(self.loaded.adapter)} (tuned)"

    @property
    def context_window(self) -> int | None:
        return getattr(self.loaded.model.config, "max_position_embeddings", None)

    def settings(self, temperature=0.7, top_p=0.95, max_new_tokens=256, seed=0) -> GenerationSettings:
        """Settings from UI or API values, checked against the limits."""
        try:
            temperature, top_p, max_new_tokens = float(temperature), float(top_p), int(max_new_tokens)
            seed = None if seed is None or seed == "" else int(seed)
        except (TypeError, ValueError):
            raise RequestError(
                "temperature and top-p must be numbers, max new tokens and seed whole numbers"
            ) from None
        if not 0 <= temperature <= 2:
            raise RequestError(f"temperature must be between 0 and 2, not {temperature}")
        if not 0 < top_p <= 1:
            raise RequestError(f"top-p must be above 0 and at most 1, not {top_p}")
        if not 1 <= max_new_tokens <= self.limits.max_new_tokens:
            raise RequestError(
                f"max new tokens must be between 1 and {self.limits.max_new_tokens}, not {max_new_tokens}"
            )
        return GenerationSettings(max_new_tokens, temperature, top_p, seed)

    def prepare(
        self, message, history=None, system=None, settings: GenerationSettings | None = None
    ) -> Prepared:
        settings = settings or GenerationSettings(max_new_tokens=min(256, self.limits.max_new_tokens))
        message = message if isinstance(message, str) else ""
        if not message.strip():
            raise RequestError("the message is empty: type a question first")
        if len(message) > self.limits.max_message_chars:
            raise RequestError(
                f"the message is too long ({len(message):,} characters; at most "
                f"{self.limits.max_message_chars:,}): shorten it"
            )
        budget = self.limits.max_input_tokens
        if self.context_window:
            budget = min(budget, self.context_window - settings.max_new_tokens)
        try:
            messages, dropped = fit_to_context(
                self.loaded.tokenizer, build_messages(message, history, system), budget
            )
        except InputTooLong as error:
            raise RequestError(str(error)) from None
        return Prepared(messages, dropped, settings)

    def chat(self, prepared: Prepared, stop: threading.Event | None = None) -> Iterator[Answer]:
        """The answer of the tuned model (or the base when there is none), as it grows."""
        rows = stream(
            self.loaded,
            [prepared.messages],
            [self.chat_adapter],
            prepared.settings,
            stop,
            self.limits.max_waiting,
        )
        with closing(rows):  # closing this generator closes the stream, which stops generate
            for (answer,) in rows:
                yield answer

    def compare(
        self, prepared: Prepared, stop: threading.Event | None = None
    ) -> Iterator[tuple[Answer, Answer]]:
        """(base, tuned) answers to the same prompt, as they grow, from one batched generation."""
        if self.tuned is None:
            raise RequestError(
                f"{self.loaded.name} has no adapter, so there is nothing to compare the base with; "
                "set ASSISTANT_ADAPTER"
            )
        rows = stream(
            self.loaded,
            [prepared.messages, prepared.messages],
            [BASE, self.tuned],
            prepared.settings,
            stop,
            self.limits.max_waiting,
        )
        with closing(rows):
            yield from (tuple(pair) for pair in rows)


__all__ = [
    "BASE",
    "Answer",
    "Assistant",
    "Busy",
    "GenerationSettings",
    "Limits",
    "Prepared",
    "RequestError",
    "RowStreamer",
    "generate",
    "generate_side_by_side",
    "generate_texts",
    "model_lock",
    "stream",
    "tuned_adapter",
]
