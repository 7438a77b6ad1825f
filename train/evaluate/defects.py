"""What a reader notices before an answer's content: does it loop, and does it end?

  * loop: ``assistant.defects.loops`` (more than 20% of the answer's word 4-grams repeat an earlier one),
    the one definition the GRPO reward and the Space use too;
  * end: the answer ended by itself (end of turn) within the token limit.

Each is a rate over every answer of a side (Wilson, clustered by tree) and a paired exact test of two
sides on the same prompts: per prompt, the difference of the shares of its k answers (with k = 1 a
0/±1 outcome, so the items' test is the exact McNemar test on the discordant prompts); each tree is one
vote in the headline p-value (stats.sign_test), as everywhere in a report.
"""

from __future__ import annotations

import numpy as np

from assistant.defects import loops
from train.evaluate.stats import rate, sign_test

DEFINITIONS = {
    "loop": "more than 20% of the answer's word 4-grams repeat an earlier 4-gram (assistant.defects.loops)",
    "end": "the answer ended by itself (end of turn) within the token limit",
}


def flags(side: list[list]) -> dict[str, np.ndarray]:
    """``side[i][j]``: the j-th answer to prompt i; 0/1 per answer, one row per prompt."""
    return {
        "loop": np.array([[float(loops(a.text)) for a in row] for row in side]),
        "end": np.array([[float(a.ended) for a in row] for row in side]),
    }


def both_clean(clean: dict, scores: dict, trees: list, tolerance: float) -> dict:
    """The judge's per-prompt verdict where both answers are clean (ended by themselves, no loop): on
    each prompt, the mean tuned − base score over its sample pairs (same seed) that are both clean;
    prompts with none are left out. What is left is content, where endings and loops cannot decide.
    ``clean[side][i][j]`` and ``scores[side][i][j]``: answer j to prompt i."""
    from train.evaluate.stats import outcomes

    differences, groups = [], []
    for i, tree in enumerate(trees):
        pairs = zip(clean["base"][i], clean["tuned"][i], scores["base"][i], scores["tuned"][i], strict=True)
        kept = [tuned - base for base_clean, tuned_clean, base, tuned in pairs if base_clean and tuned_clean]
        if kept:
            differences.append(float(np.mean(kept)))
            groups.append(tree)
    return {**outcomes(np.array(differences), tolerance, groups), "prompts": len(differences)}


def is_clean(answer) -> bool:
    return bool(answer.ended) and not loops(answer.text)


def compare(reference: list[list], other: list[list], trees: list, names=("base", "tuned")) -> dict:
    """Loop and end rates of ``reference`` and ``other`` (answers to the same prompts, same seeds) and
    the paired test of ``other`` against ``reference``: its ``better`` counts are prompts (and trees)
    where ``other`` loops less / ends more often."""
    first, second = flags(reference), flags(other)
    per_answer = np.repeat(np.array(trees, dtype=object), first["loop"].shape[1])
    out = {}
    for measure, sign in (("loop", -1.0), ("end", 1.0)):  # fewer loops and more ends are better
        a, b = first[measure], second[measure]
        out[measure] = {
            names[0]: rate(a.ravel(), per_answer),
            names[1]: rate(b.ravel(), per_answer),
            "test": sign_test(sign * (b.mean(axis=1) - a.mean(axis=1)), 0.0, trees),
            "definition": DEFINITIONS[measure],
        }
    return out


def line(measures: dict, names=("base", "tuned")) -> str:
    """``loops 17% → 9% (prompts 3 fewer, 15 more; per tree p = 0.004); ends ...``: one sentence."""
    from train.evaluate.stats import fmt, fmt_p

    parts = []
    for measure, (good, bad), verb in (
        ("loop", ("fewer", "more"), "loops"),
        ("end", ("more", "fewer"), "ends by itself"),
    ):
        m = measures[measure]
        test = m["test"]
        unit = test.get("trees") or test
        parts.append(
            f"{verb} {fmt(m[names[0]], percent=True)} → {fmt(m[names[1]], percent=True)} "
            f"({'trees' if test.get('trees') else 'prompts'} {unit['better']} {good}, {unit['worse']} {bad}, "
            f"exact paired test {fmt_p(test['p_value'])})"
        )
    return "; ".join(parts)
