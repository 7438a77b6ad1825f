"""One generation worker per model: the apps' requests that arrive while the model is busy are
generated together, one row each, in one ``generate`` call.

A request (one or more rows: a chat is one, a comparison or a battle turn two) waits in the model's
bounded queue; beyond ``max_waiting`` waiting requests a new one is refused with ``Busy``. A worker
thread, started when a request arrives and gone when the queue is empty, takes every waiting request
(up to ``max_batch`` rows) at each batch boundary and runs them as one batch: PEFT's ``adapter_names``
routes each row through its own adapter, each request's ``RowStreamer`` gets its own rows' tokens and
ends the request as soon as its rows are done (end of turn, its own ``max_new_tokens``, its stop
event), and ``_RowSampler`` gives every row its own temperature, top-p, minimum length and seeded
generator, so a row's answer does not depend on the rows it shares the batch with.

A caller waiting for its first token gets a snapshot every ``WAIT_S`` with its place in the queue
(``Answer.queued``): it sees that it waits, and a generator that reads the stream reaches a ``yield``
often enough to be closed (Gradio's Stop closes the event's generator, and cannot while it blocks).
Closing the stream, or setting its stop event, takes a waiting request out of the queue: it never runs.

Why not transformers' continuous batching (``generate_batch`` / ``ContinuousBatchingManager``)? It
packs every request's tokens into one row of one sequence (``input_ids`` of shape ``[1, tokens]``
with ``cu_seq_lens``) and its ``add_request`` takes no adapter; PEFT's ``adapter_names`` routes by
batch row, so a packed batch cannot carry one adapter per request. New requests therefore join at the
next batch boundary, not mid-batch.
"""

from __future__ import annotations

import queue
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from assistant.generation import (
    Answer,
    Busy,
    GenerationSettings,
    RowStreamer,
    _check_adapters,
    _check_settings,
    _encode,
    _lock_for,
    _routing,
    _streamer,
    eos_ids,
)

FINISHED = object()  # put on a request's channel once its rows are done
GATHER_S = 0.05  # how long an idle model waits for more requests before it starts a batch
WAIT_S = 0.25  # how often a caller with no new token gets a snapshot anyway (its place in the queue)


@dataclass(eq=False)
class Request:
    conversations: list[list[dict]]
    adapters: list[str]
    settings: list[GenerationSettings]  # one per row: a battle's two sides draw with their own seeds
    streamer: RowStreamer  # this request's rows only; its ``done`` covers the stop event
    send: Callable  # snapshots, then FINISHED or the error, to the caller
    max_batch: int = 16
    closed: bool = False

    def finish(self) -> None:
        if not self.closed:
            self.closed = True
            self.streamer.end()
            self.send(FINISHED)

    def fail(self, error: BaseException) -> None:
        if not self.closed:
            self.closed = True
            self.send(error)


class _Dispatch(BaseStreamer):
    """Hands each request its own rows of every step, and ends a request as soon as its rows are done."""

    def __init__(self, requests: list[Request]):
        self.requests = requests
        self.slices, start = [], 0
        for request in requests:
            self.slices.append(slice(start, start + len(request.adapters)))
            start += len(request.adapters)
        self.started = False

    def put(self, value: torch.Tensor) -> None:
        prompt = value.dim() > 1  # generate's first call carries the prompts
        self.started = self.started or not prompt
        for request, rows in zip(self.requests, self.slices, strict=True):
            if prompt and request.streamer.prompt_seen:
                continue  # a request run again alone after a failed batch
            if not request.closed:
                request.streamer.put(value[rows])
                if all(request.streamer.done):
                    request.finish()

    def end(self) -> None:
        for request in self.requests:
            request.finish()

    def done(self) -> list[bool]:
        rows = [[True] * len(r.adapters) if r.closed else r.streamer.done for r in self.requests]
        return [d for row in rows for d in row]


class _RowsDone(StoppingCriteria):
    def __init__(self, dispatch: _Dispatch):
        self.dispatch = dispatch

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return torch.tensor(self.dispatch.done(), dtype=torch.bool, device=input_ids.device)


def nucleus(probs: torch.Tensor, top: torch.Tensor, ids: torch.Tensor, top_p: float) -> torch.Tensor:
    """``probs`` (one row) with the tokens outside the top-p nucleus set to 0, given its most likely
    tokens ``top`` (sorted, with their ``ids``): the full sort only when they hold less than top_p."""
    if top_p >= 1:
        return probs
    top, ids = (top, ids) if top.sum() >= top_p else probs.sort(descending=True)
    kept = ids[(top.cumsum(0) - top) < top_p]  # the tokens before each hold less than top_p
    return torch.zeros_like(probs).index_copy_(0, kept, probs[kept])


