"""A preference anchor for GRPO: the length-normalised DPO loss on the training pairs, added to GRPO's loss.

GRPO learns what its rewards pay for from its own samples and drifts on what they do not: on the sealed
test the two study runs at the serving length lost 2.6 and 3.5 points of preference accuracy (how often
the reply people preferred is the likelier one), which dev did not show. InstructGPT's PPO-ptx mixes a
supervised loss into the RL loss against such an "alignment tax" (Ouyang et al. 2022); here the mixed-in
loss is the one that measures what drifted: DPO with TRL's ``sigmoid_norm`` loss (the mean per-token
log-ratio, as ``recipes/study/dpo-length-normalised.yaml`` trained), against the base with the adapter
off, on ``preference_anchor_pairs`` training pairs at each loss call, in a fixed shuffled order.

A pair longer than ``preference_anchor_max_length`` tokens (prompt + reply) is cut, its reply's tail
first, and a cut reply loses its end-of-turn token: at 256 tokens 182 of the study's 254 chosen replies
do. With ``preference_anchor_whole`` such a pair is left out instead, so every reply the anchor sees
ends as people wrote it.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from train.config import ConfigError
from train.evaluate.preference import batch_mean_logprobs, fit, reply_tokens
from train.turns import TurnStopGRPOTrainer

BETA = 2.0  # dpo-length-normalised's: per-token means are ~1/length of the sums DPO's beta 0.1 scales


def anchor_rows(
    pairs: list[dict], tokenizer, seed: int, max_length: int, whole: bool = False
) -> list[tuple[tuple, tuple]]:
    """((prompt ids, chosen ids), (prompt ids, rejected ids)) of the pairs, shuffled: each side cut to
    ``max_length`` tokens, or with ``whole`` only the pairs whose two sides fit uncut."""
    rows = []
    for pair in pairs:
        sides = [
            fit(*reply_tokens(tokenizer, pair["prompt"], pair[s]), max_length) for s in ("chosen", "rejected")
        ]
        if not (whole and any(cut for *_, cut in sides)):
            rows.append(tuple(side[:2] for side in sides))
    if not rows:
        raise ConfigError(
            f"no training pair fits whole in preference_anchor_max_length {max_length} tokens: "
            "raise it or set preference_anchor_whole: false"
        )
    random.Random(seed).shuffle(rows)
    return rows


def anchor_loss(model, rows, pad_id: int, device) -> tuple[torch.Tensor, dict]:
    """DPO's sigmoid_norm loss over ``rows`` (see anchor_rows), and what it saw: the policy's margin
    (chosen minus rejected mean log-probability) beside the base's, and how often it ranks them right.

    ``model`` is the PeftModel itself, not a DDP wrapper: DDP expects one forward per backward, and the
    gradients of this forward reach the same parameters, reduced with GRPO's in the one backward."""
    sequences = [side for row in rows for side in row]  # chosen, rejected, chosen, ...
    policy = batch_mean_logprobs(model, sequences, pad_id, device)
    with torch.no_grad(), model.disable_adapter():
        base = batch_mean_logprobs(model, sequences, pad_id, device)
    policy_margin, base_margin = policy[0::2] - policy[1::2], base[0::2] - base[1::2]
    loss = -F.logsigmoid(BETA * (policy_margin - base_margin)).mean()
    seen = {
        "anchor/margin": policy_margin.mean().item(),
        "anchor/base_margin": base_margin.mean().item(),
        "anchor/accuracy": (policy_margin > 0).float().mean().item(),
    }
    return loss, seen


class AnchoredGRPOTrainer(TurnStopGRPOTrainer):
    """TurnStopGRPOTrainer whose training loss adds ``weight`` times the anchor's (see the module)."""

    def __init__(
        self, *args, anchor_pairs: list[dict], weight: float, pairs_per_call: int, max_length: int, whole: bool,
        **kwargs,
    ):  # fmt: skip
        super().__init__(*args, **kwargs)
        self.anchor_rows = anchor_rows(anchor_pairs, self._tokenizer, self.args.seed, max_length, whole)
        kept = "fit whole in" if whole else "cut to"
        print(
            f"preference anchor: {len(self.anchor_rows)} of {len(anchor_pairs)} pairs, {kept} {max_length} tokens"
        )
        self.anchor_weight, self.anchor_take = weight, pairs_per_call
        self.anchor_pad = self._tokenizer.pad_token_id or self._tokenizer.eos_token_id
        self._anchor_calls = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if not model.training:
            return loss
        if self._anchor_calls is None:  # a resumed run goes on where it stopped: one call per micro-batch
            self._anchor_calls = self.state.global_step * self.args.gradient_accumulation_steps
        start = self._anchor_calls * self.anchor_take
        rows = [self.anchor_rows[(start + i) % len(self.anchor_rows)] for i in range(self.anchor_take)]
        self._anchor_calls += 1
        anchor, seen = anchor_loss(self.accelerator.unwrap_model(model), rows, self.anchor_pad, loss.device)
        for key, value in {"anchor/loss": anchor.item(), **seen}.items():
            self._metrics["train"][key].append(value)
        return loss + self.anchor_weight * anchor
