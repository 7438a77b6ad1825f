"""What a test may promise in each CPU precision (docs/space.md, "Precision and seeds").

fp32 (CPUs without native bf16, or ``ASSISTANT_CPU_DTYPE=fp32``): a row answers in a shared batch exactly
as it does alone, and a batched, padded score matches the one-at-a-time score to 1e-4. bf16 (CPUs with
``avx512_bf16`` or ``amx_bf16``, which the precision rule serves and trains in): the matmuls round to 8
bits of mantissa and their blocking follows the batch's shape, so those hold only within bf16's rounding.
Tests of exact identity load their model under ``cpu_dtype("fp32")``; tests marked ``precision`` run in
the rule's precision, and CI runs them again under the other one (.ci/run)."""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch

from assistant.precision import compute_dtype


@contextmanager
def cpu_dtype(name: str):
    """The precision rule's CPU choice pinned to ``name`` (fp32 or bf16) while the block runs: models
    loaded and trainers built inside it keep that precision after it."""
    saved = os.environ.get("ASSISTANT_CPU_DTYPE")
    os.environ["ASSISTANT_CPU_DTYPE"] = name
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("ASSISTANT_CPU_DTYPE")
        else:
            os.environ["ASSISTANT_CPU_DTYPE"] = saved


def score_tolerance() -> float:
    """How far a batched, padded score (a mean log-probability, a classifier's logit) may be from the
    same score computed alone in fp32, in the precision the rule picks on this CPU. In bf16 the scores
    measured here parted by up to 8e-4; 1e-2 is within its rounding and far below a padding or masking
    error, which moves a score by tenths or more."""
    return 1e-4 if compute_dtype("cpu") == torch.float32 else 1e-2
