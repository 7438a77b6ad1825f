"""The batcher's decode loop, one step at a time: a running batch that rows join and leave between steps.

The requests that arrive together are prefilled together (one forward over all their rows' prompts,
left-padded among themselves), which gives their first tokens at once; that KV cache is then merged
into the running batch's: the shorter cache is padded on the left along the sequence axis, the two are
concatenated along the batch axis, and the attention mask marks the padding so no row ever attends to
it. Each decoding step is one forward
of every running row's last token, with explicit position ids (each row counts only its own tokens)
and PEFT's ``adapter_names`` routing each row through its own adapter. A row that is done is dropped at
once (the batch axis indexed), and the columns that only dropped rows used are trimmed from the left.

Each row picks its own next token (``choose``): the model's repetition penalty over its own tokens
(never the padding), its own minimum length, then greedy argmax or a draw with its own temperature,
top-p and seeded generator. Nothing in a row's token depends on the other rows, but the floating-point
sums of a batched forward can: a masked pad column adds exactly zero, yet a kernel may add the same
numbers in another order for another batch shape (tests compare each row with the same request alone).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from assistant.generation import GenerationSettings, _encode, _routing

TOP_K = 64  # the nucleus is looked for among this many most likely tokens first (see ``nucleus``)
WIDER_K = 1024  # ... then among this many, before the whole vocabulary is sorted
SPARE = 128  # columns the KV cache grows by when it runs out of room (see ``_append``)


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


@dataclass(eq=False)
class Row:
    """One answer being generated: its request (``request.streamer`` gets its tokens), its place in it,
    its own settings and sampling generator, and its tokens so far (prompt and answer)."""

    request: object
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

    @property
    def adapter(self) -> str:
        return self.request.adapters[self.index]

    @property
    def done(self) -> bool:
        return self.request.closed or self.request.streamer.done[self.index]


def choose(logits: torch.Tensor, rows: list[Row], stop_ids: list[int], penalty: float) -> torch.Tensor:
    """The next token of every row, from its last logits (``[rows, vocab]``), each by its own settings.

    The order is ``generate``'s with the batcher's old sampler: the generation config's repetition
    penalty (what ``train.evaluate`` sets), then the minimum length, then greedy or a draw."""
    scores = logits.float()
    for i, row in enumerate(rows):
        if penalty != 1.0:  # transformers' RepetitionPenaltyLogitsProcessor, over this row's own tokens
            ids = torch.tensor(row.ids, device=scores.device)
            seen = scores[i, ids]
            scores[i, ids] = torch.where(seen < 0, seen * penalty, seen / penalty)
        if row.new < row.settings.min_new_tokens:
            scores[i, stop_ids] = -float("inf")
    tokens = scores.argmax(dim=-1)
    sampled = [i for i, row in enumerate(rows) if row.settings.do_sample]
    if sampled:
        temperatures = torch.tensor([[rows[i].settings.temperature] for i in sampled])
        probs = torch.softmax(scores[sampled].cpu() / temperatures, dim=-1)
        top, top_ids = probs.topk(min(TOP_K, probs.shape[-1]), dim=-1)
        for k, i in enumerate(sampled):
            # Drawn over the whole vocabulary in its own order: rounding noise can reorder near-equal
            # probabilities in a sorted list, but it cannot move a token's place here.
            kept = nucleus(probs[k], top[k], top_ids[k], rows[i].settings.top_p)
            tokens[i] = draw(probs[k], kept, rows[i].generator)
    for row, token in zip(rows, tokens.tolist(), strict=True):
        row.ids.append(token)
        row.new += 1
    return tokens


def _append(
    cache: torch.Tensor, new: torch.Tensor, buffer: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``cache`` with ``new`` appended along the sequence axis, and the buffer that holds it: written into
    the room left after ``cache`` when ``cache`` is a slice of ``buffer`` along that axis; otherwise both
    are copied into a new buffer with ``SPARE`` columns to spare. A step then copies one token per row and
    layer, and the whole cache once every ``SPARE`` steps, where ``torch.cat`` copies it at every step.

    The buffer is passed in, not found as ``cache._base``: under ``torch.inference_mode`` (the batcher's)
    a view keeps no ``_base``."""
    if cache.dim() != new.dim():  # the layer's empty start
        cache = new.new_empty(*new.shape[:2], 0, new.shape[-1])
    width, extra = cache.shape[-2], new.shape[-2]
    if (
        buffer is not None
        and cache.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()
        and buffer.shape[:2] == cache.shape[:2]
        and buffer.stride() == cache.stride()
    ):
        start = (cache.storage_offset() - buffer.storage_offset()) // cache.stride(-2)
        if start + width + extra <= buffer.shape[-2]:
            buffer[..., start + width : start + width + extra, :] = new
            return buffer[..., start : start + width + extra, :], buffer
    buffer = new.new_empty(*new.shape[:2], width + extra + SPARE, new.shape[-1])
    buffer[..., :width, :] = cache
    buffer[..., width : width + extra, :] = new
    return buffer[..., : width + extra, :], buffer


