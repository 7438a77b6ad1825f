"""Answers of base and tuned to every held-out prompt, scored by a judge the model never trained on.

Each prompt is answered ``k`` times by each model (seeds ``seed .. seed+k-1``), base rows and tuned
rows in separate batches with the same seed, so the base answers do not depend on the adapter under
test. Per prompt, the judge's mean score over the k answers is compared between tuned and base: the
intervals then cover the model's sampling noise as well as which prompts were drawn. The judge's own
accuracy on the held-out human pairs is measured beside its verdicts, so a reader knows how far to
trust them. The training rewards are reported too, but as what they are: the training objective.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from train.data import prompt_messages
from train.evaluate.stats import mean, outcomes, rate

TIE_TOLERANCE = 1e-6  # scores closer than this are a tie (float noise, not a preference)
SIDES = ("base", "tuned")


def generate_answers(loaded, prompts: list[dict], settings, k: int, batch_size: int, base=None) -> dict:
    """``answers[side][i][j]``: the j-th answer (seed settings.seed + j) of ``side`` to prompt i; the
    base's from ``base`` when an earlier run on the same base, prompts and settings gave them."""
    from assistant.generation import BASE, generate, tuned_adapter

    conversations = [prompt_messages(p["prompt"]) for p in prompts]
    routes = {"base": BASE, "tuned": tuned_adapter(loaded)}
    answers = {side: [[] for _ in prompts] for side in SIDES}
    sides = SIDES if base is None else ("tuned",)
    if base is not None:
        answers["base"] = base
    with tqdm(
        total=len(sides) * k * len(prompts), desc=f"answering ({', '.join(sides)})", unit=" answer"
    ) as bar:
        for j in range(k):
            seeded = replace(settings, seed=settings.seed + j)
            for side in sides:
                for start in range(0, len(prompts), batch_size):
                    rows = conversations[start : start + batch_size]
                    batch = generate(loaded, rows, [routes[side]] * len(rows), seeded, batch_size)
                    for i, answer in enumerate(batch, start):
                        answers[side][i].append(answer)
                    bar.update(len(rows))
    return answers


def per_prompt(values: list[list[float]]) -> np.ndarray:
    return np.array([np.nanmean(v) if len(v) else math.nan for v in values], dtype=float)


def describe(answers: dict, seed: int) -> dict:
    """Length and proper endings, per side: means over prompts of the per-prompt means."""
    return {
        side: {
            "answer_tokens": mean(per_prompt([[a.tokens for a in row] for row in answers[side]]), seed),
            "ended_properly": mean(
                per_prompt([[float(a.ended) for a in row] for row in answers[side]]), seed
            ),
        }
        for side in SIDES
    }


def judge_accuracy(judge, pairs: list[dict]) -> dict:
    """How often the judge prefers the human-chosen reply of a held-out pair: its trustworthiness here."""
    conversations = [prompt_messages(p["prompt"]) for p in pairs]
    chosen = judge.score(conversations, [p["chosen"] for p in pairs])
    rejected = judge.score(conversations, [p["rejected"] for p in pairs])
    return rate(np.greater(chosen, rejected))


def judge_verdicts(judge, prompts: list[dict], answers: dict, seed: int, base_scores=None) -> dict:
    """The judge's score of every answer; tuned against base per prompt (mean over the k answers)."""
    scores = {} if base_scores is None else {"base": base_scores}
    for side in [s for s in SIDES if s not in scores]:
        flat = [(i, a) for i, row in enumerate(answers[side]) for a in row]
        conversations = [prompt_messages(prompts[i]["prompt"]) for i, _ in flat]
        values = judge.score(conversations, [a.text for _, a in flat])
        scores[side] = [[] for _ in prompts]
        for (i, _), value in zip(flat, values, strict=True):
            scores[side][i].append(value)
    means = {side: per_prompt(scores[side]) for side in SIDES}
    # the same seed on both sides: sample j of base against sample j of tuned
    samples = np.array(scores["tuned"]) - np.array(scores["base"])  # [prompts, k]
    return {
        "base": {"score": mean(means["base"], seed)},
        "tuned": {"score": mean(means["tuned"], seed)},
        "tuned_minus_base": mean(means["tuned"] - means["base"], seed),
        "per_prompt": outcomes(means["tuned"] - means["base"], TIE_TOLERANCE),
        "per_answer": {"win": rate(samples.ravel() > TIE_TOLERANCE), "n": int(samples.size)},
        "scores": scores,
    }


