"""Arena votes: reading them back, and which of them the leaderboard may rate.

One vote is one JSON object a line, as the Space writes it (``assistant/arena.py``)::

    {"type": "vote", "id": "...", "mode": "anonymous", "model_a": "x", "model_b": "y",
     "winner": "a" | "b" | "tie" | "both_bad", ...}

Lines without ``"type": "vote"`` (a Chat-tab like or dislike kept in the same folder) are skipped. Votes
from the older Compare tab (``"vote": "left" | "right" | "tie"`` with ``left``/``right`` models) are read
as named votes.

    from assistant.votes import read_votes
    from assistant.leaderboard import leaderboard, leaderboard_markdown
    print(leaderboard_markdown(leaderboard(read_votes("votes.jsonl"))))

A battle in which an answer names a model or its maker (``reveals_identity``) keeps its vote on record,
but the leaderboard leaves it out: the voter may have known who was who, as FastChat's
``clean_battle_data.py`` reasons.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

WINNERS = ("a", "b", "tie", "both_bad")
# Names that tell a voter who answered: the families and makers of the models served here, and the
# better-known others a model may claim to be (after FastChat's IDENTITY_WORDS). Every served model's
# own name is added from the votes themselves (``identity_pattern``).
IDENTITY_WORDS = (
    "smollm",
    "phi-2",
    "phi 2",
    "phi2",
    "microsoft",
    "hugging face",
    "huggingface",
    "open assistant",
    "openassistant",
    "oasst",
    "lmsys",
    "chatgpt",
    "gpt-3",
    "gpt-4",
    "openai",
    "anthropic",
    "claude",
    "llama",
    "mistral",
    "qwen",
    "gemini",
)


class VotesError(ValueError):
    """A votes file that cannot be read; the message names the file and line."""


def _vote(raw: dict, where: str) -> dict | None:
    if "vote" in raw and "winner" not in raw:  # the older Compare tab's format
        old = {"left": "a", "right": "b", "tie": "tie"}
        if raw["vote"] not in old:
            raise VotesError(f"{where}: 'vote' must be left, right or tie, got {raw['vote']!r}")
        sides = [raw.get(s) for s in ("left", "right")]
        if not all(isinstance(s, dict) and s.get("model") for s in sides):
            raise VotesError(f"{where}: an old-format vote needs left.model and right.model")
        raw = {**raw, "type": "vote", "mode": "named", "winner": old[raw["vote"]]}
        raw["model_a"], raw["model_b"] = (str(s["model"]) for s in sides)
    if raw.get("type", "vote") != "vote":
        return None
    if raw.get("winner") not in WINNERS:
        raise VotesError(f"{where}: 'winner' must be one of {', '.join(WINNERS)}, got {raw.get('winner')!r}")
    for key in ("model_a", "model_b"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise VotesError(f"{where}: {key!r} must name a model")
    if raw["model_a"] == raw["model_b"]:
        raise VotesError(f"{where}: a vote needs two different models, got {raw['model_a']!r} twice")
    return raw


def _read_file(path: Path) -> list[dict]:
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or type(error).__name__
        raise VotesError(f"{path}: cannot read the votes file ({reason})") from None
    votes = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):  # no newline after it: a write cut short by a crash
                break
            raise VotesError(f"{where}: malformed JSON ({error.msg}); fix or remove the line") from None
        if not isinstance(raw, dict):
            raise VotesError(f"{where}: a vote must be a JSON object")
        vote = _vote(raw, where)
        if vote is not None:
            votes.append(vote)
    return votes


def read_votes(path) -> list[dict]:
    """The votes in a JSONL file, or in every ``votes*.jsonl`` under a folder (a downloaded dataset repo).

    A last line cut short (no newline, not JSON) is skipped; any other bad line raises ``VotesError``
    naming ``file:line``. A vote seen twice (same ``id``, e.g. in a local file and its pushed copy) counts
    once.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.rglob("votes*.jsonl"))
    elif path.exists():
        files = [path]
    else:
        raise VotesError(f"{path}: no such file or folder")
    seen, votes = set(), []
    for file in files:
        for vote in _read_file(file):
            key = vote.get("id")
            if key is not None:
                if key in seen:
                    continue
                seen.add(key)
            votes.append(vote)
    return votes


def identity_pattern(models) -> re.Pattern:
    """Any identity word or served model name, in lowercased text, not inside a longer word on its left
    ("smollm" matches "smollm2" but "phi 2" does not match "graphi 2")."""
    words = sorted({*IDENTITY_WORDS, *(m.lower() for m in models)}, key=len, reverse=True)
    return re.compile(r"(?<![a-z0-9])(?:" + "|".join(map(re.escape, words)) + ")")


def reveals_identity(vote: dict, pattern: re.Pattern) -> str | None:
    """The first name an answer of the battle gives away, or None. Only the answers are read: a voter
    asking "are you Llama?" reveals nothing by asking."""
    answers = "\n".join(str(turn.get(side) or "") for turn in vote.get("turns") or () for side in ("a", "b"))
    found = pattern.search(answers.lower())  # lowercased once: 4x faster than a case-blind pattern
    return found.group(0) if found else None
