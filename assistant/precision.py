"""The one precision rule, for serving and training alike: which device, and which dtype the weights
compute in there (GPU: bf16, fp16 or fp32 for Phi; CPU: bf16 only where it is native), and the
``from_pretrained`` arguments that follow from it, ZeroGPU included."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch


class ModelLoadError(RuntimeError):
    """A configured model or adapter could not be loaded (here: a precision plan that cannot work)."""


def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 in hardware (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo).

    Elsewhere PyTorch emulates bf16 matmuls: measured on an AVX2-only EPYC, a 2048 x 2048 matmul took
    58 s in bf16 against 0.1 s in fp32, so bf16 is worth it only where the flag is there."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no flags to read, fp32 is the safe choice
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def compute_dtype(device: str, model_type: str | None = None) -> torch.dtype:
    """The one precision rule, for serving and training alike: on a GPU ``gpu_compute_dtype``'s; on a
    CPU bf16 where it is native (``cpu_has_native_bf16``), fp32 otherwise; ``ASSISTANT_CPU_DTYPE``
    (``fp32`` or ``bf16``) overrides the CPU's choice."""
    if device == "cuda":
        return gpu_compute_dtype(torch.cuda.is_bf16_supported(), model_type)
    if device != "cpu":
        return torch.float32
    forced = os.environ.get("ASSISTANT_CPU_DTYPE", "").lower()
    if forced in ("fp32", "float32", "bf16", "bfloat16"):
        return torch.bfloat16 if forced.startswith("bf") else torch.float32
    if forced:
        raise ValueError(
            f"ASSISTANT_CPU_DTYPE={forced!r}: use fp32 or bf16 (or unset it to decide by the CPU)"
        )
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def gpu_compute_dtype(bf16_supported: bool, model_type: str | None) -> torch.dtype:
    """The compute dtype on a GPU, for serving and training alike: bf16 where the GPU has it; on one
    without (a T4) fp16, except for Phi. transformers 5 computes Phi's query-key product in the compute
    dtype, and Phi-2's exceeds fp16's range (65504): inf, then NaN. Phi there computes in fp32."""
    if bf16_supported:
        return torch.bfloat16
    return torch.float32 if model_type == "phi" else torch.float16


DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def on_zero_gpu() -> bool:
    """A ZeroGPU Space (``SPACES_ZERO_GPU``, set by Hugging Face): no GPU is attached at start-up, only
    inside ``@spaces.GPU`` functions, while the apps load the model at start-up. ZeroGPU records a
    ``.to("cuda")`` then and replays it when a GPU is attached, but bitsandbytes cannot quantize without
    one: there the base loads unquantized in bf16 (ZeroGPU's cards, A100/H200, have bf16 and 40+ GB)."""
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true", "t")


def precision_plan(device: str, quantize: bool, model_type: str | None = None) -> tuple[dict, str]:
    """``from_pretrained`` keyword arguments for the weights' precision on ``device``, and its label.

    The one precision rule decides (``compute_dtype``): on a GPU its bf16, fp16 or fp32 (a 4-bit base
    computes in it; an unquantized model is stored in it); on a CPU bf16 where the CPU has it natively
    (fewer bytes per weight to read, and hardware bf16 matmuls), fp32 where bf16 would be emulated, many
    times slower; ``ASSISTANT_CPU_DTYPE`` overrides. The label names it, so the apps' header does.
    """
    if device == "cuda" and on_zero_gpu():  # ZeroGPU: no card to ask at start-up; its cards have bf16
        half = gpu_compute_dtype(True, model_type)
    else:
        half = compute_dtype(device, model_type)
    if quantize and on_zero_gpu():
        raise ModelLoadError(
            "ZeroGPU attaches no GPU at start-up, so bitsandbytes cannot quantize the base there: serve it "
            "unquantized (the default on ZeroGPU), or on CPU basic or a dedicated GPU (T4, L4, A10G, A100)"
        )
    if quantize:
        from transformers import BitsAndBytesConfig

        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=half)
        kwargs = {"quantization_config": config, "dtype": half, "device_map": {"": device}}
        return kwargs, f"4-bit NF4, {DTYPE_NAMES[half]} compute"
    return {"dtype": half}, DTYPE_NAMES[half]
