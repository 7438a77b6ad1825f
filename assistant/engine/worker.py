"""One worker per model: the queue, the loop that runs the batch, and ``stream``, which the apps call.

A request waits in the model's bounded queue; beyond ``max_waiting`` waiting requests a new one is
refused with ``Busy``. A worker thread, started when a request arrives and gone when nothing runs or
waits, holds the model's lock while the batch runs, and before every decoding step takes the waiting
requests that fit (up to ``max_batch`` rows), prefills them, hands out their first tokens and joins them
to the running batch. Each request's rows end on their own (end of turn, their own ``max_new_tokens``,
their reader's Stop), and a request whose rows are all done ends at once.

A fault fails only the requests it touched, each with one line (``GenerationFailed``), and the worker
goes on: a prefill that fails together is retried one request at a time; a join that fails fails the
joining requests and leaves the running batch as it was; a decoding step fails the rows that shared it;
a row whose sampling fails, or whose reader fails to take its token, fails alone. No token is handed
out twice: a prefill's tokens are handed out only once it has succeeded.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

import torch

from assistant.engine.batch import Running
from assistant.engine.requests import Request
from assistant.generation import (
    Answer,
    Busy,
    GenerationFailed,
    GenerationSettings,
    RowStreamer,
    check_adapters,
    check_settings,
    eos_ids,
    lock_for,
    row_streamer,
)

log = logging.getLogger(__name__)

FINISHED = object()  # put on a request's channel once its rows are done
GATHER_S = 0.05  # how long an idle model waits for more requests before it starts a batch
WAIT_S = 0.25  # how often a caller with no new token gets a snapshot anyway (its place in the queue)


def failed(stage: str, error: BaseException) -> GenerationFailed:
    """The one line a request that a fault touched ends with, and one line in the server's log."""
    first = (str(error).strip().splitlines() or [""])[0][:200]
    log.warning("generation failed at the %s: %s: %s", stage, type(error).__name__, first)
    return GenerationFailed(
        f"generation failed at the {stage} ({type(error).__name__}: {first}); the model is still "
        "serving: try again"
    )


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

    @property
    def working(self) -> bool:
        with self._mutex:
            return self._working

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
                threading.Thread(target=self._work, args=(loaded,), name="engine", daemon=True).start()

    def _take(self, running: list[Request]) -> list[Request]:
        """The waiting requests that fit beside the ``running`` ones (``max_batch`` rows in all; a
        request alone always fits), oldest first; stopped ones are ended. With nothing running and
        nothing taken, the worker is done (under the mutex, so a new request starts a new worker)."""
        taken, rows = [], sum(len(r.adapters) for r in running)
        limit = min((r.max_batch for r in running), default=None)
        with self._mutex:
            while self._waiting:
                request = self._waiting[0]
                if all(request.row_done(i) for i in range(len(request.adapters))):
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
        batch: Running | None = None
        try:
            stop_ids = sorted(eos_ids(loaded))
            with self.lock, torch.inference_mode():
                while True:
                    taken = self._take([] if batch is None else batch.requests)
                    if not taken and batch is None:
                        return
                    if taken:
                        batch = _admit(loaded, batch, taken, stop_ids)
                    if batch is not None:
                        batch = _advance(loaded, batch, stop_ids)
        except Exception as error:  # outside every stage: nobody this worker holds may wait forever
            with self._mutex:
                held = ([] if batch is None else batch.requests) + list(self._waiting)
                self._waiting.clear()
                self._working = False
            for request in held:
                request.fail(failed("worker", error))


def _admit(loaded, batch: Running | None, taken: list[Request], stop_ids) -> Running | None:
    """The running batch with ``taken`` prefilled, their first tokens handed out, and joined to it."""
    joining = _prefill(loaded, taken, stop_ids)
    joining = None if joining is None else _hand_out(joining)
    if joining is None:
        return batch
    if batch is None:
        return joining
    try:
        return batch.join(joining)
    except Exception as error:  # the running batch is as it was: only the joining requests fail
        for request in joining.requests:
            request.fail(failed("join", error))
        return batch


