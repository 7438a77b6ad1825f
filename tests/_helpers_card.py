"""A real training output folder, as `python -m train` leaves it, built in seconds for card and Hub tests.

Real pieces: a LoRA adapter saved by PEFT on the tiny Phi model, its tokenizer with our chat template,
data stats written by `train.data` from the real Open Assistant sample, and a matplotlib plot. Only the
numbers a long run would log (metrics.jsonl, final metrics) are made up.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from train.outputs import metric_trends

RECIPE = {
    "model_name_or_path": "microsoft/phi-2",
    "method": "grpo",
    "learning_rate": 5.0e-6,
    "lora_r": 4,
    "lora_alpha": 8,
    "lora_dropout": 0.05,
    "lora_target_modules": ["q_proj", "k_proj", "v_proj", "dense"],
    "load_in_4bit": True,
    "num_generations": 4,
    "per_device_train_batch_size": 4,
    "max_completion_length": 32,
    "beta": 0.0,
    "max_steps": 3,
}


def tiny_lora(base_dir: Path, base_model_id: str):
    """A LoRA on the tiny Phi with non-zero weights (so it changes the output) and its tokenizer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from assistant.prompt import ensure_chat_template

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(
        r=RECIPE["lora_r"],
        lora_alpha=RECIPE["lora_alpha"],
        lora_dropout=RECIPE["lora_dropout"],
        target_modules=RECIPE["lora_target_modules"],
        task_type="CAUSAL_LM",
        init_lora_weights=False,
    )
    model = get_peft_model(base, config)
    # What training records: the Hub id of the base, never the local folder it was loaded from.
    model.peft_config["default"].base_model_name_or_path = base_model_id
    tokenizer = ensure_chat_template(AutoTokenizer.from_pretrained(base_dir))
    return model, tokenizer


def build_training_output(
    out: Path,
    base_dir: Path,
    sample_path: Path,
    base_model_id: str = "microsoft/phi-2",
    with_eval: bool = False,
) -> dict:
    """Write a training output folder to ``out``; return its training_info."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from train.data import build_pairs

    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = tiny_lora(base_dir, base_model_id)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    trainable, total = model.get_nb_trainable_parameters()

    train_pairs, _, stats = build_pairs(sample_path, limit=100)
    (out / "data_stats.json").write_text(json.dumps(stats, indent=2))
    (out / "recipe.yaml").write_text(yaml.safe_dump({**RECIPE, "model_name_or_path": base_model_id}))

    rows = [
        {"step": s, "reward": 0.1 * s, "reward_std": 0.2, "loss": 0.0, "completions/mean_length": 30 - s}
        for s in (1, 2, 3)
    ]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "plots").mkdir(exist_ok=True)
    fig, ax = plt.subplots()
    ax.plot([r["step"] for r in rows], [r["reward"] for r in rows])
    fig.savefig(out / "plots" / "reward.png")
    plt.close(fig)

    info = {
        "method": "grpo",
        "base_model": base_model_id,
        "trainable_params": trainable,
        "total_params": total,
        "target_modules": RECIPE["lora_target_modules"],
        "global_step": 3,
        "train_runtime_s": 42.0,
        "device": "cpu",
        "precision": "4-bit NF4, bf16 compute",
        "train_pairs": len(train_pairs),
        "pairs_file": "/home/someone/data/pairs/train.jsonl",
        "reward_weights": {"preference": 1.0, "ends_with_eos": 0.5},
        "final_metrics": {"train_loss": 0.0123, "reward": 0.3},
        "notes": ["no GPU: bf16/fp16 mixed precision off"],
        "versions": {"trl": "1.16.0", "peft": "0.21.2"},
        "trends": metric_trends(rows),
    }
    (out / "training_info.json").write_text(json.dumps(info, indent=2))
    # Trainer checkpoints sit in the output folder too; they must never be pushed.
    (out / "checkpoint-2").mkdir(exist_ok=True)
    (out / "checkpoint-2" / "adapter_model.safetensors").write_bytes(b"not for the Hub")
    if with_eval:
        add_eval(out)
    return info


def add_eval(out: Path, folder: str = "eval") -> None:
    """What `python -m train.evaluate` adds: a report whose links are relative to its folder (eval/:
    dev; sealed/: the sealed test, as study.sealed writes it), and a plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out / folder).mkdir(exist_ok=True)
    fig, ax = plt.subplots()
    ax.bar(["base", "tuned"], [0.4, 0.6])
    fig.savefig(out / folder / "win_rate.png")
    fig.savefig(out / folder / "lengths.png")
    plt.close(fig)
    (out / folder / "report.md").write_text(
        "### Evaluation: base vs tuned\n\n#### Generation quality\n\n"
        "Tuned wins **60%** of 20 held-out prompts.\n\n![Win rate](win_rate.png)\n\n"
        "The full answers are in [samples.md](samples.md).\n"
    )
    (out / folder / "samples.md").write_text("# Samples\n")
    from train.identity import file_sha256

    weights = file_sha256(out / "adapter_model.safetensors")  # the report belongs to these weights
    tests = {  # paired tests as train.evaluate writes them: tuned won on preference, not on the judge
        "preference": {"test": {"better": 9, "worse": 1, "p_value": 0.021}},
        "judge_verdicts": {"per_prompt": {"test": {"better": 11, "worse": 9, "p_value": 0.82}}},
    }
    pairs = {"file": "test.jsonl" if folder == "sealed" else "dev.jsonl", "prompts": 20}
    (out / folder / "report.json").write_text(
        json.dumps({"adapter": {"sha256": weights}, "pairs": pairs, **tests})
    )
