"""Battles between two served models, as in the Chatbot Arena of lm-sys/FastChat.

An anonymous battle draws two different models at random (the order of the draw sets the sides), hides
their names until the vote, and goes on for several turns: each side sees its own earlier answers. A
named battle pits two chosen models. A vote ("a", "b", "tie", "both_bad") ends the battle, reveals the
names and is stored with the whole conversation; a battle takes one vote. Regenerate answers the last
turn again with the next seed. Battles live in memory by id, so the UI and the API share them; a battle
idle for ``Limits.battle_idle_seconds`` is forgotten, and at most ``MAX_BATTLES`` are kept (the least
recently used go first). Asking or voting on a forgotten battle raises ``BattleGone``, which says why.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace

from assistant.generation import Answer, GenerationSettings, RequestError
from assistant.service import Assistant

CHOICES = {"a": "A is better", "b": "B is better", "tie": "Tie", "both_bad": "Both are bad"}
MAX_BATTLES = 10_000  # kept in memory (at most 50 turns each); the least recently used go first


class BattleGone(RequestError):
    """The battle expired or was closed to make room: the message says which, and to start a new one."""


def _duration(seconds: int) -> str:
    for unit, size in (("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds % size == 0:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds} seconds"


@dataclass
class Battle:
    id: str
    mode: str  # "anonymous" or "named"
    model_a: str
    model_b: str
    system: str = ""
    settings: GenerationSettings | None = None
    turns: list[dict] = field(default_factory=list)  # {"prompt", "a", "b"}
    winner: str | None = None
    busy: bool = False
    last_active: float = field(default_factory=time.monotonic)

    def history(self, side: str) -> list[dict]:
        messages = []
        for turn in self.turns:
            messages += [
                {"role": "user", "content": turn["prompt"]},
                {"role": "assistant", "content": turn[side]},
            ]
        return messages

    def names(self) -> tuple[str | None, str | None]:
        """The two models' names where the voter may see them: named battles, or after the vote."""
        shown = self.mode == "named" or self.winner is not None
        return (self.model_a, self.model_b) if shown else (None, None)


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def feedback_record(model: str, liked: bool, answer: str, conversation: list[dict]) -> dict:
    """A Chat-tab like or dislike of ``answer`` (the last message of ``conversation``), as both apps
    store it beside the votes (``read_votes`` skips it)."""
    return {
        "type": "feedback",
        "id": uuid.uuid4().hex,
        "time": utc_now(),
        "model": model,
        "liked": liked,
        "answer": answer,
        "conversation": conversation,
    }


def revealed(battle: Battle) -> str:
    """What a voted battle says, in both apps: who was who, and the vote."""
    return f"A was {battle.model_a}, B was {battle.model_b}. Your vote: {CHOICES[battle.winner]}."


