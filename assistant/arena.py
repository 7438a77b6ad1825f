"""Battles between two served models, as in the Chatbot Arena of lm-sys/FastChat.

An anonymous battle draws two different models at random (the order of the draw sets the sides), hides
their names until the vote, and goes on for several turns: each side sees its own earlier answers. A
named battle pits two chosen models. A vote ("a", "b", "tie", "both_bad") ends the battle, reveals the
names and is stored with the whole conversation; a battle takes one vote. Each side samples with its own
seed (``side_seeds``: two models on one seed open alike, and the battle looks like a duplicate), and each
turn keeps both seeds, so a voted battle can be replayed. Regenerate answers the last turn again with
the next seeds. Battles live in memory by id, so the UI and the API share them; a battle
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
    # {"prompt", "a", "b", "seeds": [a's, b's], "at_limit": {"a": cut off?, "b": ...}, "max_new_tokens"}
    turns: list[dict] = field(default_factory=list)
    winner: str | None = None
    busy: bool = False
    last_active: float = field(default_factory=time.monotonic)

    def history(self, side: str, marked: bool = False) -> list[dict]:
        """One side's conversation; ``marked`` (for the page, never the model) notes the answers that
        stopped at the token limit."""
        messages = []
        for turn in self.turns:
            cut = marked and turn.get("at_limit", {}).get(side)
            answer = turn[side] + (f"\n\n{limit_mark(turn['max_new_tokens'])}" if cut else "")
            messages += [
                {"role": "user", "content": turn["prompt"]},
                {"role": "assistant", "content": answer},
            ]
        return messages

    def names(self) -> tuple[str | None, str | None]:
        """The two models' names where the voter may see them: named battles, or after the vote."""
        shown = self.mode == "named" or self.winner is not None
        return (self.model_a, self.model_b) if shown else (None, None)


def limit_mark(limit: int) -> str:
    """The mark after an answer that the token limit cut off, not the model (both apps show it)."""
    return f"*[cut off at the {limit}-token limit: raise Max new tokens in Settings for more]*"


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


def side_seeds(seed: int | None) -> tuple[int, int]:
    """The two sides' seeds for a turn asked with ``seed``: ``seed`` and the next (regenerate steps by
    two, so no seed comes back); no seed draws two at random, kept with the turn all the same."""
    if seed is None:
        draw = random.SystemRandom()
        return draw.randrange(2**31), draw.randrange(2**31)
    return seed, seed + 1


def about(assistant: Assistant, store) -> str:
    """The "about this arena" note both apps show: what is compared, what is kept and where, the rules
    (after FastChat's terms of use)."""
    tuned = [m for m in assistant.models if m != assistant.base_name]
    return f"""**What is compared.** The base model {assistant.base_name} and {len(tuned)} adapter{"s" * (len(tuned) != 1)} \
tuned on it ({", ".join(tuned) or "none"}), all on one copy of the base. In an anonymous battle two of them \
are drawn at random and their names stay hidden until you vote; both get your message and the same settings, \
and each side samples with its own seed. A named battle (and "Base vs ...") lets you pick them: its vote is \
kept but not rated, since you saw the names.

**What is kept, and where.** Every vote is stored with the whole battle: your messages, both answers, the \
models, the settings and seeds. The Chat tab's likes are stored with their conversation. They are kept on \
{store.where}; the votes feed the leaderboard and may be used to study or train models, and may be published. \
Do not type anything private.

**The rules.** This is a research preview of small models: answers can be wrong or offensive, and nothing \
here is advice. Do not use it for anything illegal or harmful. One vote per battle; a vote whose answers \
name a model (or its maker) is kept but left out of the ratings. A battle left idle for \
{_duration(assistant.limits.battle_idle_seconds)} is closed.
"""


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

    def _run(self, battle: Battle, prompt: str, system, settings, stop) -> Iterator[tuple[Answer, Answer]]:
        seeds = side_seeds(settings.seed)
        sides = [
            self.assistant.prepare(prompt, battle.history(side), system, replace(settings, seed=seed))
            for side, seed in zip("ab", seeds, strict=True)
        ]
        a = b = None
        for a, b in self.assistant.side_by_side(sides, [battle.model_a, battle.model_b], stop):
            yield a, b
        battle.system, battle.settings = system or "", settings
        limit = settings.max_new_tokens
        at_limit = {"a": a.at_limit(limit), "b": b.at_limit(limit)}
        battle.turns.append(
            {
                "prompt": prompt,
                "a": a.text,
                "b": b.text,
                "seeds": list(seeds),
                "at_limit": at_limit,
                "max_new_tokens": limit,
            }
        )

    def ask(
        self,
        battle_id: str,
        prompt: str,
        system: str | None,
        settings: GenerationSettings,
        stop: threading.Event | None = None,
    ) -> Iterator[tuple[Answer, Answer]]:
        """Both answers to the next turn of the battle, as they grow; the turn is kept when both end.
        Setting ``stop`` (or closing the iterator) stops both, or takes them out of the queue."""
        battle = self._claim(battle_id, "ask more")
        try:
            if len(battle.turns) >= self.assistant.limits.max_turns:
                raise RequestError(
                    f"this battle has {len(battle.turns)} turns, the most it takes: vote, or start a new one"
                )
            yield from self._run(battle, prompt, system, settings, stop)
        finally:
            battle.busy, battle.last_active = False, time.monotonic()

    def regenerate(
        self, battle_id: str, stop: threading.Event | None = None
    ) -> Iterator[tuple[Answer, Answer]]:
        """Both answers to the last turn again, with the next seeds."""
        battle = self._claim(battle_id, "regenerate")
        try:
            if not battle.turns:
                raise RequestError("there is nothing to regenerate yet: ask something first")
            last = battle.turns.pop()
            seed = battle.settings.seed
            settings = replace(battle.settings, seed=None if seed is None else seed + 2)
            try:
                yield from self._run(battle, last["prompt"], battle.system, settings, stop)
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