class SpareLayer(DynamicLayer):
    """transformers' dynamic cache layer, grown in place (``_append``). ``Running.join`` and ``keep``
    replace or slice ``keys`` and ``values`` as they would a ``DynamicLayer``'s; the buffers they were
    cut from are kept beside them, so a slice still grows in place."""

    key_buffer: torch.Tensor | None = None
    value_buffer: torch.Tensor | None = None

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys, self.key_buffer = _append(self.keys, key_states, self.key_buffer)
        self.values, self.value_buffer = _append(self.values, value_states, self.value_buffer)
        return self.keys, self.values


class SpareCache(DynamicCache):
    """A ``DynamicCache`` whose layers, made as the model first writes to them, are ``SpareLayer``s."""

    def __init__(self) -> None:
        Cache.__init__(self, layer_class_to_replicate=SpareLayer)


def _forward(model, adapters, input_ids, mask, positions, cache) -> torch.Tensor:
    """One forward of the rows (each through its adapter); the logits of each row's last position."""
    with _routing(model, adapters) as routing:
        out = model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,  # as generate does: the vocabulary projection of the last position only
            **routing,
        )
    return out.logits[:, -1, :]


class Running:
    """Rows decoding together: one KV cache (``[rows, heads, columns, dim]`` per layer), the attention
    mask over its columns (0 on each row's left padding), each row's next token (chosen, not yet in the
    cache) and its position (the count of the row's own tokens before it)."""

    def __init__(self, rows: list[Row], cache: SpareCache, mask, tokens, positions):
        self.rows, self.cache, self.mask, self.tokens, self.positions = rows, cache, mask, tokens, positions

    @classmethod
    def prefill(cls, loaded, requests: list, stop_ids: list[int], penalty: float) -> Running:
        """The rows of ``requests``, prefilled in one forward, with their first tokens chosen."""
        batch = _encode(loaded, [c for request in requests for c in request.conversations])
        input_ids, mask = batch["input_ids"], batch["attention_mask"]
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # as generate counts them
        cache = SpareCache()
        adapters = [a for request in requests for a in request.adapters]
        logits = _forward(loaded.model, adapters, input_ids, mask, positions, cache)
        places = [(request, i, s) for request in requests for i, s in enumerate(request.settings)]
        rows = [
            Row(request, i, settings, input_ids[k][mask[k].bool()].tolist())
            for k, (request, i, settings) in enumerate(places)
        ]
        tokens = choose(logits, rows, stop_ids, penalty)
        return cls(rows, cache, mask, tokens, mask.sum(-1))

    def step(self, model, stop_ids: list[int], penalty: float) -> None:
        """Feed every row its last token, and choose the next."""
        self.mask = F.pad(self.mask, (0, 1), value=1)
        adapters = [row.adapter for row in self.rows]
        logits = _forward(
            model, adapters, self.tokens[:, None], self.mask, self.positions[:, None], self.cache
        )
        self.positions = self.positions + 1
        self.tokens = choose(logits, self.rows, stop_ids, penalty)

    def join(self, other: Running) -> Running:
        """Both batches' rows in one: the shorter cache padded on the left (masked), then stacked."""
        width = max(self.mask.shape[1], other.mask.shape[1])

        def left(x: torch.Tensor, axis_from_end: int) -> torch.Tensor:
            missing = width - x.shape[-axis_from_end]
            return F.pad(x, (0, 0) * (axis_from_end - 1) + (missing, 0)) if missing else x

        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat([left(mine.keys, 2), left(theirs.keys, 2)])
            mine.values = torch.cat([left(mine.values, 2), left(theirs.values, 2)])
        self.mask = torch.cat([left(self.mask, 1), left(other.mask, 1)])
        self.tokens = torch.cat([self.tokens, other.tokens])
        self.positions = torch.cat([self.positions, other.positions])
        self.rows += other.rows
        return self

    def keep(self, kept: list[int]) -> None:
        """Only the rows ``kept`` (indices) stay; columns now padding in every row are trimmed."""
        if len(kept) == len(self.rows):
            return
        index = torch.tensor(kept, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask, self.tokens, self.positions = self.mask[index], self.tokens[index], self.positions[index]
        self.rows = [self.rows[i] for i in kept]
        first = int(self.mask.any(dim=0).int().argmax())  # the first column some row still uses
        if first:
            self.mask = self.mask[:, first:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[..., first:, :], layer.values[..., first:, :]