class _RowSampler(LogitsProcessor):
    """Each row's own sampling, so that one ``generate`` call (run greedy) serves rows with different
    settings: a sampled row draws its token here, with its own temperature and top-p and its own
    generator seeded by its request's seed, and leaves only that token possible; a greedy row is left
    to ``generate``'s argmax. Rows under their ``min_new_tokens`` cannot end.

    The nucleus (top-p) is found among the ``TOP_K`` most likely tokens whenever they hold ``top_p`` of
    the probability, which gives the same set as sorting the whole vocabulary (what transformers'
    ``TopPLogitsWarper`` does, for each row at each step: about 25 ms a row on the shared 2-core CPU, more
    than a small model's step) and falls back to the full sort otherwise.
    """

    TOP_K = 64

    def __init__(self, settings: list[GenerationSettings], prompt_length: int, stop_ids: set[int]):
        self.settings = settings
        self.prompt_length = prompt_length
        self.stop_ids = sorted(stop_ids)
        seeds = [s.seed if s.seed is not None else random.SystemRandom().randrange(2**63) for s in settings]
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        self.sampled = [row for row, s in enumerate(settings) if s.do_sample]
        self.temperatures = torch.tensor([[settings[row].temperature] for row in self.sampled])

    def _draw(self, probs, top, ids, row: int) -> int:
        # Drawn over the whole vocabulary in its own order: the batch's rounding noise can reorder
        # near-equal probabilities in a sorted list, but it cannot move a token's place here.
        probs = nucleus(probs, top, ids, self.settings[row].top_p)
        return torch.multinomial(probs, 1, generator=self.generators[row]).item()

    @staticmethod
    def needed(settings: list[GenerationSettings]) -> bool:
        return any(s.do_sample or s.min_new_tokens for s in settings)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_length
        for row, settings in enumerate(self.settings):
            if step < settings.min_new_tokens:
                scores[row, self.stop_ids] = -float("inf")
        if not self.sampled:
            return scores
        probs = torch.softmax(scores[self.sampled].float().cpu() / self.temperatures, dim=-1)
        top, ids = probs.topk(min(self.TOP_K, probs.shape[-1]), dim=-1)
        for i, row in enumerate(self.sampled):
            scores[row] = -float("inf")
            scores[row, self._draw(probs[i], top[i], ids[i], row)] = 0.0
        return scores


class Batcher:
    """The queue and the worker of one model; ``lock`` is held around every ``generate`` on it."""

    def __init__(self, lock: threading.Lock) -> None:
        self.lock = lock
        self._mutex = threading.Lock()
        self._waiting: deque[Request] = deque()
        self._working = False

    @property
    def waiting(self) -> int:
        with self._mutex:
            return len(self._waiting)

    def place(self, request: Request) -> int:
        """The request's place in the queue (1: next to run), 0 once it runs or has ended."""
        with self._mutex:
            for place, waiting in enumerate(self._waiting, 1):
                if waiting is request:
                    return place
        return 0

    def withdraw(self, request: Request) -> None:
        """Take a stopped request out of the queue, so it never runs; one already running is left to
        its stop event, which ends its rows at the next step."""
        with self._mutex:
            if request in self._waiting:
                self._waiting.remove(request)
                request.finish()

    def submit(self, loaded, request: Request, max_waiting: int | None = None) -> None:
        with self._mutex:
            if max_waiting is not None and len(self._waiting) >= max_waiting:
                raise Busy(
                    f"the model is busy ({len(self._waiting)} requests already waiting); "
                    "try again in a moment"
                )
            self._waiting.append(request)
            if not self._working:  # the worker exits when idle, so it never keeps a model alive
                self._working = True
                threading.Thread(target=self._work, args=(loaded,), name="batcher", daemon=True).start()

    def _take(self) -> list[Request]:
        """The waiting requests that fit in one batch, oldest first; stopped ones are ended."""
        taken, rows = [], 0
        with self._mutex:
            while self._waiting:
                request = self._waiting[0]
                if request.streamer.stop is not None and request.streamer.stop.is_set():
                    self._waiting.popleft().finish()  # stopped while waiting: nothing to generate
                    continue
                limit = taken[0].max_batch if taken else request.max_batch
                if taken and rows + len(request.adapters) > limit:
                    break
                taken.append(self._waiting.popleft())
                rows += len(request.adapters)
            if not taken:
                self._working = False
        return taken

    def _work(self, loaded) -> None:
        # People who press Send at the same moment reach the queue a few milliseconds apart: waiting a
        # moment when the model was idle lets them share the first batch instead of the first one
        # running alone while the others wait for it (a batch boundary is a whole answer away).
        time.sleep(GATHER_S)
        while True:
            with self.lock:
                requests = self._take()
                if not requests:
                    return
                dispatch = _Dispatch(requests)
                try:
                    _run(loaded, dispatch)
                except BaseException as error:  # handed to the callers, who show it to the user
                    if len(requests) == 1 or dispatch.started:
                        for request in requests:
                            request.fail(error)
                        continue
                    # Failed before the first token: run each alone, so that only the bad one fails.
                    for request in requests:
                        try:
                            _run(loaded, _Dispatch([request]))
                        except BaseException as alone:
                            request.fail(alone)


