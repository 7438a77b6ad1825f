"""The running batch: rows that decode together, one forward per step, joining and leaving between steps.

The requests taken together are prefilled together (one forward over all their rows' prompts,
left-padded among themselves), which gives their first tokens at once; that batch then joins the
running one: both caches are written right-aligned into one (``SpareCache.joined``), and the attention
mask marks the padding so no row ever attends to it. Each decoding step is one forward of every running
row's last token, with explicit position ids (each row counts only its own tokens) and PEFT's
``adapter_names`` routing each row through its own adapter. A row that is done is dropped (the batch
axis indexed), and the columns that only dropped rows used are trimmed from the left.

Nothing in a row's token depends on the other rows, but the floating-point sums of a batched forward
can: a masked pad column adds exactly zero, yet a kernel may add the same numbers in another order for
another batch shape (exact in fp32, within rounding in bf16: docs/space.md, "Precision and seeds").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from assistant.engine.cache import SpareCache
from assistant.engine.sampling import Row, choose
from assistant.generation import encode, routing


def forward(model, adapters, input_ids, mask, positions, cache) -> torch.Tensor:
    """One forward of the rows (each through its adapter); the logits of each row's last position."""
    with routing(model, adapters) as routed:
        out = model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,  # as generate does: the vocabulary projection of the last position only
            **routed,
        )
    return out.logits[:, -1, :]


class Running:
    """Rows decoding together: one KV cache (``[rows, heads, columns, dim]`` per layer), the attention
    mask over its columns (0 on each row's left padding), each row's next token (chosen, not yet in the
    cache), its position (the count of the row's own tokens before it), and the rows whose last pick
    failed (``faults``: request -> error, for the worker to fail)."""

    def __init__(self, rows: list[Row], cache: SpareCache, mask, tokens, positions, faults):
        self.rows, self.cache, self.mask, self.tokens, self.positions = rows, cache, mask, tokens, positions
        self.faults = faults

    @property
    def requests(self) -> list:
        """The requests with rows here, in their rows' order."""
        return list(dict.fromkeys(row.request for row in self.rows))

    @classmethod
    def prefill(cls, loaded, requests: list, stop_ids: list[int]) -> Running:
        """The rows of ``requests``, prefilled in one forward, with their first tokens chosen."""
        batch = encode(loaded, [c for request in requests for c in request.conversations])
        input_ids, mask = batch["input_ids"], batch["attention_mask"]
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # as generate counts them
        cache = SpareCache()
        adapters = [a for request in requests for a in request.adapters]
        logits = forward(loaded.model, adapters, input_ids, mask, positions, cache)
        places = [(request, i, s) for request in requests for i, s in enumerate(request.settings)]
        rows = [
            Row(request, i, settings, input_ids[k][mask[k].bool()].tolist())
            for k, (request, i, settings) in enumerate(places)
        ]
        tokens, faults = choose(logits, rows, stop_ids)
        return cls(rows, cache, mask, tokens, mask.sum(-1), _by_request(rows, faults))

    def step(self, model, stop_ids: list[int]) -> None:
        """Feed every row its last token, and choose the next."""
        mask = F.pad(self.mask, (0, 1), value=1)
        adapters = [row.request.adapters[row.index] for row in self.rows]
        logits = forward(model, adapters, self.tokens[:, None], mask, self.positions[:, None], self.cache)
        self.mask, self.positions = mask, self.positions + 1
        self.tokens, faults = choose(logits, self.rows, stop_ids)
        self.faults = _by_request(self.rows, faults)

    def join(self, other: Running) -> Running:
        """Both batches' rows in one, ``other``'s after these. All or nothing: a join that fails (out of
        memory, say) leaves this batch as it was (``SpareCache.join``)."""
        width = max(self.mask.shape[1], other.mask.shape[1])

        def left(x: torch.Tensor) -> torch.Tensor:
            return F.pad(x, (width - x.shape[1], 0))

        mask = torch.cat([left(self.mask), left(other.mask)])
        tokens, positions = (
            torch.cat([self.tokens, other.tokens]),
            torch.cat([self.positions, other.positions]),
        )
        self.cache.join(other.cache, width)
        self.mask, self.tokens, self.positions = mask, tokens, positions
        self.rows = self.rows + other.rows
        self.faults = {**self.faults, **other.faults}
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


def _by_request(rows: list[Row], faults: dict[int, Exception]) -> dict:
    return {rows[i].request: error for i, error in faults.items()}