class Arena:
    def __init__(self, assistant: Assistant, store, rng: random.Random | None = None):
        self.assistant = assistant
        self.store = store
        self.rng = rng or random.SystemRandom()
        self._battles: OrderedDict[str, Battle] = OrderedDict()  # least recently used first
        self._gone: OrderedDict[str, str] = OrderedDict()  # why a forgotten battle is gone (ids only)
        self._lock = threading.Lock()

    @property
    def idle_seconds(self) -> int:
        return self.assistant.limits.battle_idle_seconds

    def _forget(self, battle_id: str, why: str) -> None:
        del self._battles[battle_id]
        self._gone[battle_id] = why
        while len(self._gone) > MAX_BATTLES:
            self._gone.popitem(last=False)

    def _sweep(self, now: float) -> None:
        """Forget the battles idle too long, and the least recently used beyond ``MAX_BATTLES``."""
        expired = f"this battle expired after {_duration(self.idle_seconds)} without a turn or a vote"
        for battle in list(self._battles.values()):
            if battle.busy:  # answering: not idle, whatever its last turn
                battle.last_active = now
                self._battles.move_to_end(battle.id)
            elif now - battle.last_active >= self.idle_seconds:
                self._forget(battle.id, expired)
            else:
                break
        while len(self._battles) > MAX_BATTLES:
            self._forget(
                next(iter(self._battles)), f"this battle was closed to make room ({MAX_BATTLES:,} are kept)"
            )

    def _lookup(self, battle_id: str | None, missing: str) -> Battle:
        """The battle, marked as used now (call under the lock); ``BattleGone`` if it was forgotten."""
        now = time.monotonic()
        self._sweep(now)
        battle = self._battles.get(battle_id or "")
        if battle is None:
            why = self._gone.get(battle_id or "")
            if why:
                raise BattleGone(f"{why}; start a new battle")
            raise RequestError(missing)
        battle.last_active = now
        self._battles.move_to_end(battle.id)
        return battle

    def start(self, model_a: str | None = None, model_b: str | None = None) -> Battle:
        """A new battle: named when both models are given, else two drawn at random."""
        if len(self.assistant.models) < 2:
            raise RequestError("a battle needs two models; serve at least one adapter")
        if model_a or model_b:
            for model in (model_a, model_b):
                self.assistant.route(model or "")
            if model_a == model_b:
                raise RequestError("pick two different models")
            mode = "named"
        else:
            model_a, model_b = self.rng.sample(self.assistant.models, 2)
            mode = "anonymous"
        battle = Battle(uuid.uuid4().hex, mode, model_a, model_b)
        with self._lock:
            self._battles[battle.id] = battle
            self._sweep(battle.last_active)
        return battle

    def get(self, battle_id: str | None) -> Battle:
        with self._lock:
            return self._lookup(battle_id, "there is no such battle: start a new one")

    def _claim(self, battle_id: str, for_what: str) -> Battle:
        with self._lock:
            battle = self._lookup(battle_id, "there is no such battle: start a new one")
            if battle.winner is not None:
                raise RequestError(f"this battle already has its vote; start a new battle to {for_what}")
            if battle.busy:
                raise RequestError("this battle is still answering; wait for both answers")
            battle.busy = True
        return battle

    def _run(self, battle: Battle, prompt: str, system, settings) -> Iterator[tuple[Answer, Answer]]:
        sides = [
            self.assistant.prepare(prompt, battle.history(side), system, settings) for side in ("a", "b")
        ]
        a = b = None
        for a, b in self.assistant.side_by_side(sides, [battle.model_a, battle.model_b]):
            yield a, b
        battle.system, battle.settings = system or "", settings
        battle.turns.append({"prompt": prompt, "a": a.text, "b": b.text})

    def ask(
        self, battle_id: str, prompt: str, system: str | None, settings: GenerationSettings
    ) -> Iterator[tuple[Answer, Answer]]:
        """Both answers to the next turn of the battle, as they grow; the turn is kept when both end."""
        battle = self._claim(battle_id, "ask more")
        try:
            if len(battle.turns) >= self.assistant.limits.max_turns:
                raise RequestError(
                    f"this battle has {len(battle.turns)} turns, the most it takes: vote, or start a new one"
                )
            yield from self._run(battle, prompt, system, settings)
        finally:
            battle.busy, battle.last_active = False, time.monotonic()

    def regenerate(self, battle_id: str) -> Iterator[tuple[Answer, Answer]]:
        """Both answers to the last turn again, with the next seed."""
        battle = self._claim(battle_id, "regenerate")
        try:
            if not battle.turns:
                raise RequestError("there is nothing to regenerate yet: ask something first")
            last = battle.turns.pop()
            seed = battle.settings.seed
            settings = replace(battle.settings, seed=None if seed is None else seed + 1)
            try:
                yield from self._run(battle, last["prompt"], battle.system, settings)
            except BaseException:
                if not battle.turns or battle.turns[-1] is not last:
                    battle.turns.append(last)  # stopped or failed: keep what was there
                raise
        finally:
            battle.busy, battle.last_active = False, time.monotonic()

    def vote(self, battle_id: str, choice: str) -> dict:
        """Store the vote on a battle and end it; returns the stored record (with both names)."""
        if choice not in CHOICES:
            raise RequestError(f"a vote is one of {', '.join(CHOICES)}, not {choice!r}")
        with self._lock:
            battle = self._lookup(
                battle_id, "there is no battle to vote on: start one and ask something first"
            )
            if battle.winner is not None:
                raise RequestError("this battle already has its vote; start a new battle")
            if battle.busy or not battle.turns:
                raise RequestError("wait for both answers before voting")
            battle.winner = choice  # under the lock: a battle takes one vote, however many clicks
        record = {
            "type": "vote",
            "id": uuid.uuid4().hex,
            "time": utc_now(),
            "battle": battle.id,
            "mode": battle.mode,
            "model_a": battle.model_a,
            "model_b": battle.model_b,
            "winner": choice,
            "turns": battle.turns,
            "system": battle.system,
            "settings": {k: v for k, v in asdict(battle.settings).items() if k != "min_new_tokens"},
        }
        try:
            self.store.append("votes", record)
        except OSError as error:
            battle.winner = None  # not stored: the voter may try again
            raise RequestError(f"the vote could not be saved ({error.strerror}); try again") from None
        return record
