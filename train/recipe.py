"""Reading a recipe: our options and TRL's from one flat YAML file and ``--key value`` overrides, with TRL's
``TrlParser``, and the checks only this project can make, each failure one line before any model loads.

The parser checks the type and choices of every value, the recipe's too (parsed as the command line's
are), and TRL's configs check their own values (GRPO's group sizes among them). What is left here is
what only we know: reward names, the adapters and the pairs a recipe names.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import NamedTuple

from train.config import ConfigError, MethodArguments, TrainArguments

COMMAND_LINE = "the command line arguments"


class Parsed(NamedTuple):
    train: object  # train.config.TrainArguments
    training: object  # trl.GRPOConfig, DPOConfig, RewardConfig or SFTConfig
    model: object  # trl.ModelConfig
    keys: list[str]  # keys set by the recipe file and the command line, in order
    mixed_precision: str | None  # "bf16"/"fp16" as asked for, before the machine changed it


def parse_args(argv: list[str] | None = None) -> Parsed:
    """Our options and TRL's from a recipe file and ``--key value`` overrides, checked.

    The method decides which TRL config class the recipe's keys belong to, so a first pass reads only
    ``method`` and the mixed precision asked for; the machine's precision is decided before the second
    pass, which parses everything: TrainingArguments refuses bf16 without CUDA, and fp16 where a GPU has
    no bf16. TRL's configs check their own values there (GRPO's group sizes among them).
    """
    from trl import DPOConfig, GRPOConfig, ModelConfig, RewardConfig, SFTConfig

    argv = list(sys.argv[1:] if argv is None else argv)
    (first,), _ = _parse((MethodArguments,), argv, known_only=True)
    config_class = {"grpo": GRPOConfig, "dpo": DPOConfig, "reward": RewardConfig, "sft": SFTConfig}
    # TRL turns bf16 on when neither is set.
    asked = (
        "fp16" if first.fp16 else "bf16" if first.bf16 or (first.bf16 is None and not first.fp16) else None
    )
    bf16, fp16 = mixed_precision_for(asked, first.use_cpu)
    precision = ["--bf16", str(bf16).lower(), "--fp16", str(fp16).lower()]
    classes = (TrainArguments, config_class[first.method], ModelConfig)
    (train_args, training_args, model_args), keys = _parse(classes, argv + precision, given=argv)
    if train_args.method == "grpo":
        check_rewards(train_args, training_args.reward_weights)
    check_pairs(train_args)
    check_adapters(train_args)
    check_combinations(training_args, model_args)
    return Parsed(train_args, training_args, model_args, keys, asked)


def _parse(classes, argv: list[str], known_only=False, given=()) -> tuple[list, list[str]]:
    """The dataclasses of ``classes`` from TRL's parser, and the keys the recipe and ``given`` set.

    Every error is one ConfigError line naming the recipe file or the command line; an unknown key is
    one unless ``known_only`` (the first pass reads a few options among all the others).
    """
    import yaml

    where = argv[argv.index("--config") + 1] if "--config" in argv else "the recipe"
    parser = _parser(classes, where, add_help=not known_only)
    try:
        *parsed, from_recipe, from_command_line = parser.parse_args_and_config(
            argv, return_remaining_strings=True, separate_remaining_strings=True
        )
    except OSError as error:
        raise ConfigError(f"cannot read the recipe {where}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{where} is not YAML: {' '.join(str(error).split())}") from None
    except ValueError as error:  # ours, TRL's configs' own checks, a recipe that is no mapping
        raise ConfigError(str(error).splitlines()[0]) from None
    for unknown, place in ((from_recipe, where), (from_command_line, COMMAND_LINE)):
        if unknown and not known_only:
            key = unknown[0].removeprefix("--").split("=", 1)[0]
            near = difflib.get_close_matches(key, set(parser.dest_of.values()), n=1)
            hint = (
                f"did you mean {near[0]}?" if near else "remove it (python -m train --help lists the options)"
            )
            raise ConfigError(f"unknown key {key!r} in {place}: no option has that name; {hint}")
    named = [parser.dest_of.get(token.split("=", 1)[0]) for token in given]
    return parsed, list(dict.fromkeys([*parser.recipe_keys, *filter(None, named)]))


def _parser(classes, where: str, **kwargs):
    """TRL's parser, with the recipe's values parsed as command-line values are and argparse's
    usage-and-exit turned into one ConfigError line naming where the bad value came from."""
    import argparse

    from trl import TrlParser

    class Parser(TrlParser):
        def __init__(self):
            super().__init__(classes, prog="python -m train", allow_abbrev=False, **kwargs)
            self.place, self.recipe_keys = COMMAND_LINE, []
            self.dest_of = {o: a.dest for a in self._actions for o in a.option_strings if a.dest != "help"}

        def error(self, message):
            raise ConfigError(f"{self.place}: {message} (python -m train --help lists the options)")

        def set_defaults_with_config(self, **recipe) -> list[str]:
            """TrlParser would set the recipe's values as the options' defaults unchecked (``max_steps:
            1.5`` would pass): each one is parsed here as its ``--key value`` is, with the option's type
            and choices. A null, a mapping or a list for an option of one value has no such form and is
            set as it is, as TRL does. Returns the unknown keys, in TRL's form."""
            actions = {a.dest: a for a in self._actions if a.dest != "help"}
            tokens, as_is, unknown = [], {}, []
            for key, value in recipe.items():
                several = key in actions and actions[key].nargs in ("+", "*")
                if key not in actions:
                    unknown += [f"--{key}", str(value)]
                elif isinstance(value, list) and value and several:
                    tokens += [f"--{key}", *map(str, value)]
                elif value is None or isinstance(value, (list, dict)):
                    as_is[key] = value
                else:
                    tokens.append(f"--{key}={value}")
            self.place, self.recipe_keys = where, [key for key in recipe if key in actions]
            namespace, _ = self.parse_known_args(tokens, argparse.Namespace(**as_is))
            self.place = COMMAND_LINE
            self.set_defaults(**vars(namespace))
            return unknown

    return Parser()


