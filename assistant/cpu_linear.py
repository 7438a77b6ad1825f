"""The served model's linear layers on a CPU, computed weights-first in a decoding step of several rows.

A step of the batcher feeds each of its N rows one token, so every linear layer multiplies an N x in
input by its weight. PyTorch computes ``x @ W.T``; for a few rows the same products as ``W @ x.T``
(summed in another order) run much faster on this CPU: over 200 MB of SmolLM2's 1536 x 576 weights,
2 rows took 151 us a matrix against 389, 8 rows 298 against 374, and the vocabulary projection of 8
rows less than half the time (a scratch measurement; ``benchmarks/decode_rows.py`` times whole steps
both ways). One row, and every prefill, keep PyTorch's own path, so a single answer is computed
exactly as before; so do LoRA's rank-sized layers, where the change measured slower.
"""

from __future__ import annotations

import torch

SMALLEST = 64  # a layer with fewer inputs or outputs than this (LoRA's A and B) keeps PyTorch's path


class WeightsFirstLinear(torch.nn.Linear):
    """``torch.nn.Linear`` that computes ``W @ x.T`` for the input of a decoding step of several rows
    (``[rows > 1, 1 token, features]``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (x.dim() == 3 and x.shape[1] == 1 and x.shape[0] > 1):
            return super().forward(x)
        out = (self.weight @ x[:, 0, :].contiguous().T).T.contiguous()
        if self.bias is not None:
            out += self.bias
        return out[:, None, :]


def weights_first(model: torch.nn.Module, on: bool = True) -> None:
    """Make every plain fp32 ``nn.Linear`` on a CPU in ``model`` (base layers, the vocabulary
    projection; not LoRA's rank-sized A and B) a ``WeightsFirstLinear``, in place, or with ``on=False``
    back. A quantized or GPU layer stays as it is:
    the layout was measured on this CPU's fp32 kernels only."""
    for module in model.modules():
        if (
            type(module) in (torch.nn.Linear, WeightsFirstLinear)
            and module.weight.device.type == "cpu"
            and module.weight.dtype == torch.float32
            and min(module.in_features, module.out_features) >= SMALLEST
        ):
            module.__class__ = WeightsFirstLinear if on else torch.nn.Linear
