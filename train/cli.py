"""The command line of ``python -m train``: its --help (our options first, TRL's in one line), the one line
that names the extra to install when a command's libraries are missing, and the parsing of a recipe and
its ``--key value`` overrides with TRL's ``TrlParser``.

``--help`` needs no training library: it is built from ``train.config.TrainArguments`` with
transformers' ``HfArgumentParser`` (the Space's requirements have it), so a wheel installed without the
``train`` extra can still say what the command takes and what to install.
"""

from __future__ import annotations

import difflib
import importlib.util
import sys
from typing import NamedTuple

from train.config import ConfigError

TRAIN_EXTRA = "pip install 'phi2-assistant[train]' (or, in a checkout: pip install -r requirements-train.txt)"
COMMAND_LINE = "the command line arguments"
TRAIN_USAGE = "python -m train --config RECIPE.yaml [--key value ...]"
TRL_OPTIONS = (
    "Every option of TRL's config for the recipe's method (GRPOConfig, DPOConfig or RewardConfig, with"
    " transformers' TrainingArguments) and of TRL's ModelConfig is accepted too, as a recipe key or as"
    " --key value: `python -m train --help-trl [--method dpo]` lists them all (about 1,400 lines), or"
    " see https://huggingface.co/docs/trl (GRPO, DPO and Reward trainers)."
)


def missing_train_libraries() -> list[str]:
    """The training extra's libraries this environment lacks (empty when the extra is installed)."""
    extra = ("trl", "datasets", "sentence_transformers", "matplotlib")
    return [name for name in extra if importlib.util.find_spec(name) is None]


def require_train_extra(command: str) -> None:
    """Exit with one line naming what to install when the training extra is missing."""
    missing = missing_train_libraries()
    if missing:
        sys.exit(f"error: {command} needs the training extra ({', '.join(missing)} missing): {TRAIN_EXTRA}")


def train_help() -> str:
    """Our options and --config, then TRL's in one paragraph, then what to install when it is missing."""
    import argparse

    from transformers import HfArgumentParser

    class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
        """Defaults shown, and the paragraphs wrapped here, never inside an option's name."""

    from train.config import TrainArguments

    recipe = argparse.ArgumentParser(add_help=False)  # a parent, so that --config is listed first
    recipe.add_argument(
        "--config", metavar="RECIPE.yaml", help="The recipe: a flat YAML file (see recipes/)."
    )
    parser = HfArgumentParser(
        TrainArguments,
        parents=[recipe],
        prog="python -m train",
        usage=TRAIN_USAGE,
        description=wrap(
            "Fine-tune a causal LM with LoRA on Open Assistant preference pairs (GRPO, DPO or a reward "
            "model, with TRL). The recipe's keys are the options below and TRL's; --key value overrides "
            "the recipe."
        ),
        epilog=wrap(TRL_OPTIONS),
        formatter_class=Formatter,
    )
    text = parser.format_help()
    if missing_train_libraries():
        text += f"\nTraining needs the train extra, not installed here: {TRAIN_EXTRA}\n"
    return text


def wrap(text: str) -> str:
    import textwrap

    return textwrap.fill(text, width=88, break_on_hyphens=False, break_long_words=False)


def wants_train_help(argv: list[str]) -> bool:
    return any(token in ("-h", "--help") for token in argv)


def trl_help_argv(argv: list[str]) -> list[str] | None:
    """``--help-trl`` becomes TRL's own --help (all its options), for the method given, if any."""
    if "--help-trl" not in argv:
        return None
    return [token for token in argv if token != "--help-trl"] + ["--help"]


# ----------------------------------------------------------------------------------------------
# Parsing


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

    from train.config import MethodArguments, TrainArguments, check_adapters, check_pairs, check_rewards
    from train.model import mixed_precision_for

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
        raise ConfigError(f"{where} is not YAML: {str(error).splitlines()[0]}") from None
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
