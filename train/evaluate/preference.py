"""Preference accuracy: does the model give the reply people preferred a higher likelihood?

For every held-out pair, the mean per-token log-likelihood of the chosen and of the rejected reply
given the prompt (rendered by the tokenizer's chat template, the one prompt format of training and
serving), for base and tuned from one copy of the weights. Human labels, independent of every
training reward: the primary measure, except for DPO, whose training objective is exactly this
margin (for DPO it is the training objective measured on held-out pairs). Tuned against base is an
exact McNemar test on the pairs that flipped, counted per conversation tree, and Newcombe's paired
interval for the difference of accuracies.
"""

from __future__ import annotations

import math

import numpy as np

from train.data import prompt_messages
from train.evaluate.stats import mean, paired_difference, rate, sign_test

BASE = "__base__"


def reply_tokens(tokenizer, prompt: str | list[dict], reply: str) -> tuple[list[int], list[int]]:
    """(prompt ids, reply ids): the prompt with the generation prompt, then the reply as the template
    closes it (with its end-of-turn token), tokenized apart the way generation sees them."""
    messages = prompt_messages(prompt)
    prefix = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": reply}], tokenize=False)
    if full.startswith(prefix):
        tail = full[len(prefix) :].rstrip()  # drop only the newline a template puts between turns
    else:  # a template that rewrites earlier turns: fall back to the reply and the end of sequence
        tail = reply + (tokenizer.eos_token or "")
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    return encode(prefix), encode(tail)


def fit(prompt_ids: list[int], reply_ids: list[int], max_length: int) -> tuple[list[int], list[int], bool]:
    """Cut a sequence to ``max_length``: the reply's tail first (to half), then the prompt's head."""
    if len(prompt_ids) + len(reply_ids) <= max_length:
        return prompt_ids, reply_ids, False
    reply_ids = reply_ids[: max(max_length - len(prompt_ids), max_length // 2)]
    prompt_ids = prompt_ids[-(max_length - len(reply_ids)) :]
    return prompt_ids, reply_ids, True


def batch_mean_logprobs(model, rows: list[tuple[list[int], list[int]]], pad_id: int, device, **kwargs):
    """A tensor: the mean log-probability of each row's reply ids given its prompt ids, in one forward.

    Rows are left-padded so every reply ends at the last position, and only the reply positions get
    logits (``logits_to_keep``); ``kwargs`` go to the model (PEFT's ``adapter_names``). Differentiable:
    the caller decides on ``torch.no_grad``.
    """
    import torch

    width = max(len(prompt) + len(reply) for prompt, reply in rows)
    keep = max(len(reply) for _, reply in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, (prompt, reply) in enumerate(rows):
        input_ids[j, width - len(prompt) - len(reply) :] = torch.tensor(prompt + reply)
        mask[j, width - len(prompt) - len(reply) :] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(
        input_ids=input_ids.to(device),
        attention_mask=mask.to(device),
        position_ids=position_ids.to(device),
        logits_to_keep=keep + 1,
        **kwargs,
    ).logits[:, -keep - 1 : -1]
    targets = input_ids[:, -keep:].to(logits.device)
    means = []
    for j, (_, reply) in enumerate(rows):  # row by row: a [reply, vocab] float copy at a time
        row, target = logits[j, keep - len(reply) :].float(), targets[j, keep - len(reply) :, None]
        means.append((row.gather(-1, target).squeeze(-1) - row.logsumexp(-1)).mean())
    return torch.stack(means)


def mean_logprobs(
    model,
    rows: list[tuple[list[int], list[int], str]],
    pad_id: int,
    batch_size: int,
    device,
    desc: str = "scoring",
) -> list[float]:
    """Mean log-probability of each row's reply tokens given its prompt, with its adapter.

    ``rows`` are (prompt ids, reply ids, adapter name), the adapter being "__base__" or the adapter's
    name: one batch can mix both (PEFT's ``adapter_names``). Rows are batched by length.
    """
    import torch
    from tqdm.auto import tqdm

    scores = [math.nan] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]) + len(rows[i][1]))
    with torch.no_grad(), tqdm(total=len(rows), desc=desc, unit=" seq") as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            means = batch_mean_logprobs(
                model, [rows[i][:2] for i in chunk], pad_id, device, adapter_names=[rows[i][2] for i in chunk]
            )
            for i, score in zip(chunk, means.tolist(), strict=True):
                scores[i] = score
            bar.update(len(chunk))
    return scores


def preference_accuracy(
    loaded, pairs: list[dict], batch_size: int, max_length: int, seed: int, base_scores: list | None = None
) -> dict:
    """Chosen vs rejected mean log-likelihood, base and tuned: per pair, and the summary.

    ``base_scores`` ([chosen, rejected] per pair, from an earlier run on the same base and pairs) skips
    the base rows: the base does not change between the adapters of one study.
    """
    tokenizer = loaded.tokenizer
    adapter = loaded.model.active_adapter
    sides = [adapter] if base_scores else [BASE, adapter]
    rows, truncated = [], 0
    for pair in pairs:
        for reply in (pair["chosen"], pair["rejected"]):
            prompt_ids, reply_ids, cut = fit(*reply_tokens(tokenizer, pair["prompt"], reply), max_length)
            truncated += cut
            rows += [(prompt_ids, reply_ids, side) for side in sides]
    scores = mean_logprobs(
        loaded.model, rows, tokenizer.pad_token_id, batch_size, loaded.device, desc="preference accuracy"
    )
    if base_scores:  # interleave as if both had been scored here
        scores = [x for (b_c, b_r), k in zip(base_scores, range(0, len(scores), 2), strict=True)
                  for x in (b_c, scores[k], b_r, scores[k + 1])]  # fmt: skip
    per_pair = []
    for k, pair in enumerate(pairs):
        base_chosen, tuned_chosen, base_rejected, tuned_rejected = scores[4 * k : 4 * k + 4]
        per_pair.append(
            {
                "tree_id": pair.get("tree_id"),
                "parent_id": pair.get("parent_id", pair.get("prompt_id")),
                "chosen_id": pair.get("chosen_id"),
                "rejected_id": pair.get("rejected_id"),
                "base": {
                    "chosen": base_chosen,
                    "rejected": base_rejected,
                    "margin": base_chosen - base_rejected,
                },
                "tuned": {
                    "chosen": tuned_chosen,
                    "rejected": tuned_rejected,
                    "margin": tuned_chosen - tuned_rejected,
                },
            }
        )
    margins = {side: np.array([p[side]["margin"] for p in per_pair]) for side in ("base", "tuned")}
    correct = {side: (margins[side] > 0).astype(float) for side in margins}
    trees = [p["tree_id"] for p in per_pair]
    return {
        "n": len(pairs),
        "truncated_replies": truncated,
        "max_length": max_length,
        "base": {"accuracy": rate(correct["base"], trees), "margin": mean(margins["base"], seed, trees)},
        "tuned": {"accuracy": rate(correct["tuned"], trees), "margin": mean(margins["tuned"], seed, trees)},
        "tuned_minus_base": {
            "accuracy": paired_difference(correct["tuned"], correct["base"], trees),
            "margin": mean(margins["tuned"] - margins["base"], seed, trees),
        },
        # exact McNemar: better = pairs only the tuned model gets right, worse = only the base
        "test": sign_test(correct["tuned"] - correct["base"], clusters=trees),
        "margin_test": sign_test(margins["tuned"] - margins["base"], clusters=trees),
        "pairs": per_pair,
    }
