"""The implicit reward of a DPO adapter: how much more likely the adapter makes a reply than its base does.

DPO trains ``beta * (log p_dpo(y|x) - log p_base(y|x))`` to rank the chosen reply above the rejected one,
so that log-ratio is a reward model that comes with every DPO adapter (Rafailov et al. 2023). Here it is
length-normalised, the mean per-token log-ratio (as the sigmoid_norm loss the demo adapter was trained
with): a sum would pay a long reply for its length alone. Base and adapter are scored from one copy of
the weights in one batch (PEFT's ``adapter_names``), as train.evaluate.preference scores them.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from train.evaluate.preference import BASE, fit, mean_logprobs, reply_tokens


class ImplicitReward:
    def __init__(
        self,
        adapter: str,
        device: str | None = None,
        quantize: bool = False,
        batch_size: int = 8,
        max_length: int = 1024,
    ):
        from peft import PeftModel
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        from assistant.models import precision_plan, resolve_base

        self.name = adapter
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size, self.max_length = batch_size, max_length
        base = resolve_base(
            json.loads((Path(adapter) / "adapter_config.json").read_text())["base_model_name_or_path"]
        )
        # The one precision rule. Beside a 4-bit policy the base is 4-bit too: the rule alone would put an
        # fp32 Phi-2 (about 11 GB) on a T4, which has no bf16, beside the policy on a 16 GB card; a QLoRA
        # DPO adapter was trained over that 4-bit base anyway.
        model_type = getattr(AutoConfig.from_pretrained(base), "model_type", None)
        kwargs, _ = precision_plan(self.device, quantize, model_type)
        model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
        model = PeftModel.from_pretrained(model, adapter)
        self.model = (model if quantize else model.to(self.device)).eval()  # a 4-bit model is placed
        self.tokenizer = AutoTokenizer.from_pretrained(adapter)
        self.pad_id = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id

    def score_ids(self, rows: list[tuple[list[int], list[int]]]) -> list[float]:
        """Mean per-token log p_dpo - log p_base of each (prompt ids, reply ids)."""
        rows = [fit(prompt, reply, self.max_length)[:2] for prompt, reply in rows]
        both = [(prompt, reply, side) for prompt, reply in rows for side in (BASE, "default")]
        scores = mean_logprobs(self.model, both, self.pad_id, self.batch_size, self.device, desc="implicit")
        return [tuned - base for base, tuned in zip(scores[::2], scores[1::2], strict=True)]

    def prompt_ids(self, conversation: list[dict]) -> list[int]:
        text = self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def score(self, conversations: list[list[dict]], answers: list[str]) -> list[float]:
        """The same call as train.scorer.Scorer.score: replies given as text, closed by the chat template."""
        rows = [reply_tokens(self.tokenizer, c, a) for c, a in zip(conversations, answers, strict=True)]
        return self.score_ids(rows)


@functools.cache
def implicit_reward(adapter: str, device: str | None = None, quantize: bool = False) -> ImplicitReward:
    """One loaded copy per process (GRPO calls its reward every step)."""
    return ImplicitReward(adapter, device, quantize)
