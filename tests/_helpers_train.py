"""Small real things the training tests build: a hand-made pairs file, a tiny reward model, and the
overrides that run a recipe on the tiny Phi model for a couple of steps on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

PAIRS = [
    ("What is the capital of France?", "Paris is the capital of France.", "I like turtles."),
    ("Name a primary colour.", "Red is a primary colour.", "Bananas are yellow and tasty snacks."),
    ("How many legs does a spider have?", "A spider has eight legs.", "Spiders? No idea, ask someone else."),
    ("Give me a synonym for happy.", "Joyful is a synonym for happy.", "Happy is happy."),
    (
        "What does a thermometer measure?",
        "A thermometer measures temperature.",
        "It measures stuff, I guess.",
    ),
    ("Which planet is closest to the Sun?", "Mercury is the closest planet to the Sun.", "Pluto, obviously."),
]


def write_pairs_file(folder: Path) -> Path:
    """train.jsonl in the pair format of train.data, with a stats.json beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        {
            "prompt": p,
            "chosen": c,
            "rejected": r,
            "tree_id": f"t{i}",
            "prompt_id": f"p{i}",
            "chosen_id": f"c{i}",
            "rejected_id": f"r{i}",
            "lang": "en",
            "chosen_rank": 0,
            "rejected_rank": 1,
            "chosen_likes": 1,
            "rejected_likes": 0,
            "rule": "rank",
        }
        for i, (p, c, r) in enumerate(PAIRS)
    ]
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    (folder / "stats.json").write_text(json.dumps({"source": "hand-made", "train": {"pairs": len(lines)}}))
    return path


def make_tiny_classifier(path: Path, tokenizer_dir: Path) -> Path:
    """A tiny random one-label sequence classifier whose tokenizer has no chat template (like Open
    Assistant's DeBERTa reward models, which take question and answer as a text pair)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.chat_template = None
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=tokenizer.eos_token_id,
    )
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "chat_template.jinja").unlink(missing_ok=True)
    return path


def tiny_overrides(tiny_phi_dir, pairs_file, output_dir, max_steps=2) -> list[str]:
    """A recipe's run shrunk to the tiny model: LoRA r=4, a step or two, on the CPU on any machine."""
    return [
        "--model_name_or_path",
        str(tiny_phi_dir),
        "--pairs_file",
        str(pairs_file),
        "--output_dir",
        str(output_dir),
        "--max_steps",
        str(max_steps),
        "--save_steps",
        "2",
        "--logging_steps",
        "1",
        "--lora_r",
        "4",
        "--lora_alpha",
        "8",
        "--learning_rate",
        "1e-3",
        "--gradient_accumulation_steps",
        "1",
        "--use_cpu",
        "true",
    ]
