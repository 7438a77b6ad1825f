"""Answers of base and tuned to every held-out prompt, scored by a judge the model never trained on.

Each prompt is answered ``k`` times by each model (seeds ``seed .. seed+k-1``), base rows and tuned
rows in separate batches with the same seed, so the base answers do not depend on the adapter under
test. Per prompt, the judge's mean score over the k answers is compared between tuned and base: the
intervals then cover the model's sampling noise as well as which prompts were drawn; prompts of one
conversation tree count together (stats). The judge's own accuracy on the held-out human pairs, beside
what length alone would score there (length), is measured beside its verdicts, so a reader knows how far
to trust them; its verdicts come with the win rate read at equal answer length. The training rewards are
reported too, but as what they are: the training objective.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from tqdm.auto import tqdm

from train.data import prompt_messages
from train.evaluate.defects import both_clean, is_clean
from train.evaluate.length import equal_length, length_baselines
from train.evaluate.stats import mean, outcomes, rate

TIE_TOLERANCE = 1e-6  # scores closer than this are a tie (float noise, not a preference)
SIDES = ("base", "tuned")
STOP_DROP = 0.10  # a tuned model that ends this much less often by itself than its base is flagged


# The sampler the Space serves with, as report.json records it: assistant.engine's own (temperature,
# then top-p over the whole vocabulary, one seeded generator per row), never transformers' sampling,
# which adds its default top_k=50 unless told otherwise.
SAMPLER = (
    "assistant.engine (the Space's): repetition penalty over the row's tokens, end-of-turn tokens spared; "
    "temperature, then top-p; no top-k (top_k 0 = off)"
)


def sampling(settings, repetition_penalty: float = 1.0) -> dict:
    """Every sampling setting of an evaluation's answers, top_k included, for report.json."""
    from dataclasses import asdict

    return {**asdict(settings), "top_k": 0, "repetition_penalty": repetition_penalty, "sampler": SAMPLER}


def knob(repetition_penalty: float, no_repeat_ngram_size: int) -> dict | None:
    """The decoding knob the base answers under beside its plain answers (GenerationSettings' fields,
    each request's own), or None when both are off."""
    chosen = {}
    if repetition_penalty and repetition_penalty != 1.0:
        chosen["repetition_penalty"] = repetition_penalty
    if no_repeat_ngram_size:
        chosen["no_repeat_ngram_size"] = no_repeat_ngram_size
    return chosen or None


def knob_label(chosen: dict) -> str:
    return " and ".join(f"{name.replace('_', ' ')} {value}" for name, value in chosen.items())


def serve(loaded, conversations: list, route: str | None, settings) -> list:
    """Final answers of one batch through the Space's own engine (assistant.engine.stream), so the
    evaluation samples exactly as the Space does; one request, one ``generate`` call."""
    from assistant.engine import stream

    snapshots = stream(
        loaded, conversations, [route] * len(conversations), settings, max_batch=len(conversations)
    )
    *_, final = snapshots  # the last snapshot is the final answers
    return final


def generate_answers(
    loaded, prompts: list[dict], settings, k: int, batch_size: int, base=None, knob: dict | None = None
) -> dict:
    """``answers[side][i][j]``: the j-th answer (seed settings.seed + j) of ``side`` to prompt i; the
    base's from ``base`` when an earlier run on the same base, prompts and settings gave them. With
    ``knob`` (settings fields), also "penalised": the base's answers under that knob (same seeds)."""
    from assistant.generation import BASE, tuned_adapter

    conversations = [prompt_messages(p["prompt"]) for p in prompts]
    routes = {"base": BASE, "tuned": tuned_adapter(loaded), "penalised": BASE}
    base = base or {}
    wanted = [side for side in (*SIDES, "penalised") if side not in base and (side != "penalised" or knob)]
    answers = {**base, **{side: [[] for _ in prompts] for side in wanted}}
    with tqdm(
        total=len(wanted) * k * len(prompts), desc=f"answering ({', '.join(wanted)})", unit=" answer"
    ) as bar:
        for side in wanted:
            sided = replace(settings, **knob) if side == "penalised" else settings
            for j in range(k):
                seeded = replace(sided, seed=settings.seed + j)
                for start in range(0, len(prompts), batch_size):
                    rows = conversations[start : start + batch_size]
                    batch = serve(loaded, rows, routes[side], seeded)
                    for i, answer in enumerate(batch, start):
                        answers[side][i].append(answer)
                    bar.update(len(rows))
    return answers


