"""How each row picks its next token from its last logits, by its own settings: the repetition penalty
and the n-gram ban over its own tokens (never the padding, never the end-of-turn tokens), its minimum
length, then greedy argmax or a draw with its own
temperature, top-p and seeded generator. A row's pick never looks at another row's."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from assistant.generation import GenerationSettings

TOP_K = 64  # the nucleus is looked for among this many most likely tokens first (see ``nucleus``)
WIDER_K = 1024  # ... then among this many, before the whole vocabulary is sorted


@dataclass(eq=False)
class Row:
    """One answer being generated: its request, its place in it, its own settings and sampling
    generator, and its tokens so far (prompt and answer)."""

    request: object  # an ``assistant.engine.requests.Request``; sampling reads only its rows' settings
    index: int
    settings: GenerationSettings
    ids: list[int]
    generator: torch.Generator = field(init=False)
    new: int = 0  # tokens chosen so far

    def __post_init__(self) -> None:
        seed = self.settings.seed
        if seed is None:
            seed = random.SystemRandom().randrange(2**63)
        self.generator = torch.Generator().manual_seed(seed)


def nucleus(probs: torch.Tensor, top: torch.Tensor, ids: torch.Tensor, top_p: float) -> torch.Tensor:
    """The ids of the tokens in the top-p nucleus of ``probs`` (one row), ascending, given its most likely
    tokens ``top`` (sorted, with their ``ids``): looked for among the ``WIDER_K`` most likely when those
    hold less than top_p, and in the fully sorted vocabulary only when these do too.

    This is the set transformers' ``TopPLogitsWarper`` keeps (tested), without sorting the whole
    vocabulary for every row at every step: a sort of SmolLM2's 49,152 tokens costs several times a top
    1024 and tens of times a top 64 (``benchmarks/decode_rows.py`` times the three)."""
    if top_p >= 1:
        return torch.arange(len(probs))
    if top.sum() < top_p and len(probs) > WIDER_K:
        top, ids = probs.topk(WIDER_K)
    if top.sum() < top_p:
        top, ids = probs.sort(descending=True)
    return ids[(top.cumsum(0) - top) < top_p].sort().values  # the tokens before each hold less than top_p


def draw(probs: torch.Tensor, kept: torch.Tensor, generator: torch.Generator) -> int:
    """The token ``torch.multinomial(p, 1, generator=generator)`` picks, where ``p`` is ``probs`` (one
    row) with the tokens outside ``kept`` (ascending ids) set to 0, leaving ``generator`` where
    multinomial leaves it: the same token and the same later draws (tested), at a fraction of the cost.

    multinomial draws one exponential per token of the whole vocabulary and takes the argmax of
    ``p / q`` (the Gumbel-max trick); on a CPU each exponential is ``-log1p(-u)`` of the next uniform
    double of the generator. ``torch.rand`` takes the same uniforms, and only the kept tokens need
    their logarithm: on SmolLM2's 49,152 tokens that logarithm was most of the 1 ms a row's draw took
    at every step (``benchmarks/decode_rows.py``)."""
    u = torch.rand(len(probs), dtype=torch.float64, generator=generator)[kept]
    q = torch.log1p(-u).neg_().to(probs.dtype)
    return int(kept[(probs[kept] / q).argmax()])


def pick(scores: torch.Tensor, row: Row, stop_ids: list[int]) -> int:
    """The row's next token from its last scores (one row, fp32, changed in place). The order is
    ``generate``'s: the repetition penalty, the n-gram ban, the minimum length, then greedy or a draw over
    the whole vocabulary in its own order (rounding noise can reorder near-equal probabilities in a
    sorted list, but cannot move a token's place here)."""
    settings = row.settings
    if settings.repetition_penalty != 1.0:  # transformers' RepetitionPenaltyLogitsProcessor, over this
        # row's own tokens, sparing the end-of-turn tokens: the chat template puts them in every prompt,
        # and penalised there a row could hardly end (a penalised base ended 16% of its answers, not 47%)
        ids = torch.tensor(sorted(set(row.ids) - set(stop_ids)), dtype=torch.long, device=scores.device)
        seen, penalty = scores[ids], settings.repetition_penalty
        scores[ids] = torch.where(seen < 0, seen * penalty, seen / penalty)
    if settings.no_repeat_ngram_size:
        banned = sorted(repeated(row.ids, settings.no_repeat_ngram_size) - set(stop_ids))
        scores[banned] = -float("inf")
    if row.new < settings.min_new_tokens:
        scores[stop_ids] = -float("inf")
    if not settings.do_sample:
        return int(scores.argmax())
    probs = torch.softmax(scores.cpu() / settings.temperature, dim=-1)
    top, top_ids = probs.topk(min(TOP_K, probs.shape[-1]))
    return draw(probs, nucleus(probs, top, top_ids, settings.top_p), row.generator)


def repeated(ids: list[int], n: int) -> set[int]:
    """The tokens that would repeat an n-gram of ``ids`` (transformers' NoRepeatNGramLogitsProcessor:
    every earlier n-gram whose first n - 1 tokens are the last n - 1)."""
    if len(ids) < n:
        return set()
    head = tuple(ids[len(ids) - n + 1 :])
    return {ids[i + n - 1] for i in range(len(ids) - n + 1) if tuple(ids[i : i + n - 1]) == head}


def choose(
    logits: torch.Tensor, rows: list[Row], stop_ids: list[int]
) -> tuple[torch.Tensor, dict[int, Exception]]:
    """The next token of every row (``logits``: ``[rows, vocab]``), and the rows whose pick failed, by
    index, with the error: such a row's token is its argmax, and its request is failed by the worker."""
    scores = logits.float()
    tokens, faults = [], {}
    for i, row in enumerate(rows):
        try:
            tokens.append(pick(scores[i], row, stop_ids))
        except Exception as error:
            faults[i] = error
            tokens.append(int(logits[i].argmax()))
        row.ids.append(tokens[-1])
        row.new += 1
    return torch.tensor(tokens, device=logits.device), faults
