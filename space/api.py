"""The typed API: fixed names (``/battle``, ``/vote``, ``/leaderboard``, ``/compare``; ``/chat`` is the
Chat tab's) for scripts and ``gradio_client``; the UI's own events are private. docs/space.md shows calls."""

import gradio as gr

from assistant.arena import Arena
from assistant.leaderboard import LiveLeaderboard
from assistant.prompt import DEFAULT_SYSTEM
from assistant.service import DEFAULTS, Assistant
from space.common import gpu, user_error


def register_api(arena: Arena, live: LiveLeaderboard) -> None:
    """Register the endpoints on the Blocks being built."""
    gr.api(battle_endpoint(arena), api_name="battle")
    gr.api(vote_endpoint(arena), api_name="vote")
    gr.api(leaderboard_endpoint(live), api_name="leaderboard")
    gr.api(compare_endpoint(arena.assistant), api_name="compare")


def battle_endpoint(arena: Arena):
    assistant = arena.assistant

    @gpu
    def battle_api(
        message: str,
        battle_id: str = "",
        model_a: str = "",
        model_b: str = "",
        system: str = DEFAULT_SYSTEM,
        temperature: float = DEFAULTS.temperature,
        top_p: float = DEFAULTS.top_p,
        max_new_tokens: int = assistant.default_max_new_tokens,
        seed: int = DEFAULTS.seed,
        repetition_penalty: float = DEFAULTS.repetition_penalty,
    ) -> dict:
        """One turn of a battle: a new battle when battle_id is empty (named when model_a and model_b are
        given, else anonymous). Returns battle_id, turn, answer_a, answer_b, and model_a / model_b
        (null while an anonymous battle has no vote)."""
        try:
            chosen = assistant.settings(temperature, top_p, max_new_tokens, seed, repetition_penalty)
            battle = arena.get(battle_id) if battle_id else arena.start(model_a or None, model_b or None)
            *_, (a, b) = arena.ask(battle.id, message, system, chosen)
        except Exception as error:
            raise user_error(error, "the battle") from None
        name_a, name_b = battle.names()
        return {
            "battle_id": battle.id,
            "turn": len(battle.turns),
            "answer_a": a.text,
            "answer_b": b.text,
            "model_a": name_a,
            "model_b": name_b,
        }

    return battle_api


def vote_endpoint(arena: Arena):
    def vote_api(battle_id: str, choice: str) -> dict:
        """Vote on a battle: choice is a, b, tie or both_bad. Returns the revealed names and where the
        vote is kept (and why only locally, when the dataset repo is out of reach)."""
        try:
            record = arena.vote(battle_id, choice)
        except Exception as error:
            raise user_error(error, "the vote") from None
        return {
            "model_a": record["model_a"],
            "model_b": record["model_b"],
            "winner": choice,
            "stored_in": arena.store.where,
            "problem": arena.store.problem,
        }

    return vote_api


def leaderboard_endpoint(live: LiveLeaderboard):
    def leaderboard_api() -> dict:
        """The last Bradley-Terry ratings, 95% intervals and vote counts (``updating``: a refit runs)."""
        try:
            return live.board()
        except ValueError as error:
            raise gr.Error(f"the leaderboard cannot be computed: {error}") from None

    return leaderboard_api


def compare_endpoint(assistant: Assistant):
    @gpu
    def compare_api(
        prompt: str,
        system: str = DEFAULT_SYSTEM,
        temperature: float = DEFAULTS.temperature,
        top_p: float = DEFAULTS.top_p,
        max_new_tokens: int = assistant.default_max_new_tokens,
        seed: int = DEFAULTS.seed,
        repetition_penalty: float = DEFAULTS.repetition_penalty,
    ) -> tuple[str, str]:
        """The base's and the first adapter's answers to one prompt, same settings and seed, one batch."""
        try:
            chosen = assistant.settings(temperature, top_p, max_new_tokens, seed, repetition_penalty)
            prepared = assistant.prepare(prompt, [], system, chosen)
            *_, (base, tuned_answer) = assistant.compare(prepared)
        except Exception as error:
            raise user_error(error, "compare") from None
        return base.text, tuned_answer.text

    return compare_api