def training_objective(loaded, prompts: list[dict], answers: dict, recipe: dict, seed: int) -> dict | None:
    """The adapter's own GRPO rewards (as its recipe weighs them) on the same answers; None for a method
    that trained on no reward. Never evidence by itself: the adapter was optimised for exactly this."""
    if recipe.get("method", "grpo") != "grpo" or not recipe.get("reward_funcs"):
        return None
    from assistant.generation import eos_ids
    from train.rewards import DEFAULT_EMBEDDER, get_reward_funcs

    names = recipe["reward_funcs"]
    names = [names] if isinstance(names, str) else list(names)
    weights = [float(w) for w in recipe.get("reward_weights") or [1.0] * len(names)]
    eos = sorted(eos_ids(loaded))
    funcs = get_reward_funcs(
        names,
        eos_token_ids=eos,
        embedding_model=recipe.get("embedding_model") or DEFAULT_EMBEDDER,
        reward_model_name_or_path=recipe.get("reward_model_name_or_path"),
    )
    result = {"reward_funcs": names, "reward_weights": weights}
    for side in SIDES:
        flat = [(prompts[i], a) for i, row in enumerate(answers[side]) for a in row]
        columns = {key: [pair.get(key) for pair, _ in flat] for key in flat[0][0] if key != "prompt"}
        kwargs = {
            **columns,
            "prompts": [prompt_messages(pair["prompt"]) for pair, _ in flat],
            "completions": [[{"role": "assistant", "content": a.text}] for _, a in flat],
            "completion_ids": [
                loaded.tokenizer(a.text, add_special_tokens=False)["input_ids"] + (eos[:1] if a.ended else [])
                for _, a in flat
            ],
            "trainer_state": None,
        }
        values = {name: np.array(f(**kwargs), dtype=float) for name, f in zip(names, funcs, strict=True)}
        total = sum(w * values[n] for n, w in zip(names, weights, strict=True))
        k = len(answers[side][0])
        result[side] = {
            name: mean(v.reshape(len(prompts), k).mean(axis=1), seed)
            for name, v in {**values, "total": total}.items()
        }
    return result


def length_control(generations: Path, limit: int) -> dict | None:
    """Is the judge's verdict about length? Its per-prompt verdicts again on only the prompts where
    every answer of both models was cut at the token limit (all the same length), and the rank
    correlation of the per-prompt length and judge-score differences over all prompts."""
    from scipy.stats import spearmanr

    prompts = [json.loads(line) for line in generations.read_text().splitlines() if line.strip()]
    prompts = [p for p in prompts if all(a.get("judge") is not None for s in SIDES for a in p[s])]
    if not prompts:
        return None
    mean = lambda p, side, key: float(np.mean([a[key] for a in p[side]]))  # noqa: E731
    score = np.array([mean(p, "tuned", "judge") - mean(p, "base", "judge") for p in prompts])
    length = np.array([mean(p, "tuned", "tokens") - mean(p, "base", "tokens") for p in prompts])
    cut = np.array(
        [all(not a["ended"] and a["tokens"] >= limit for s in SIDES for a in p[s]) for p in prompts]
    )
    rho = spearmanr(length, score) if np.ptp(length) > 0 else None
    return {
        "equal_length": {"prompts": int(cut.sum()), **outcomes(score[cut], TIE_TOLERANCE)}
        if cut.any()
        else None,
        "length_vs_judge_spearman": rho and {"rho": float(rho.statistic), "p_value": float(rho.pvalue)},
    }
