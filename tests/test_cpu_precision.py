"""The one precision rule on a CPU (assistant.models.compute_dtype): bf16 only where the CPU has it
natively, and a LoRA trained under bf16 autocast over a bf16 base moves as far as one trained in fp32.

The bf16 run is forced with ASSISTANT_CPU_DTYPE=bf16, so it runs on any CPU (emulated where bf16 is not
native: slower, the same arithmetic)."""

from pathlib import Path

import pytest
import torch

from assistant.models import compute_dtype, cpu_has_native_bf16
from tests._helpers_train import write_pairs_file
from train.train import build_trainer, parse_args

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "cpu-demo-dpo.yaml"  # a loss on every step


def lora_movement(tiny_phi_dir, tmp_path, cpu_dtype: str, monkeypatch):
    monkeypatch.setenv("ASSISTANT_CPU_DTYPE", cpu_dtype)
    argv = ["--config", str(RECIPE), "--model_name_or_path", str(tiny_phi_dir),
            "--pairs_file", str(write_pairs_file(tmp_path / "pairs")), "--output_dir", str(tmp_path / cpu_dtype),
            "--max_steps", "3", "--save_strategy", "no", "--use_cpu", "true", "--lora_target_modules", "q_proj",
            "v_proj", "--per_device_train_batch_size", "2", "--max_length", "64", "--seed", "0"]  # fmt: skip
    built = build_trainer(parse_args(argv))
    model = built.trainer.model
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    frozen = {p.dtype for n, p in model.named_parameters() if not p.requires_grad and p.dim() == 2}
    before = {n: p.detach().clone() for n, p in trained.items() if "lora_A" in n}
    built.trainer.train()
    moved = torch.stack([(trained[n].detach() - w).abs().mean() for n, w in before.items()]).mean().item()
    return moved, {p.dtype for p in trained.values()}, frozen, built.trainer.args.bf16


def test_lora_moves_as_far_under_bf16_autocast_as_in_fp32(tiny_phi_dir, tmp_path, monkeypatch):
    moved_bf16, trained_bf16, frozen_bf16, autocast = lora_movement(
        tiny_phi_dir, tmp_path, "bf16", monkeypatch
    )
    assert autocast and frozen_bf16 == {torch.bfloat16}  # the base really is bf16, under autocast
    moved_fp32, trained_fp32, frozen_fp32, autocast = lora_movement(
        tiny_phi_dir, tmp_path, "fp32", monkeypatch
    )
    assert not autocast and frozen_fp32 == {torch.float32}
    assert trained_bf16 == trained_fp32 == {torch.float32}  # the LoRA weights stay fp32 either way
    # Adam moves each weight by about the learning rate a step: alike if the updates are not rounded away.
    assert moved_fp32 > 0 and 0.5 < moved_bf16 / moved_fp32 < 2, (moved_bf16, moved_fp32)


def test_the_cpu_rule_follows_the_cpu_and_its_override(monkeypatch):
    monkeypatch.delenv("ASSISTANT_CPU_DTYPE", raising=False)
    assert compute_dtype("cpu") == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    monkeypatch.setenv("ASSISTANT_CPU_DTYPE", "fp32")
    assert compute_dtype("cpu") == torch.float32
    monkeypatch.setenv("ASSISTANT_CPU_DTYPE", "half")
    with pytest.raises(ValueError, match="ASSISTANT_CPU_DTYPE='half': use fp32 or bf16"):
        compute_dtype("cpu")
