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

from assistant.models import gpu_compute_dtype
from tests._helpers_train import write_pairs_file
from train.train import build_trainer, parse_args

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
STEPS = 3
SMALL = {
    # a graded reward with spread even in 8 random tokens (the recipe's loop and end rewards have none
    # there: every completion is cut and too short to loop, and GRPO learns only from spread)
    "grpo": (
        "--num_generations 4 --per_device_train_batch_size 4 --max_completion_length 8 "
        "--reward_funcs preference --reward_weights 1.0"
    ).split(),
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


@pytest.mark.parametrize("bf16", [True, False])
def test_phi_computes_in_fp32_on_a_gpu_without_bf16(bf16):
    half = torch.bfloat16 if bf16 else torch.float16
    assert gpu_compute_dtype(bf16, "phi") == (half if bf16 else torch.float32)
    assert gpu_compute_dtype(bf16, "llama") == half


def test_fp16_overflows_phi_attention_where_the_chosen_dtype_does_not():
    """Why: the eager attention multiplies query and key in the compute dtype; large products overflow
    fp16's 65504 to inf and the logits to NaN (Phi-2's real activations do; here scaled q/k weights)."""
    from transformers import PhiConfig, PhiForCausalLM

    config = PhiConfig(
        vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4
    )
    finite = {}
    for dtype in (torch.float16, gpu_compute_dtype(False, "phi")):
        torch.manual_seed(0)
        model = PhiForCausalLM._from_config(config, attn_implementation="eager").eval()
        attention = model.model.layers[0].self_attn
        with torch.no_grad():
            attention.q_proj.weight.mul_(2000)
            attention.k_proj.weight.mul_(2000)
            logits = model.to(dtype)(torch.arange(8)[None]).logits
        finite[dtype] = torch.isfinite(logits).all().item()
    assert finite == {torch.float16: False, torch.float32: True}


@pytest.mark.parametrize("base", ["tiny_phi_dir", "smollm2_dir"])
def test_training_on_a_gpu_without_bf16_keeps_phi_out_of_fp16(base, request, monkeypatch):
    """The Phi-2 recipe asks for bf16; a GPU without it gets fp16 mixed precision, except for Phi."""
    from trl import get_quantization_config

    from train.model import adapt_to_device
    from train.recipe import mixed_precision_for

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # TrainingArguments is parsed on a CPU
    model = request.getfixturevalue(base)
    parsed = parse_args(
        ["--config", str(RECIPES / "phi2-grpo-qlora.yaml"), "--model_name_or_path", str(model)]
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    training, model_args = parsed.training, parsed.model
    training.bf16, training.fp16 = mixed_precision_for(parsed.mixed_precision)
    training.mixed_precision = "fp16"  # what TrainingArguments makes of fp16 when parsed on such a GPU
    adapt_to_device(parsed.train, training, model_args, parsed.mixed_precision)
    compute = get_quantization_config(model_args).bnb_4bit_compute_dtype
    if base == "tiny_phi_dir":
        assert (training.bf16, training.fp16, training.mixed_precision) == (False, False, "no")
        assert compute in (torch.float32, "float32")
    else:
        assert (training.bf16, training.fp16, training.mixed_precision) == (False, True, "fp16")
        assert compute in (torch.float16, "float16")


def test_reward_model_over_a_4bit_base_trains_in_fp32(tiny_phi_dir, tmp_path):
    """The reward model's trainable weights (LoRA and the score head) stay fp32 too, and they train."""
    argv = [
        "--config",
        str(RECIPES / "study" / "reward-model-oasst.yaml"),
        "--model_name_or_path",
        str(tiny_phi_dir),
        "--lora_target_modules",
        "q_proj",
        "v_proj",
        "--pairs_file",
        str(write_pairs_file(tmp_path / "pairs")),
        "--output_dir",
        str(tmp_path / "out"),
        "--max_steps",
        "2",  # the first moves only LoRA B (A's gradient is zero while B is)
        "--warmup_steps",
        "0",
        "--save_strategy",
        "no",
        "--use_cpu",
        "true",
        "--load_in_4bit",
        "true",
        "--quantize_on_cpu",
        "true",
    ]
    built = build_trainer(parse_args(argv))
    model = built.trainer.model
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    assert any("score" in n for n in trained) and {p.dtype for p in trained.values()} == {torch.float32}
    before = {n: p.detach().clone() for n, p in trained.items()}
    built.trainer.train()
    moved = {n for n, p in trained.items() if not torch.equal(before[n], p)}
    assert any("lora_A" in n for n in moved) and any("score" in n for n in moved)


@pytest.mark.parametrize("four_bit", [True, False], ids=["4-bit", "bf16"])
def test_lora_is_cast_back_to_fp32_over_a_quantized_base_only(tiny_phi_dir, four_bit):
    """On a GPU: over a 4-bit base TRL makes the adapter bf16 and train.model casts it back to fp32;
    over a bf16 base under DeepSpeed ZeRO-3 TRL keeps the adapter bf16 (get_peft_model's
    autocast_adapter_dtype=False), which ZeRO-3 needs, and it stays so. On the CPU it is fp32 either way."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from train.model import lora_to_fp32_where_needed

    def adapter_as_trl_makes_it():
        kwargs = {"dtype": torch.bfloat16}
        if four_bit:
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")
            kwargs["device_map"] = {"": "cpu"}
        model = AutoModelForCausalLM.from_pretrained(tiny_phi_dir, **kwargs)
        model = get_peft_model(
            model, LoraConfig(r=4, target_modules=["q_proj"]), autocast_adapter_dtype=False
        )
        for param in model.parameters():
            if param.requires_grad:
                param.data = param.data.to(torch.bfloat16)  # TRL's cast (over a 4-bit base; ZeRO-3's dtype)
        return model

    def dtypes(model):
        return {p.dtype for p in model.parameters() if p.requires_grad}

    on_gpu = adapter_as_trl_makes_it()
    assert (lora_to_fp32_where_needed(on_gpu, "cuda") > 0) == four_bit
    assert dtypes(on_gpu) == {torch.float32 if four_bit else torch.bfloat16}
    on_cpu = adapter_as_trl_makes_it()
    assert lora_to_fp32_where_needed(on_cpu, "cpu") > 0 and dtypes(on_cpu) == {torch.float32}