def per_prompt(values: list[list[float]]) -> np.ndarray:
    return np.array([np.nanmean(v) if len(v) else math.nan for v in values], dtype=float)


def trees(prompts: list[dict]) -> list:
    """Each prompt's conversation tree (None when unknown: then it counts as a tree of its own)."""
    return [p.get("tree_id") for p in prompts]


def describe(answers: dict, seed: int, prompts: list[dict]) -> dict:
    """Per side: answer length (mean over prompts of the per-prompt means) and the share of answers
    that ended by themselves (over every answer; both clustered by tree)."""
    per_answer = [t for t, row in zip(trees(prompts), answers["base"], strict=True) for _ in row]
    return {
        side: {
            "answer_tokens": mean(
                per_prompt([[a.tokens for a in row] for row in answers[side]]), seed, trees(prompts)
            ),
            "ended_properly": rate([float(a.ended) for row in answers[side] for a in row], per_answer),
        }
        for side in SIDES
    }


def stop_guard(answers: dict | None) -> dict | None:
    """The stop-rate guard: flagged when the tuned model ends its answers by itself more than STOP_DROP
    less often than its base (an adapter that learned to run to the length cap, which a judge that
    likes length rewards). ``answers`` is a report's "answers"."""
    ended = {side: ((answers or {}).get(side) or {}).get("ended_properly") for side in SIDES}
    shares = {side: e.get("rate", e.get("mean")) if e else None for side, e in ended.items()}
    if None in shares.values():
        return None
    drop = shares["base"] - shares["tuned"]
    return {**shares, "drop": drop, "limit": STOP_DROP, "flagged": drop > STOP_DROP}


def stop_flag(guard: dict | None) -> str | None:
    """The one-line flag a report and a card print for a guard that tripped."""
    if not guard or not guard["flagged"]:
        return None
    return (
        f"Flag: the tuned model ends its answers by itself {100 * guard['drop']:.0f} points less often than "
        f"its base ({100 * guard['tuned']:.0f}% against {100 * guard['base']:.0f}%; the limit is "
        f"{100 * guard['limit']:.0f}): it runs to the length cap; a flagged adapter is never promoted to "
        "a demo adapter."
    )


def judge_accuracy(judge, pairs: list[dict]) -> dict:
    """How often the judge prefers the human-chosen reply of a held-out pair (a rate, clustered by tree),
    with ``baselines``: what length alone scores on the same pairs (length.length_baselines)."""
    conversations = [prompt_messages(p["prompt"]) for p in pairs]
    chosen = judge.score(conversations, [p["chosen"] for p in pairs])
    rejected = judge.score(conversations, [p["rejected"] for p in pairs])
    right = np.greater(chosen, rejected)
    return {**rate(right, trees(pairs)), "baselines": length_baselines(pairs, right)}


def judge_scores(judge, prompts: list[dict], side: list[list]) -> list[list[float]]:
    """The judge's score of every answer of one side: ``scores[i][j]`` for answer j to prompt i."""
    flat = [(i, a) for i, row in enumerate(side) for a in row]
    values = judge.score([prompt_messages(prompts[i]["prompt"]) for i, _ in flat], [a.text for _, a in flat])
    scores = [[] for _ in prompts]
    for (i, _), value in zip(flat, values, strict=True):
        scores[i].append(float(value))
    return scores


