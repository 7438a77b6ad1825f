"""One generation worker per model: the apps' requests share one running batch, one row each, and a
request that arrives while the batch runs joins it at the next token.

A request (one or more rows: a chat is one, a comparison or a battle turn two) waits in the model's
bounded queue; beyond ``max_waiting`` waiting requests a new one is refused with ``Busy``. A worker
thread, started when a request arrives and gone when nothing runs or waits, holds the model's lock while
the batch runs, and before every decoding step takes the waiting requests that fit (up to
``max_batch`` rows), prefills each by itself (its first token comes from that prefill) and adds its
rows to the running batch (``assistant.decode``). PEFT's ``adapter_names`` routes each row through its
own adapter at every step, each row picks its own tokens (its temperature, top-p, minimum length and
seeded generator), and each request's ``RowStreamer`` gets its own rows' tokens and ends the request as
soon as its rows are done (end of turn, its own ``max_new_tokens``, its stop event); done rows leave the
batch at once. So a row's answer does not depend on the rows it shares the batch with, nor on when it
joined.

A caller waiting for its first token gets a snapshot every ``WAIT_S`` with its place in the queue
(``Answer.queued``): it sees that it waits, and a generator that reads the stream reaches a ``yield``
often enough to be closed (Gradio's Stop closes the event's generator, and cannot while it blocks).
Closing the stream, or setting its stop event, takes a waiting request out of the queue: it never runs.

Why a decode loop of our own rather than ``generate``, or transformers' continuous batching
(``generate_batch`` / ``ContinuousBatchingManager``)? ``generate`` runs a fixed batch to its end, so a
request arriving meanwhile would wait a whole answer. Continuous batching packs every request's tokens
into one row of one sequence (``input_ids`` of shape ``[1, tokens]`` with ``cu_seq_lens``) and its
``add_request`` takes no adapter; PEFT's ``adapter_names`` routes by batch row, so a packed batch cannot
carry one adapter per request. Our loop keeps one batch row per answer, so it can.
"""

from __future__ import annotations

import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import torch

from assistant.decode import Running, nucleus
from assistant.generation import (
    Answer,
    Busy,
    GenerationSettings,
    RowStreamer,
    _check_adapters,
    _check_settings,
    _lock_for,
    _streamer,
    eos_ids,
)

__all__ = ["Busy", "Request", "batcher_for", "nucleus", "stream"]

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


class Batcher:
    """The queue and the worker of one model; ``lock`` is held while a batch runs (offline ``generate``
    calls on the model wait for it)."""

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

    def _take(self, running: list[Request]) -> list[Request]:
        """The waiting requests that fit beside the ``running`` ones (``max_batch`` rows in all; a
        request alone always fits), oldest first; stopped ones are ended. With nothing running and
        nothing taken, the worker is done (under the mutex, so a new request starts a new worker)."""
        taken, rows = [], sum(len(r.adapters) for r in running)
        limit = min((r.max_batch for r in running), default=None)
        with self._mutex:
            while self._waiting:
                request = self._waiting[0]
                if request.streamer.stop is not None and request.streamer.stop.is_set():
                    self._waiting.popleft().finish()  # stopped while waiting: nothing to generate
                    continue
                limit = request.max_batch if limit is None else min(limit, request.max_batch)
                if rows and rows + len(request.adapters) > limit:
                    break
                taken.append(self._waiting.popleft())
                rows += len(request.adapters)
            if not taken and not running:
                self._working = False
        return taken

    def _work(self, loaded) -> None:
        # People who press Send at the same moment reach the queue a few milliseconds apart: waiting a
        # moment when the model was idle lets their prefills run back to back before the first step.
        time.sleep(GATHER_S)
        stop_ids = sorted(eos_ids(loaded))
        batch: Running | None = None
        with self.lock, torch.inference_mode():
            while True:
                # train.evaluate sets the penalty on the config between requests: read it at each step.
                penalty = getattr(loaded.model.generation_config, "repetition_penalty", None) or 1.0
                taken = self._take(_requests(batch))
                if not taken and batch is None:
                    return
                joining = _prefill(loaded, taken, stop_ids, penalty) if taken else None
                if joining is not None:
                    batch = joining if batch is None else batch.join(joining)
                if batch is None:
                    continue
                try:
                    batch.step(loaded.model, stop_ids, penalty)
                    batch = _hand_out(batch)
                except BaseException as error:  # every running request shared the failed step
                    for request in _requests(batch):
                        request.fail(error)
                    batch = None


def _prefill(loaded, requests: list[Request], stop_ids, penalty) -> Running | None:
    """The requests taken together, prefilled in one forward; if that fails, each by itself, so a bad
    request fails alone and its error goes to its caller, who shows it to the user."""
    try:
        return _hand_out(Running.prefill(loaded, requests, stop_ids, penalty))
    except BaseException as error:
        if len(requests) == 1:
            requests[0].fail(error)
            return None
    batch = None
    for request in requests:
        joining = _prefill(loaded, [request], stop_ids, penalty)
        if joining is not None:
            batch = joining if batch is None else batch.join(joining)
    return batch


def _requests(batch: Running | None) -> list[Request]:
    """The requests with rows in the batch, in their rows' order."""
    return [] if batch is None else list(dict.fromkeys(row.request for row in batch.rows))


def _hand_out(batch: Running) -> Running | None:
    """Each request gets its rows' new tokens; a request whose rows are all done (end of turn, its
    limit, its stop event) is finished at once, and done rows leave the batch (None once it is empty)."""
    tokens = {request: [-1] * len(request.adapters) for request in _requests(batch)}
    for row, token in zip(batch.rows, batch.tokens.tolist(), strict=True):
        tokens[row.request][row.index] = token  # a row that already left is done: its streamer skips it
    for request, theirs in tokens.items():
        request.streamer.prompt_seen = True  # (generate's first put carries the prompt; ours never does)
        request.streamer.put(torch.tensor(theirs))
    # Done is read once per row: a Stop pressed between two reads would drop rows unfinished.
    kept = [i for i, row in enumerate(batch.rows) if not row.done]
    running = {batch.rows[i].request for i in kept}
    for request in tokens:
        if request not in running:
            request.finish()
    if not kept:
        return None
    batch.keep(kept)
    return batch


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
    rows run in the model's batcher: they join its running batch at the next token (up to ``max_batch``
    rows in all, else they wait); beyond ``max_waiting`` waiting requests this raises ``Busy``. While the request
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
