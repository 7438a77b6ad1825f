"""A request as the engine sees it: its rows (conversation, adapter and settings each) and the four
calls the engine makes on it. What reads the answers (a streamer, a queue, a test) sits behind a
``Sink``; the engine never reaches into it, and a fault there ends this request alone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from assistant.generation import GenerationSettings


class Sink(Protocol):
    """Where a request's answers go."""

    def put(self, tokens: list[int]) -> None:
        """One new token per row (a row that is done ignores its own)."""

    def done(self, row: int) -> bool:
        """Whether the row is done: its end of turn, its own limit, or its reader's Stop."""

    def end(self) -> None:
        """Every row is done: the answers are final."""

    def fail(self, error: BaseException) -> None:
        """The request failed: ``error`` says why, in one line. Must not raise."""


@dataclass(eq=False)
class Request:
    """One person's request: a chat is one row, a comparison or a battle turn two (each side with its own
    seed). It ends once, by ``finish`` or ``fail``; nothing reaches its sink after that."""

    conversations: list[list[dict]]
    adapters: list[str]
    settings: list[GenerationSettings]
    sink: Sink
    max_batch: int = 16
    closed: bool = False

    def put(self, tokens: list[int]) -> None:
        if self.closed:
            return
        try:
            self.sink.put(tokens)
        except Exception as error:  # the reader's fault (a streamer, say): this request alone fails
            self.fail(error)

    def row_done(self, row: int) -> bool:
        if self.closed:
            return True
        try:
            return self.sink.done(row)
        except Exception as error:
            self.fail(error)
            return True

    def finish(self) -> None:
        if self.closed:
            return
        try:
            self.sink.end()
        except Exception as error:
            self.sink.fail(error)
        self.closed = True

    def fail(self, error: BaseException) -> None:
        if not self.closed:
            self.closed = True
            self.sink.fail(error)
