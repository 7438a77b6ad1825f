"""GRPO's optional reward models (train.scorer, train.implicit) load in the one precision rule's dtype
(assistant.models.compute_dtype), not the checkpoint's own: Phi-2's config says fp16, which overflows its
attention, and an fp32 copy doubles the memory beside the policy on a bf16 GPU. The rule's CPU override
(ASSISTANT_CPU_DTYPE) stands in for a GPU's choice here; the models are tiny, bf16 costs nothing."""

import pytest
import torch

from tests._helpers_train import make_tiny_classifier


def save_with_fp16_config(model, path):
    """Saved as Phi-2 is on the Hub: fp16 weights, ``dtype: float16`` in its config."""
    model.half().save_pretrained(path)
    return path


@pytest.mark.parametrize("rule", ["bf16", "fp32"])
def test_reward_model_and_reward_lora_load_in_the_rules_dtype(tmp_path, tiny_phi_dir, monkeypatch, rule):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from train.scorer import Scorer

    monkeypatch.setenv("ASSISTANT_CPU_DTYPE", rule)
    expected = torch.bfloat16 if rule == "bf16" else torch.float32
    full = make_tiny_classifier(tmp_path / "full", tiny_phi_dir)
    save_with_fp16_config(AutoModelForSequenceClassification.from_pretrained(full), full)
    base = save_with_fp16_config(
        AutoModelForSequenceClassification.from_pretrained(tiny_phi_dir, num_labels=1), tmp_path / "base"
    )
    AutoTokenizer.from_pretrained(tiny_phi_dir).save_pretrained(base)
    lora = get_peft_model(
        AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32),
        LoraConfig(r=4, target_modules=["q_proj"], task_type="SEQ_CLS"),
    )
    lora.save_pretrained(tmp_path / "reward-lora")
    AutoTokenizer.from_pretrained(tiny_phi_dir).save_pretrained(tmp_path / "reward-lora")
    for path in (full, tmp_path / "reward-lora"):
        scorer = Scorer(str(path), device="cpu")
        frozen = {p.dtype for n, p in scorer.model.named_parameters() if "lora_" not in n}
        assert frozen == {expected}, path
        conversation = [{"role": "user", "content": "Hi?"}]
        assert all(abs(s) < 1e4 for s in scorer.score([conversation], ["Hello."]))


@pytest.mark.parametrize("rule", ["bf16", "fp32"])
def test_implicit_reward_base_loads_in_the_rules_dtype(tmp_path, tiny_phi_dir, monkeypatch, rule):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from train.implicit import ImplicitReward

    monkeypatch.setenv("ASSISTANT_CPU_DTYPE", rule)
    base = save_with_fp16_config(AutoModelForCausalLM.from_pretrained(tiny_phi_dir), tmp_path / "base")
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
        LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False),
    )
    model.save_pretrained(tmp_path / "dpo")
    AutoTokenizer.from_pretrained(tiny_phi_dir).save_pretrained(tmp_path / "dpo")
    reward = ImplicitReward(str(tmp_path / "dpo"), device="cpu")
    frozen = {p.dtype for n, p in reward.model.named_parameters() if "lora_" not in n}
    assert frozen == {torch.bfloat16 if rule == "bf16" else torch.float32}


def test_implicit_reward_beside_a_4bit_policy_loads_its_base_in_4bit(tmp_path, tiny_phi_dir, monkeypatch):
    """On a T4 (no bf16) the rule alone would put an fp32 Phi-2, about 11 GB, beside the 4-bit policy on a
    16 GB card: beside a 4-bit policy the implicit reward's base is 4-bit too (bitsandbytes runs on CPU)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from train.implicit import implicit_reward
    from train.rewards import get_reward_funcs

    monkeypatch.setenv("ASSISTANT_CPU_DTYPE", "fp32")
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_phi_dir, dtype=torch.float32),
        LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False),
    )
    model.save_pretrained(tmp_path / "dpo")
    AutoTokenizer.from_pretrained(tiny_phi_dir).save_pretrained(tmp_path / "dpo")
    get_reward_funcs(["dpo_implicit"], implicit_reward_adapter=str(tmp_path / "dpo"), quantize_implicit=True)
    implicit = implicit_reward(str(tmp_path / "dpo"), None, True)  # the copy the reward function holds
    kinds = {type(m).__name__ for n, m in implicit.model.named_modules() if n.endswith("k_proj")}
    assert kinds == {"Linear4bit"}
    scores = implicit.score_ids([([1, 2, 3], [5, 6, 7]), ([4], [8, 9])])
    assert len(scores) == 2 and all(abs(s) < 1e4 for s in scores) and scores[0] != 0.0
