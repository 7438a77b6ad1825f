"""QLoRA for real on the CPU: TRL's GRPO and DPO trainers over a 4-bit bitsandbytes NF4 base.

The runs go through train.train.build_trainer with the Phi-2 recipes as written (their learning rates,
LoRA rank and targets, gradient checkpointing), on the tiny random Phi model, 4-bit kept on the CPU
(quantize_on_cpu). TRL casts the trainable LoRA weights to bf16 over a quantized base; at the recipes'
learning rates most bf16 LoRA A weights then never change (an update is smaller than half the gap
between two bf16 numbers). The same run over an fp32 base is the yardstick.
"""

from pathlib import Path

import pytest
import torch

from tests._helpers_train import write_pairs_file
from train.train import build_trainer, parse_args

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
STEPS = 3
SMALL = {
    "grpo": ["--num_generations", "4", "--per_device_train_batch_size", "4", "--max_completion_length", "8"],
    "dpo": ["--per_device_train_batch_size", "2", "--max_length", "64"],
}


def lora_a_movement(method: str, tiny_phi_dir, tmp_path, four_bit: bool) -> tuple[float, set, bool]:
    """Build the recipe's trainer, train STEPS steps; (mean |change| of the LoRA A weights, the
    trainable dtypes before training, whether the base is 4-bit)."""
    pairs = write_pairs_file(tmp_path / "pairs")
    argv = [
        "--config",
        str(RECIPES / f"phi2-{method}-qlora.yaml"),  # its learning rate, LoRA and schedule
        "--model_name_or_path",
        str(tiny_phi_dir),
        "--pairs_file",
        str(pairs),
        "--output_dir",
        str(tmp_path / f"out-{four_bit}"),
        "--max_steps",
        str(STEPS),
        "--gradient_accumulation_steps",
        "1",
        "--save_strategy",
        "no",
        "--use_cpu",
        "true",
        "--quantize_on_cpu",
        str(four_bit).lower(),
        *SMALL[method],
    ]
    built = build_trainer(parse_args(argv))
    model = built.trainer.model
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    dtypes = {p.dtype for p in trained.values()}
    before = {n: p.detach().float().clone() for n, p in trained.items() if "lora_A" in n}
    built.trainer.train()
    moved = [(trained[n].detach().float() - w).abs().mean() for n, w in before.items()]
    quantized = any(type(m).__name__ == "Linear4bit" for m in model.modules())
    return torch.stack(moved).mean().item(), dtypes, quantized


@pytest.mark.parametrize("method", ["grpo", "dpo"])
def test_lora_over_a_4bit_base_trains_in_fp32_as_much_as_over_fp32(method, tiny_phi_dir, tmp_path):
    moved_4bit, dtypes_4bit, quantized = lora_a_movement(method, tiny_phi_dir, tmp_path, four_bit=True)
    assert quantized  # the base really is bitsandbytes 4-bit, where TRL casts the adapter to bf16
    moved_fp32, dtypes_fp32, quantized = lora_a_movement(method, tiny_phi_dir, tmp_path, four_bit=False)
    assert not quantized
    assert moved_fp32 > 0
    # Adam moves each weight by about the learning rate a step whatever the gradient's size, so the
    # two runs move alike; bf16 LoRA weights would round most of those moves away.
    assert 0.5 < moved_4bit / moved_fp32 < 2, (moved_4bit, moved_fp32)
    assert dtypes_4bit == dtypes_fp32 == {torch.float32}