def judge_verdicts(scores: dict, prompts: list[dict], answers: dict, seed: int, limit: int) -> dict:
    """Tuned against base per prompt (mean judge score over the k answers), read also at equal length;
    ``scores`` has each side's judge_scores; ``limit`` is the answers' max_new_tokens."""
    means = {side: per_prompt(scores[side]) for side in SIDES}
    # the same seed on both sides: sample j of base against sample j of tuned
    samples = np.array(scores["tuned"]) - np.array(scores["base"])  # [prompts, k]
    tree = trees(prompts)
    difference = means["tuned"] - means["base"]
    return {
        "base": {"score": mean(means["base"], seed, tree)},
        "tuned": {"score": mean(means["tuned"], seed, tree)},
        "tuned_minus_base": mean(difference, seed, tree),
        "per_prompt": outcomes(difference, TIE_TOLERANCE, tree),
        "per_answer": {
            "win": rate(
                samples.ravel() > TIE_TOLERANCE, np.repeat(np.array(tree, dtype=object), samples.shape[1])
            ),
            "n": int(samples.size),
        },
        "length_controlled": length_control(difference, answers, tree, limit),
        "both_clean": both_clean(
            {side: [[is_clean(a) for a in row] for row in answers[side]] for side in SIDES},
            scores,
            tree,
            TIE_TOLERANCE,
        ),
        "scores": {side: scores[side] for side in SIDES},
    }


def capped(answer, limit: int) -> bool:
    """The answer ran to the token limit: cut there, neither ended nor stopped at a new turn."""
    return not answer.ended and not getattr(answer, "cut", False) and answer.tokens >= limit


def length_control(difference: np.ndarray, answers: dict, tree: list, limit: int) -> dict:
    """The per-prompt win rate read at equal answer length (length.equal_length: in characters, the
    prompts where both models' answers all ran to the limit left out), and the rank correlation of the
    per-prompt length and judge-score differences."""
    from scipy.stats import spearmanr

    chars = {side: per_prompt([[len(a.text) for a in row] for row in answers[side]]) for side in SIDES}
    both_cut = [all(capped(a, limit) for side in SIDES for a in answers[side][i]) for i in range(len(tree))]
    length = chars["tuned"] - chars["base"]
    outcome = np.where(difference > TIE_TOLERANCE, 1.0, np.where(difference < -TIE_TOLERANCE, 0.0, 0.5))
    rho = spearmanr(length, difference) if np.ptp(length) > 0 and np.ptp(difference) > 0 else None
    return {
        **equal_length(outcome, chars["base"], chars["tuned"], both_cut, tree),
        "length_vs_judge_spearman": rho and {"rho": float(rho.statistic), "p_value": float(rho.pvalue)},
    }


def penalised_verdict(scores: dict, prompts: list[dict], answers: dict, knob: dict) -> dict:
    """The base under the decoding ``knob`` against the plain base, and the tuned model against it, on
    the same prompts and seeds: loops and ends (defects.compare) and the judge's per-prompt verdict,
    overall and where both answers are clean. "Tuning helps" means beating this too. Never targeted."""
    from train.evaluate.defects import compare

    tree = trees(prompts)
    out = {
        "knob": knob,
        "repetition_penalty": knob.get("repetition_penalty", 1.0),
        **compare(answers["base"], answers["penalised"], tree, ("base", "penalised")),
        "tuned_against_it": compare(answers["penalised"], answers["tuned"], tree, ("penalised", "tuned")),
    }
    if scores:
        difference = per_prompt(scores["penalised"]) - per_prompt(scores["base"])
        out["judge"] = {
            "per_prompt": outcomes(difference, TIE_TOLERANCE, tree),
            "scores": scores["penalised"],
        }
        clean = {
            side: [[is_clean(a) for a in row] for row in answers[side]] for side in ("penalised", "tuned")
        }
        pairs = {"base": scores["penalised"], "tuned": scores["tuned"]}  # the knob in the base's place
        out["tuned_against_it"]["judge"] = {
            "per_prompt": outcomes(
                per_prompt(scores["tuned"]) - per_prompt(scores["penalised"]), TIE_TOLERANCE, tree
            ),
            "both_clean": both_clean(
                {"base": clean["penalised"], "tuned": clean["tuned"]}, pairs, tree, TIE_TOLERANCE
            ),
        }
    return out


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
        implicit_reward_adapter=recipe.get("implicit_reward_adapter"),
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
            name: mean(v.reshape(len(prompts), k).mean(axis=1), seed, trees(prompts))
            for name, v in {**values, "total": total}.items()
        }
    return result
