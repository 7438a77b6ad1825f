"""Serving limits that fit the card (assistant.memory) and the ZeroGPU loading plan (assistant.models):
arithmetic and decisions, no GPU needed."""

import pytest
import torch
from transformers import PhiConfig

from assistant import models
from assistant.engine.cache import SPARE
from assistant.memory import KV_SHARE, kv_bytes_per_token, rows_that_fit
from assistant.service import Limits

GIB = 2**30
PHI2 = PhiConfig(hidden_size=2560, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32)
FULL_ROW = Limits().max_input_tokens + Limits().max_new_tokens  # 2,048: Phi-2's whole context


def test_phi2_kv_cache_per_token_and_row():
    assert kv_bytes_per_token(PHI2, torch.float32) == 0.625 * 2**20  # 2 x 32 layers x 2560 x 4 bytes
    assert kv_bytes_per_token(PHI2, torch.bfloat16) == 0.3125 * 2**20
    assert FULL_ROW == 2048 and kv_bytes_per_token(PHI2, torch.float32) * FULL_ROW == 1.25 * GIB


def test_a_t4_is_not_promised_16_full_rows():
    """A T4 (15 GiB usable) computes Phi in fp32 (no bf16; fp16 overflows Phi's attention): beside a
    ~2.6 GB 4-bit base about 12 GiB are free, and 16 rows x 2,048 tokens would need 20 GiB."""
    asked = Limits().max_batch
    assert asked == 16 and kv_bytes_per_token(PHI2, torch.float32) * FULL_ROW * asked == 20 * GIB
    rows = rows_that_fit(PHI2, torch.float32, 12 * GIB, FULL_ROW, asked)
    per_row = 0.625 * (FULL_ROW + SPARE) / 1024  # GiB: each row's buffer keeps SPARE columns of room
    assert rows == int(12 * KV_SHARE / per_row) == 6
    assert rows * per_row <= 12 * KV_SHARE
    # A bf16 card with room (an A100 80 GB, ~74 GiB free) keeps the asked 16; a full card still serves one row.
    assert rows_that_fit(PHI2, torch.bfloat16, 74 * GIB, FULL_ROW, asked) == 16
    assert rows_that_fit(PHI2, torch.float32, GIB // 2, FULL_ROW, asked) == 1


def test_zero_gpu_loads_unquantized_bf16_and_refuses_4bit(monkeypatch):
    """On ZeroGPU no card is attached at start-up: the plan asks CUDA nothing and quantizes nothing."""
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: pytest.fail("asked the absent GPU"))
    kwargs, label = models.precision_plan("cuda", quantize=False, model_type="phi")
    assert kwargs == {"dtype": torch.bfloat16} and label == "bf16"
    with pytest.raises(models.ModelLoadError, match="ZeroGPU .* cannot quantize"):
        models.precision_plan("cuda", quantize=True, model_type="phi")
    monkeypatch.delenv("SPACES_ZERO_GPU")
    assert not models.on_zero_gpu()
