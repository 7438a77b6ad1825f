"""What a reader notices in an answer before its content: a repetition loop. One definition, shared by
the GRPO reward (train.rewards), the evaluation's loop rate (train.evaluate) and the Space's marks.

An answer loops when more than ``LOOP_THRESHOLD`` of its word 4-grams repeat an earlier 4-gram of the
same answer ("a being of a being of a being ...", one chorus line over and over). Words are compared
lower-cased with punctuation stripped, so "Yes, yes." and "yes yes" are the same words. Human replies
trip it rarely (0.7% of the chosen dev replies: study/defect_rewards.md).
"""

from __future__ import annotations

import re

NGRAM = 4
LOOP_THRESHOLD = 0.2
# Too few 4-grams to call a loop: "yes yes yes yes yes" is 2 repeats of 2, not a habit.
MIN_NGRAMS = 8

_WORD = re.compile(r"[\w']+")


def repeated_fraction(text: str, n: int = NGRAM) -> float:
    """The share of the answer's word n-grams that repeat an earlier n-gram of the same answer (0 to 1)."""
    words = _WORD.findall(text.lower())
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if len(grams) < MIN_NGRAMS:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    for gram in grams:
        repeats += gram in seen
        seen.add(gram)
    return repeats / len(grams)


def loops(text: str) -> bool:
    """True when the answer is caught in a repetition loop (more than 20% of its 4-grams repeat)."""
    return repeated_fraction(text) > LOOP_THRESHOLD
