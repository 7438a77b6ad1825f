"""What every generation on the one shared model shares: the settings and answers, the request checks,
the per-model lock, encoding, adapter routing and the streamer that turns tokens into answers.

Every request names its own adapter routing (``"__base__"`` or the adapter's name, one per row). The
apps' requests, and evaluation's, go to the serving engine (``assistant.engine.stream``): they share one
running batch, one row each. ``generate`` here is transformers' ``generate`` on a fixed batch, under
the same per-model lock: the tests' oracle (each request alone) and ``benchmarks/side_by_side.py``'s
baseline. Under the lock, a mixed batch is routed by PEFT's ``adapter_names`` (which installs hooks on
the shared layers for the call), and a batch through one adapter sets that state on the model for the
call, so no request depends on state another left.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from assistant.prompt import tokenizer_lock, turn_stops

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch


class RequestError(ValueError):
    """A request the app refuses, with a message meant for the user."""


class Busy(RequestError):
    """Too many requests are already waiting for the model."""


class GenerationFailed(RequestError):
    """The engine failed on this request (out of memory, say): the request ends with this one line,
    shown as a warning, and the engine goes on serving the others."""


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 256
    temperature: float = 0.7  # 0 means greedy
    top_p: float = 0.95
    seed: int | None = 0
    min_new_tokens: int = 0  # forces fixed lengths for benchmarks
    # The decoding knobs a skeptic tries first against loops (off by default): transformers' repetition
    # penalty and n-gram ban over the row's own tokens, both sparing the end-of-turn tokens (the engine's)
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0

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
    queued: int = field(default=0, compare=False)  # its place in the queue while it waits, else 0

    def at_limit(self, max_new_tokens: int) -> bool:
        """Whether the answer stopped at the token limit rather than where the model ended it."""
        return self.done and not self.ended and not self.cut and self.tokens >= max_new_tokens


# --- one lock per model (the batcher holds it too) -------------------------------------------------------------------------


_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCKS_MUTEX = threading.Lock()


def lock_for(model) -> threading.Lock:
    with _LOCKS_MUTEX:
        return _LOCKS.setdefault(model, threading.Lock())


def model_lock(loaded) -> threading.Lock:
    """The lock every ``generate`` on this model runs under: the batcher's and the offline callers'."""
    return lock_for(loaded.model)


# --- adapters -------------------------------------------------------------------------------------


def tuned_adapter(loaded) -> str | None:
    """The name of the adapter on the model (PEFT's ``"default"``), or None when it has none."""
    if not hasattr(loaded.model, "peft_config"):
        return None
    active = loaded.model.active_adapter
    return active[0] if isinstance(active, (list, tuple)) else active


def check_adapters(loaded, adapters: Sequence[str]) -> None:
    available = {BASE} | set(getattr(loaded.model, "peft_config", {}) or {})
    for name in set(adapters) - available:
        if name != BASE and len(available) == 1:
            raise RequestError(f"{loaded.name} has no adapter, so there is no tuned model to use; load one")
        raise RequestError(f"unknown adapter {name!r}; this model has {sorted(available)}")


# --- streaming ------------------------------------------------------------------------------------


class RowStreamer(BaseStreamer):
    """Decodes every row of a batch as it grows; ``put()`` gets one token id per row per step.

    (transformers' ``TextIteratorStreamer`` takes batch size 1 only.) A row is done at a token that
    ends the assistant's turn (``stop_ids``), where its text starts a new user turn in a template whose
    turn marker is plain text (``cut_texts``, e.g. Phi-2's ``Instruct:``), at its own ``limit`` of new
    tokens, or once ``stop`` is set; ``snapshot()`` gives the answers so far.
    """

    def __init__(
        self, tokenizer, adapters, stop_ids: set[int], on_step=None, cut_texts=(), limit=None, stop=None
    ):
        self.tokenizer = tokenizer
        self.adapters = list(adapters)
        self.eos_ids = stop_ids
        self.cut_texts = tuple(cut_texts)
        self.on_step = on_step
        self.limit = limit  # this request's max_new_tokens (one, or one per row), in a longer batch
        self.stop = stop
        size = len(self.adapters)
        self.tokens: list[list[int]] = [[] for _ in range(size)]
        self.texts = [""] * size
        self.ended = [False] * size
        self.cut = [False] * size
        self.finished = False
        self.prompt_seen = False

    def row_done(self, row: int) -> bool:
        limit = self.limit[row] if isinstance(self.limit, (list, tuple)) else self.limit
        full = limit is not None and len(self.tokens[row]) >= limit
        stopped = self.stop is not None and self.stop.is_set()
        return self.ended[row] or self.cut[row] or full or stopped

    @property
    def done(self) -> list[bool]:
        return [self.row_done(row) for row in range(len(self.adapters))]

    def put(self, value: torch.Tensor) -> None:
        """``generate``'s streamer call: the prompt first, then one token per row per step."""
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.add(value.reshape(-1).tolist())

    def add(self, tokens: list[int]) -> None:
        """One new token per row (a row that is done ignores its own)."""
        for row, token in enumerate(tokens):
            if self.row_done(row):
                continue  # generate pads finished rows; those tokens are not the answer's
            if token in self.eos_ids:
                self.ended[row] = True
                continue
            self.tokens[row].append(token)
            with tokenizer_lock(self.tokenizer):
                text = self.tokenizer.decode(self.tokens[row], skip_special_tokens=True)
            cuts = [i for i in (text.find(m) for m in self.cut_texts) if i >= 0]
            self.texts[row], self.cut[row] = (text[: min(cuts)].rstrip(), True) if cuts else (text, False)
        if self.on_step is not None:
            self.on_step(self.snapshot())

    def end(self) -> None:
        self.finished = True
        if self.on_step is not None:
            self.on_step(self.snapshot())

    def snapshot(self) -> list[Answer]:
        answers = []
        for row, adapter in enumerate(self.adapters):
            done = self.finished or self.row_done(row)
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
    """Every token id that ends an answer: the generation config's, the tokenizer's, the template's."""
    ids = loaded.model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
    if loaded.tokenizer.eos_token_id is not None:
        ids.add(loaded.tokenizer.eos_token_id)
    return ids | turn_stops(loaded.tokenizer)[0]


def row_streamer(loaded, adapters, on_step=None, limit=None, stop=None) -> RowStreamer:
    cut_texts = turn_stops(loaded.tokenizer)[1]
    return RowStreamer(loaded.tokenizer, adapters, eos_ids(loaded), on_step, cut_texts, limit, stop)


def encode(loaded, conversations: Sequence[list[dict]]):
    tokenizer = loaded.tokenizer
    with tokenizer_lock(tokenizer):
        texts = [
            tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
            for c in conversations
        ]
        # Left padding keeps every row's last prompt token next to its first generated one.
        tokenizer.padding_side = "left"
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return batch.to(loaded.model.device)


@contextmanager
def routing(model, adapters: Sequence[str]):
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


def _generate(loaded, conversations, adapters, settings, streamer, stop) -> None:
    """One ``generate`` call for all rows with one set of settings, under the model's lock (offline
    batches: the seed is global, as evaluation has always drawn its samples)."""
    check_adapters(loaded, adapters)
    batch = encode(loaded, conversations)
    with model_lock(loaded):
        if settings.seed is not None:
            torch.manual_seed(settings.seed)
        kwargs = dict(
            **batch,
            **settings.generate_kwargs(),
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([_StopWhen(stop, streamer)]),
            pad_token_id=loaded.tokenizer.pad_token_id,
        )
        with routing(loaded.model, adapters) as routed, torch.inference_mode():
            loaded.model.generate(**kwargs, **routed)


def check_settings(settings: GenerationSettings) -> None:
    if settings.max_new_tokens < 1 or settings.min_new_tokens < 0:
        raise RequestError(f"max new tokens must be at least 1, not {settings.max_new_tokens}")
    if settings.do_sample and not 0 < settings.top_p <= 1:
        raise RequestError(f"top-p must be above 0 and at most 1, not {settings.top_p}")
    if settings.repetition_penalty <= 0 or settings.no_repeat_ngram_size < 0:
        raise RequestError(
            f"the repetition penalty must be above 0 (1 = off), not {settings.repetition_penalty}; "
            f"the n-gram size at least 0 (0 = off), not {settings.no_repeat_ngram_size}"
        )


def generate(
    loaded,
    conversations: Sequence[list[dict]],
    adapters: Sequence[str],
    settings: GenerationSettings,
    batch_size: int | None = None,
) -> list[Answer]:
    """The final answers of transformers' ``generate``, in batches of ``batch_size`` rows (default: all):
    the tests' oracle for the engine (``assistant.engine.stream``), which the apps and evaluation use."""
    if len(conversations) != len(adapters):
        raise ValueError("give one adapter name per conversation")
    batch_size = batch_size or max(1, len(conversations))
    answers: list[Answer] = []
    for start in range(0, len(conversations), batch_size):
        rows = slice(start, start + batch_size)
        streamer = row_streamer(loaded, adapters[rows])
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


__all__ = [
    "BASE",
    "Answer",
    "Busy",
    "GenerationFailed",
    "GenerationSettings",
    "RequestError",
    "RowStreamer",
    "eos_ids",
    "generate",
    "generate_side_by_side",
    "generate_texts",
    "model_lock",
    "tokenizer_lock",
    "tuned_adapter",
]
