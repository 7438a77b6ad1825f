"""Serving limits that fit the card: how many rows a batch may hold, from the GPU memory left once the
weights are loaded and the KV cache each row needs.

Each generated or read token keeps a key and a value per layer: 2 x layers x kv_heads x head_dim numbers
in the compute dtype. Phi-2 in fp32 (its dtype on a GPU without bf16, a T4): 2 x 32 x 32 x 80 x 4 bytes
= 0.625 MiB per token per row, so one row of a full context (1,536 prompt + 512 new tokens) is 1.25 GiB
and the default 16 rows need 20 GiB, more than a T4's 16 GB holds beside a 2.6 GB 4-bit base.
"""

from __future__ import annotations

# The share of the free memory the KV cache may take: the rest covers each step's activations and
# logits (rows x vocab floats), the sampling, and the CUDA allocator's fragmentation.
KV_SHARE = 0.7


def kv_bytes_per_token(config, dtype) -> int:
    """Bytes of KV cache one token of one row keeps, from the model's config and compute dtype."""
    import torch

    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * torch.finfo(dtype).bits // 8


def rows_that_fit(config, dtype, free_bytes: int, tokens_per_row: int, asked: int) -> int:
    """The rows of ``tokens_per_row`` whose KV cache fits KV_SHARE of ``free_bytes``: at most ``asked``,
    at least 1 (one row of a full context must fit, or the limits themselves are too large). A row's
    cache buffer keeps ``SPARE`` columns of room beyond its tokens (``assistant.engine.cache``); a join
    needs about one layer's cache beyond it, within the rest (``benchmarks/join_memory.py`` measures
    the peak against this budget)."""
    from assistant.engine.cache import SPARE

    per_row = kv_bytes_per_token(config, dtype) * (tokens_per_row + SPARE)
    return max(1, min(asked, int(free_bytes * KV_SHARE) // per_row))


def fit_batch_to_gpu(loaded, limits):
    """``limits`` with ``max_batch`` lowered to what the free memory of ``loaded``'s GPU holds (a note
    on ``loaded`` says so); unchanged off a GPU, where memory is not the model's alone to measure.
    Called once, after the weights are loaded: what is free then is what generation has."""
    import dataclasses

    import torch

    from assistant.models import on_zero_gpu

    # ZeroGPU attaches its card (40+ GB) only inside @spaces.GPU calls: nothing to measure at start-up.
    if loaded.device != "cuda" or on_zero_gpu() or not torch.cuda.is_available():
        return limits
    free, total = torch.cuda.mem_get_info()
    config = getattr(loaded.model, "config", None)
    tokens = limits.max_input_tokens + limits.max_new_tokens
    rows = rows_that_fit(config, loaded.model.dtype, free, tokens, limits.max_batch)
    if rows < limits.max_batch:
        loaded.notes.append(
            f"At most {rows} rows are generated together ({limits.max_batch} asked): each row of "
            f"{tokens:,} tokens keeps {kv_bytes_per_token(config, loaded.model.dtype) * tokens / 2**30:.2f} GiB "
            f"of KV cache, and {free / 2**30:.1f} of the GPU's {total / 2**30:.1f} GiB are free."
        )
        limits = dataclasses.replace(limits, max_batch=rows)
    return limits