def mixed_precision_for(asked: str | None, use_cpu: bool = False) -> tuple[bool, bool]:
    """(bf16, fp16) for this machine: as asked on a GPU that has it, fp16 on a GPU without bf16 (a T4),
    neither on a CPU (bf16 autocast there is ~5x slower)."""
    import torch

    if use_cpu or not torch.cuda.is_available():
        return False, False
    if asked == "bf16" and not torch.cuda.is_bf16_supported():
        return False, True
    return asked == "bf16", asked == "fp16"


# ----------------------------------------------------------------------------------------------
# What only we know


def check_rewards(train_args, reward_weights: list[float] | None) -> None:
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


def check_combinations(training_args, model_args) -> None:
    """Options that each run alone but not together, refused before anything loads."""
    if getattr(training_args, "use_vllm", False) and (model_args.load_in_4bit or model_args.load_in_8bit):
        raise ConfigError(
            "use_vllm cannot run with a quantized base (load_in_4bit/load_in_8bit): TRL sends vLLM the merged "
            "weights as packed bitsandbytes storage without its quantisation state and fails at the first "
            "weight sync (TRL #4973); set load_in_4bit: false (a 16-bit base) or use_vllm: false"
        )


def check_adapters(train_args) -> None:
    """Only grpo, dpo and sft continue an adapter, and only GRPO takes a preference anchor (that the
    folders exist is checked when a run starts: train.pieces.check_recipe)."""
    if train_args.init_adapter and train_args.method not in ("grpo", "dpo", "sft"):
        raise ConfigError(f"init_adapter warm-starts grpo, dpo or sft, not method {train_args.method}")
    if train_args.preference_anchor and train_args.method != "grpo":
        raise ConfigError(
            f"preference_anchor adds DPO's loss to GRPO's, not to method {train_args.method}: set it to 0"
        )
    if train_args.preference_anchor < 0 or train_args.preference_anchor_pairs < 1:
        raise ConfigError(
            "preference_anchor must be at least 0 and preference_anchor_pairs at least 1, got "
            f"{train_args.preference_anchor} and {train_args.preference_anchor_pairs}"
        )
    if train_args.preference_anchor_max_length < 2:
        raise ConfigError(
            f"preference_anchor_max_length must be at least 2 tokens, got {train_args.preference_anchor_max_length}"
        )


def check_pairs(train_args) -> None:
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
