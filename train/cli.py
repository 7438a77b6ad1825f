"""What the commands say before they do anything: ``python -m train --help`` (our options first, TRL's in
one line), and the one line that names the extra to install when a command's libraries are missing.

``--help`` needs no training library: it is built from ``train.config.TrainArguments`` with
transformers' ``HfArgumentParser`` (the Space's requirements have it), so a wheel installed without the
``train`` extra can still say what the command takes and what to install.
"""

from __future__ import annotations

import importlib.util
import sys

TRAIN_EXTRA = (
    "pip install 'phi2-assistant[train]' (or, in a checkout: pip install -c constraints.txt -e '.[train]')"
)
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
