"""What a recipe needs that must already exist (its data sources, its reward model, the adapters it
continues or scores with), checked before any long work, each missing one reported in one line with
where it comes from.

A fresh clone has neither ``../shared/data`` (the real Open Assistant and HH-RLHF files the CPU recipes
read) nor ``outputs/`` (the reward models other recipes train): without these checks a run dies minutes
in, with the Hub client's raw ``OSError`` about a repo id.
"""

from __future__ import annotations

from pathlib import Path

DATA_HELP = "docs/data.md says where it comes from (tests/data/ holds a small subset)"


def looks_local(name: str) -> bool:
    """A folder or file path, not a Hub id (``namespace/name``)."""
    return Path(name).exists() or name.startswith((".", "/", "~")) or name.count("/") != 1


def recipe_making(output: str, recipes: Path = Path("recipes")) -> Path | None:
    """The recipe under ``recipes`` whose output_dir is ``output`` (the run that makes it), if any."""
    import yaml

    target = Path(output)
    for path in sorted(recipes.rglob("*.yaml")):
        try:
            recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(recipe, dict) and recipe.get("output_dir") and Path(recipe["output_dir"]) == target:
            return path
    return None


def missing_model(name: str, what: str) -> str | None:
    """Why the model ``name`` cannot be had (a folder that is not there, a Hub id neither cached nor
    reachable), with the command that makes it when a recipe here does; None when it is there."""
    if not looks_local(name):
        from assistant.models import hub_file

        if hub_file(name, "config.json") is None:
            return f"{what} {name} is neither in the Hub cache nor reachable on the Hub"
        return None
    if (Path(name) / "config.json").is_file() or (Path(name) / "adapter_config.json").is_file():
        return None
    recipe = recipe_making(name)
    how = f"make it with: python -m train --config {recipe}" if recipe else "train it or give another folder"
    return f"{what} {name} is not here; {how}"


def missing_source(sources: list[str] | None) -> str | None:
    """The first local data source that is not there (Hub ids are fetched by train.data itself)."""
    for source in sources or []:
        if source and looks_local(source) and not Path(source).exists():
            return f"dataset_source {source} is not here: {DATA_HELP}"
    return None


def check_recipe(train_args) -> None:
    """Before a run starts (not when a recipe is only parsed): the pairs or the sources they are built
    from, then the reward model; raises ConfigError naming the first missing piece."""
    from train.config import ConfigError

    pairs = Path(train_args.pairs_file)
    if not pairs.exists() and (missing := missing_source(train_args.dataset_source)):
        raise ConfigError(f"pairs_file {pairs} is not built yet and {missing}")
    for key in ("init_adapter", "implicit_reward_adapter"):  # a warm start, the implicit reward's adapter
        if (name := getattr(train_args, key)) and (missing := missing_model(name, key)):
            raise ConfigError(missing)
    if train_args.method == "grpo" and "reward_model" in train_args.reward_funcs:
        name = train_args.reward_model_name_or_path
        if missing := missing_model(name, "reward_model_name_or_path"):
            raise ConfigError(missing)
