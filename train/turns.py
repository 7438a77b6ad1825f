"""GRPO completions that end where an answer ends: the one end-of-turn rule of ``assistant.prompt``.

TRL's GRPOTrainer stops a completion only at EOS. Phi-2 is a base model: after its answer it often
writes a new ``Instruct:`` turn instead, so without this every completion would run on to
``max_completion_length``, its reward would score the invented turns and its loss would train on them.
``turn_stops(tokenizer)`` says what ends an answer in the tokenizer's template (the apps stop there):
special token ids (ChatML's ``<|im_start|>``, Phi-2's EOS), which join TRL's ``eos_token_ids``, and
plain-text markers (Phi-2's ``Instruct:``), which TRL has no way to stop at: ``stop_strings`` raises in
``generate`` because TRL passes it no tokenizer.

``TurnStopGRPOTrainer`` cuts each completion right after the token that completes a marker, before
TRL decodes it for the rewards and builds the loss mask from its length, so all three end there. The
marker's own tokens stay, as TRL keeps the EOS token and ``stop_strings`` keeps its string: ``no_user_turn``
then still sees (and penalises) the run-on, and the loss learns from the tokens that chose it.
On the transformers path generation also stops there (transformers' ``StopStringCriteria``), so a batch
whose rows all ended does not run on to the limit; under vLLM only the cut applies.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager

from trl import GRPOTrainer


def turn_end(ids: list[int], tokenizer, markers: tuple[str, ...]) -> int | None:
    """How many of ``ids`` to keep: up to and including the token that completes the first ``markers``
    text (decoded as TRL decodes completions); None when no marker occurs."""
    if not markers or not ids:
        return None

    def has_marker(n: int) -> bool:
        text = tokenizer.decode(ids[:n], skip_special_tokens=True)
        return any(marker in text for marker in markers)

    if not has_marker(len(ids)):
        return None
    low, high = 1, len(ids)  # the shortest prefix holding a marker (a longer prefix holds it too)
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if has_marker(middle) else (middle + 1, high)
    return low


def add_turn_stop_ids(model, tokenizer) -> list[int]:
    """Make the template's end-of-turn token ids (``turn_stops``) EOS ids of ``model``'s generation
    config, which TRL reads once, when the trainer is built; return them all."""
    from assistant.prompt import turn_stops

    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    ids = sorted({*ids, *turn_stops(tokenizer)[0], tokenizer.eos_token_id} - {None})
    model.generation_config.eos_token_id = ids
    return ids


class TurnStopGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose completions end at the chat template's end of turn (see the module)."""

    def __init__(self, *args, **kwargs):
        from assistant.prompt import turn_stops

        super().__init__(*args, **kwargs)
        self.turn_markers = turn_stops(self._tokenizer)[1]
        self._stop_at_marker = None
        if self.turn_markers:
            from transformers import StoppingCriteriaList, StopStringCriteria

            self._stop_at_marker = StoppingCriteriaList(
                [StopStringCriteria(self._tokenizer, list(self.turn_markers))]
            )

    @contextmanager
    def _stopping_generate(self):
        """``generate`` of the model TRL generates with takes our stopping criteria for the call (TRL
        passes generate none of its own; a DeepSpeed engine unwraps to another object and only cuts)."""
        model = self.accelerator.unwrap_model(self.model_wrapped)
        if self._stop_at_marker is None or "generate" in vars(model):
            yield
            return
        model.generate = functools.partial(model.generate, stopping_criteria=self._stop_at_marker)
        try:
            yield
        finally:
            del model.generate  # the class's own generate again

    def _generate_single_turn(self, prompt_ids, *args, **kwargs):
        with self._stopping_generate():
            completion_ids, logprobs = super()._generate_single_turn(prompt_ids, *args, **kwargs)
        ends = [turn_end(ids, self._tokenizer, self.turn_markers) for ids in completion_ids]
        # Logged beside TRL's clipped_ratio, which counts these too (their last token is no EOS).
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["completions/turn_end_ratio"].append(
            sum(end is not None for end in ends) / max(len(ends), 1)
        )
        ends = [len(ids) if end is None else end for ids, end in zip(completion_ids, ends, strict=True)]
        completion_ids = [ids[:end] for ids, end in zip(completion_ids, ends, strict=True)]
        if logprobs is not None:
            logprobs = [lp[:end] for lp, end in zip(logprobs, ends, strict=True)]
        return completion_ids, logprobs
