"""Warm starts on the tiny random Phi model: SFT on the chosen replies, then GRPO and DPO that continue the
SFT adapter (not a fresh LoRA) and measure their KL / ratios against it (TRL's frozen "ref" copy)."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests._helpers_train import PAIRS, make_tiny_classifier, tiny_overrides, write_pairs_file
from train.pieces import recipe_making
from train.train import ConfigError, build_trainer, parse_args, run

ROOT = Path(__file__).resolve().parent.parent
TINY_TARGETS = ["--lora_target_modules", "q_proj", "k_proj", "v_proj", "dense"]  # Phi's names
GRPO = [
    "--num_generations", "2", "--per_device_train_batch_size", "2", "--max_completion_length", "8",
    "--reward_funcs", "reward_model", "missing_eos_penalty", "--beta", "0.04",
    "--gold_check_every", "0", "--implicit_reward_adapter", "",
]  # fmt: skip


@pytest.fixture(autouse=True)
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tiny_phi_dir):
    base = tmp_path_factory.mktemp("sft")
    pairs = write_pairs_file(base / "pairs")
    argv = [
        "--config", str(ROOT / "recipes/study/sft.yaml"), *tiny_overrides(tiny_phi_dir, pairs, base / "out"),
        *TINY_TARGETS, "--per_device_train_batch_size", "2", "--max_length", "64",
    ]  # fmt: skip
    trainer = run(parse_args(argv))
    return base, trainer


def lora_weights(model, adapter: str) -> dict:
    """The LoRA tensors of one adapter of a PeftModel, by the name they are saved under."""
    return {
        name.replace(f".{adapter}.", ".").removeprefix("base_model.model."): p.detach().clone()
        for name, p in model.named_parameters()
        if f".{adapter}." in name and "lora_" in name
    }


def saved(folder: Path) -> dict:
    return {
        k.removeprefix("base_model.model."): v
        for k, v in load_file(folder / "adapter_model.safetensors").items()
    }


def test_sft_trains_and_saves_an_adapter_on_the_chosen_replies(sft_run):
    base, trainer = sft_run
    out = base / "out"
    adapter = saved(out)
    assert adapter and all("lora_A" in k or "lora_B" in k for k in adapter)
    assert all(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # PEFT starts lora_B at 0
    info = json.loads((out / "training_info.json").read_text())
    assert info["method"] == "sft" and info["global_step"] == 2 and info["config_class"] == "SFTConfig"
    # one row per prompt, its chosen reply as the completion: the loss is on the reply only
    rows = trainer.train_dataset
    assert len(rows) == len(PAIRS)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in m for m in metrics)


def test_grpo_continues_the_sft_adapter_against_a_frozen_copy_of_it(sft_run, tiny_phi_dir):
    base, _ = sft_run
    start = saved(base / "out")
    classifier = make_tiny_classifier(base / "reward-model", tiny_phi_dir)
    argv = [
        "--config", str(ROOT / "recipes/study/grpo-from-sft.yaml"),
        *tiny_overrides(tiny_phi_dir, base / "pairs" / "train.jsonl", base / "grpo"), *GRPO,
        "--init_adapter", str(base / "out"), "--reward_model_name_or_path", str(classifier),
        "--lora_r", "8",  # ignored: the warm start's own shape trains
    ]  # fmt: skip
    trainer = run(parse_args(argv))
    model = trainer.model
    ref = lora_weights(model, "ref")
    # TRL copied "ref" from the adapter as the trainer was built: so training began at the SFT weights,
    # not at a fresh LoRA (whose lora_B would be all zeros), and the reference stayed there
    assert ref.keys() == start.keys() and all(torch.equal(ref[k], start[k]) for k in start)
    assert all(not p.requires_grad for n, p in model.named_parameters() if ".ref." in n)
    moved = lora_weights(model, "default")
    assert any(not torch.equal(moved[k], start[k]) for k in start)  # it trained
    assert any("kl" in r for r in trainer.state.log_history)
    out = base / "grpo"
    assert all(torch.equal(saved(out)[k], moved[k]) for k in start)
    assert not (out / "ref").exists()  # PEFT's copy of the reference: the warm start, already on disk
    info = json.loads((out / "training_info.json").read_text())
    assert info["trainable_params"] == sum(v.numel() for v in start.values())
    assert info["lora"]["r"] == 4 and any(n.startswith("warm start:") for n in info["notes"])


def test_dpo_continues_the_sft_adapter(sft_run, tiny_phi_dir):
    base, _ = sft_run
    argv = [
        "--config", str(ROOT / "recipes/cpu-demo-dpo.yaml"),
        *tiny_overrides(tiny_phi_dir, base / "pairs" / "train.jsonl", base / "dpo"), *TINY_TARGETS,
        "--init_adapter", str(base / "out"), "--per_device_train_batch_size", "2", "--max_length", "64",
    ]  # fmt: skip
    model = build_trainer(parse_args(argv)).trainer.model
    start = saved(base / "out")
    assert all(torch.equal(lora_weights(model, "default")[k], start[k]) for k in start)
    assert all(torch.equal(lora_weights(model, "ref")[k], start[k]) for k in start)  # DPO's reference


def test_a_missing_warm_start_is_one_line(tmp_path, tiny_phi_dir):
    pairs = write_pairs_file(tmp_path / "pairs")
    argv = [
        "--config", str(ROOT / "recipes/study/grpo-from-sft.yaml"), *tiny_overrides(tiny_phi_dir, pairs, tmp_path),
        "--init_adapter", str(tmp_path / "nothing-here"),
    ]  # fmt: skip
    from train.pieces import check_recipe

    with pytest.raises(ConfigError, match="^init_adapter .*nothing-here is not here; train it or give"):
        check_recipe(parse_args(argv).train)  # checked when a run starts; the recipe still parses


@pytest.mark.parametrize("name", ["sft", "grpo-from-dpo", "grpo-from-sft"])
def test_the_warm_start_recipes_parse_and_keep_their_promises(name, monkeypatch):
    monkeypatch.chdir(ROOT)  # the recipes name their adapters relative to the repository
    parsed = parse_args(["--config", f"recipes/study/{name}.yaml"])  # the adapters they name come later
    train, training = parsed.train, parsed.training
    assert type(training).__name__ == ("SFTConfig" if name == "sft" else "GRPOConfig")
    if name == "sft":
        return
    assert train.reward_funcs == ["dpo_implicit", "missing_eos_penalty"]
    assert training.num_generations == 8 and 0.02 <= training.beta <= 0.05
    assert train.dataset_depth == "all" and train.max_pairs is None  # every training prompt, every depth
    assert train.gold_check_every and training.save_steps == train.gold_check_every
    assert training.save_total_limit is None  # every checked step can be picked
    # the reward is the adapter that the study's DPO recipe trains on this recipe's training pairs
    made_by = recipe_making(train.implicit_reward_adapter)
    dpo = yaml.safe_load(made_by.read_text())
    assert made_by.name == "dpo-length-normalised.yaml" and dpo["method"] == "dpo"
    assert dpo["pairs_file"] == train.pairs_file