def _prefill(loaded, requests: list[Request], stop_ids) -> Running | None:
    """The requests prefilled together; if that fails, each by itself, so a bad request fails alone.
    Nothing is handed out here, so a retry never feeds a token twice."""
    try:
        return Running.prefill(loaded, requests, stop_ids)
    except Exception as error:
        if len(requests) == 1:
            requests[0].fail(failed("prefill", error))
            return None
    batch = None
    for request in requests:
        alone = _prefill(loaded, [request], stop_ids)
        if alone is not None and batch is not None:
            try:
                alone = batch.join(alone)
            except Exception as error:
                request.fail(failed("join", error))
                continue
        batch = alone if alone is not None else batch
    return batch


def _advance(loaded, batch: Running, stop_ids) -> Running | None:
    """One decoding step of the batch, its tokens handed out; a failed step fails every request in it."""
    try:
        batch.step(loaded.model, stop_ids)
    except Exception as error:
        for request in batch.requests:
            request.fail(failed("decoding step", error))
        return None
    return _hand_out(batch)


def _hand_out(batch: Running) -> Running | None:
    """Each request gets its rows' new tokens; a request whose pick failed is failed, one whose rows are
    all done is finished, and done rows leave the batch (None once it is empty)."""
    for request, error in batch.faults.items():
        request.fail(failed("sampling", error))
    tokens = {request: [-1] * len(request.adapters) for request in batch.requests}
    for row, token in zip(batch.rows, batch.tokens.tolist(), strict=True):
        tokens[row.request][row.index] = token
    for request, theirs in tokens.items():
        request.put(theirs)  # a reader's fault fails its request alone (Request.put)
    # Done is read once per row: a Stop pressed between two reads would drop rows unfinished.
    kept = [i for i, row in enumerate(batch.rows) if not row.request.row_done(row.index)]
    running = {batch.rows[i].request for i in kept}
    for request in tokens:
        if request not in running:
            request.finish()
    if not kept:
        return None
    try:
        batch.keep(kept)
    except Exception as error:
        for request in batch.requests:
            request.fail(failed("hand-out", error))
        return None
    return batch


_BATCHERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_BATCHERS_MUTEX = threading.Lock()


def batcher_for(model) -> Batcher:
    with _BATCHERS_MUTEX:
        batcher = _BATCHERS.get(model)
        if batcher is None:
            batcher = _BATCHERS[model] = Batcher(lock_for(model))
        return batcher


class Channel:
    """The ``Sink`` of one ``stream`` call: the streamer decodes the rows' tokens, and each snapshot,
    then the end or the error, goes to the caller through ``send``."""

    def __init__(self, streamer: RowStreamer, send: Callable) -> None:
        self.streamer, self.send = streamer, send

    def put(self, tokens: list[int]) -> None:
        self.streamer.add(tokens)

    def done(self, row: int) -> bool:
        return self.streamer.row_done(row)

    def end(self) -> None:
        self.streamer.end()
        self.send(FINISHED)

    def fail(self, error: BaseException) -> None:
        if not isinstance(error, GenerationFailed):
            error = failed("reader", error)
        self.send(error)


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
    rows run in the model's engine: they join its running batch at the next token (up to ``max_batch``
    rows in all, else they wait); beyond ``max_waiting`` waiting requests this raises ``Busy``. While the
    request waits, a snapshot every ``WAIT_S`` gives its place in the queue (``Answer.queued``). A fault
    in the engine ends the request with ``GenerationFailed``.

    Closing the iterator (or setting ``stop``) stops this request's rows within one step, or takes it
    out of the queue before it starts.
    """
    if len(conversations) != len(adapters):
        raise ValueError("give one adapter name per conversation")
    rows = [settings] * len(adapters) if isinstance(settings, GenerationSettings) else list(settings)
    if len(rows) != len(adapters):
        raise ValueError("give one settings per conversation, or one for all")
    check_adapters(loaded, adapters)
    for row in rows:
        check_settings(row)
    stop = stop or threading.Event()
    updates: queue.Queue = queue.Queue()
    limits = [row.max_new_tokens for row in rows]
    streamer = row_streamer(loaded, adapters, updates.put, limits, stop)
    request = Request(list(conversations), list(adapters), rows, Channel(streamer, updates.put), max_batch)
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
