"""The running batch's KV cache: transformers' dynamic cache, grown in place, joined and trimmed with as
few copies as the layout allows.

Each layer keeps its keys and values (``[rows, heads, columns, dim]``) as a slice of a buffer with
``SPARE`` columns to spare on the right: a decoding step writes one column per row into that room, and
the whole cache is copied only once every ``SPARE`` steps, where ``torch.cat`` would copy it at every
step. A join writes both caches once into one new buffer per layer, right-aligned (the shorter one's
left padding zeroed and masked), with room to spare, so the next step grows in place, and frees each
layer's old buffers as it goes; a keep selects the kept rows of the buffer, room included.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

SPARE = 128  # columns a buffer keeps to spare on the right


def _slot(cache: torch.Tensor, buffer: torch.Tensor | None) -> int | None:
    """The column of ``buffer`` where ``cache`` starts, when ``cache`` is a slice of it along the column
    axis (same rows and layout); else None. Under ``torch.inference_mode`` (the engine's) a view keeps
    no ``_base``, so the buffer is passed in."""
    if (
        buffer is None
        or cache.untyped_storage().data_ptr() != buffer.untyped_storage().data_ptr()
        or buffer.shape[:2] != cache.shape[:2]
        or buffer.stride() != cache.stride()
    ):
        return None
    return (cache.storage_offset() - buffer.storage_offset()) // cache.stride(-2)


def append(
    cache: torch.Tensor, new: torch.Tensor, buffer: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``cache`` with ``new`` appended along the column axis, and the buffer that holds it: written into
    the room after ``cache`` when there is some; otherwise both are copied into a new buffer with
    ``SPARE`` columns to spare."""
    if cache.dim() != new.dim():  # the layer's empty start
        cache = new.new_empty(*new.shape[:2], 0, new.shape[-1])
    width, extra = cache.shape[-2], new.shape[-2]
    start = _slot(cache, buffer)
    if start is not None and start + width + extra <= buffer.shape[-2]:
        buffer[..., start + width : start + width + extra, :] = new
        return buffer[..., start : start + width + extra, :], buffer
    buffer = new.new_empty(*new.shape[:2], width + extra + SPARE, new.shape[-1])
    buffer[..., :width, :] = cache
    buffer[..., width : width + extra, :] = new
    return buffer[..., : width + extra, :], buffer


def stacked(parts: list[torch.Tensor], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``parts`` (each ``[rows, heads, columns, dim]``) stacked along the rows, each right-aligned in
    ``width`` columns with its left padding zeroed (masked, but a stale NaN there would still poison the
    attention's sums), in one new buffer with ``SPARE`` columns to spare: the slice and the buffer."""
    first = parts[0]
    rows = sum(p.shape[0] for p in parts)
    buffer = first.new_empty(rows, first.shape[1], width + SPARE, first.shape[-1])
    at = 0
    for part in parts:
        end, pad = at + part.shape[0], width - part.shape[-2]
        buffer[at:end, :, :pad].zero_()
        buffer[at:end, :, pad:width] = part
        at = end
    return buffer[..., :width, :], buffer


class SpareLayer(DynamicLayer):
    """transformers' dynamic cache layer, grown in place (``append``), with the buffer beside it."""

    key_buffer: torch.Tensor | None = None
    value_buffer: torch.Tensor | None = None

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys, self.key_buffer = append(self.keys, key_states, self.key_buffer)
        self.values, self.value_buffer = append(self.values, value_states, self.value_buffer)
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Only the rows ``indices``: selected from the buffers, so the room to spare stays."""
        for name in ("keys", "values"):
            tensor, buffer = getattr(self, name), getattr(self, name[:-1] + "_buffer")
            start = _slot(tensor, buffer)
            if start is None:
                setattr(self, name, tensor[indices, ...])
                continue
            buffer = buffer[indices, ...]
            setattr(self, name, buffer[..., start : start + tensor.shape[-2], :])
            setattr(self, name[:-1] + "_buffer", buffer)


class SpareCache(DynamicCache):
    """A ``DynamicCache`` whose layers, made as the model first writes to them, are ``SpareLayer``s."""

    def __init__(self) -> None:
        Cache.__init__(self, layer_class_to_replicate=SpareLayer)

    def join(self, other: SpareCache, width: int) -> None:
        """``other``'s rows after these, ``width`` columns wide, layer by layer: each layer's old buffers
        are freed as soon as its new ones hold both, so the join needs about one layer beyond the cache,
        not a second cache. All or nothing: if a layer fails (out of memory, say), the layers joined so
        far are cut back to these rows, as views of their new buffers, and the error is raised."""
        rows, own = self.layers[0].keys.shape[0], self.layers[0].keys.shape[-2]
        joined = []
        try:
            for mine, theirs in zip(self.layers, other.layers, strict=True):
                keys = stacked([mine.keys, theirs.keys], width)
                values = stacked([mine.values, theirs.values], width)
                (mine.keys, mine.key_buffer), (mine.values, mine.value_buffer) = keys, values
                joined.append(mine)
        except Exception:
            for layer in joined:  # (the next step copies these back into buffers of their own)
                layer.keys = layer.keys[:rows, :, width - own :, :]
                layer.values = layer.values[:rows, :, width - own :, :]
            raise