def _run(loaded, dispatch: _Dispatch) -> None:
    """One ``generate`` call for every row of the dispatch's requests."""
    requests = dispatch.requests
    rows = [c for r in requests for c in r.conversations]
    adapters = [a for r in requests for a in r.adapters]
    settings = [s for r in requests for s in r.settings]
    batch = _encode(loaded, rows)
    kwargs = dict(
        **batch,
        max_new_tokens=max(s.max_new_tokens for s in settings),
        do_sample=False,  # sampled rows draw their own tokens in _RowSampler
        streamer=dispatch,
        stopping_criteria=StoppingCriteriaList([_RowsDone(dispatch)]),
        pad_token_id=loaded.tokenizer.pad_token_id,
    )
    if _RowSampler.needed(settings):
        sampler = _RowSampler(settings, batch["input_ids"].shape[1], eos_ids(loaded))
        kwargs["logits_processor"] = LogitsProcessorList([sampler])
    with _routing(loaded.model, adapters) as routing, torch.inference_mode():
        loaded.model.generate(**kwargs, **routing)
    dispatch.end()


_BATCHERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_BATCHERS_MUTEX = threading.Lock()


def batcher_for(model) -> Batcher:
    with _BATCHERS_MUTEX:
        batcher = _BATCHERS.get(model)
        if batcher is None:
            batcher = _BATCHERS[model] = Batcher(_lock_for(model))
        return batcher


def stream(
    loaded,
    conversations: Sequence[list[dict]],
    adapters: Sequence[str],
    settings: GenerationSettings | Sequence[GenerationSettings],
    stop: threading.Event | None = None,
    max_waiting: int | None = None,
    max_batch: int = 16,
) -> Iterator[list[Answer]]:
    """Generate one answer per conversation (row ``i`` through ``adapters[i]``, with ``settings`` or
    ``settings[i]``), yielding snapshots of all rows as tokens arrive; the last snapshot is final. The
    rows run in the model's batcher, in one batch with whatever other requests are waiting then (up to
    ``max_batch`` rows); beyond ``max_waiting`` waiting requests this raises ``Busy``. While the request
    waits, a snapshot every ``WAIT_S`` gives its place in the queue (``Answer.queued``).

    Closing the iterator (or setting ``stop``) stops this request's rows within one step, or takes it
    out of the queue before it starts.
    """
    if len(conversations) != len(adapters):
        raise ValueError("give one adapter name per conversation")
    rows = [settings] * len(adapters) if isinstance(settings, GenerationSettings) else list(settings)
    if len(rows) != len(adapters):
        raise ValueError("give one settings per conversation, or one for all")
    _check_adapters(loaded, adapters)
    for row in rows:
        _check_settings(row)
    stop = stop or threading.Event()
    updates: queue.Queue = queue.Queue()
    limits = [row.max_new_tokens for row in rows]
    streamer = _streamer(loaded, adapters, updates.put, limits, stop)
    request = Request(list(conversations), list(adapters), rows, streamer, updates.put, max_batch)
    batcher = batcher_for(loaded.model)
    batcher.submit(loaded, request, max_waiting)
    shown = None
    try:
        while True:
            try:
                item = updates.get(timeout=WAIT_S)
            except queue.Empty:
                if stop.is_set():
                    batcher.withdraw(request)  # stopped while waiting: it never runs
                place = batcher.place(request)
                if place:  # a running request's next token is one step away: no need to wake its reader
                    yield [replace(answer, queued=place) for answer in streamer.snapshot()]
                continue
            while item is not FINISHED and not isinstance(item, BaseException):
                try:  # a slow reader gets the newest snapshot, not a backlog
                    item = updates.get_nowait()
                except queue.Empty:
                    break
            if isinstance(item, BaseException):
                raise item
            snapshot = streamer.snapshot() if item is FINISHED else item
            if snapshot != shown:
                shown = snapshot
                yield snapshot
            if item is FINISHED:
                return
    finally:
        stop.set()
        batcher.withdraw(request)
