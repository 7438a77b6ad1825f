"""Bad recipes stop with one line that names the key and says what to do, before any model is loaded.

The model folder given to every case has a config and a tokenizer but no weights: a check that came
after the weights were loaded would fail there instead ("cannot load base model"), not with its own line.
"""

import re
import shutil
from pathlib import Path

import pytest

from tests._helpers_train import tiny_overrides, write_pairs_file
from train.config import ConfigError, GroupArguments, check_group_sizes
from train.train import main

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
GRPO_DEFAULTS = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, "num_generations": 8}


@pytest.fixture(scope="module")
def weightless(tmp_path_factory, tiny_phi_dir):
    folder = tmp_path_factory.mktemp("weightless")
    for path in tiny_phi_dir.iterdir():
        if not path.name.endswith(".safetensors"):
            shutil.copy(path, folder / path.name)
    return folder


def error_of(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert "cannot load" not in err
    return err


def recipe_with(tmp_path, text: str):
    path = tmp_path / "recipe.yaml"
    path.write_text((RECIPES / "phi2-grpo-qlora.yaml").read_text() + "\n" + text + "\n")
    return path


CASES = {
    # recipe file lines or command-line arguments -> what the one line must say
    "unknown key": ("learning_rat: 0.1", ["'learning_rat'", "did you mean learning_rate?"]),
    "unknown flag": (["--num_generation", "2"], ["'num_generation'", "the command line", "num_generations"]),
    "float for an int": ("max_steps: 1.5", ["max_steps", "must be an integer, got 1.5"]),
    "word for a number": ("learning_rate: fast", ["learning_rate", "must be a number", "'fast'"]),
    "quoted bool": ("use_peft: 'yes'", ["use_peft", "must be true or false"]),
    "number for a list": ("reward_funcs: 3", ["reward_funcs", "list of strings"]),
    "bad flag value": (["--max_steps", "many"], ["--max_steps", "invalid int value: 'many'"]),
    "unknown method": ("method: grop", ["method", "one of grpo, dpo, reward", "'grop'"]),
    "reward not in the registry": (
        ["--reward_funcs", "preference", "helpfulness", "--reward_weights", "1", "1"],
        ["reward_funcs names helpfulness", "train.rewards.REWARDS", "concision"],
    ),
    "weights of the wrong length": (
        ["--reward_weights", "1", "2"],
        ["reward_weights has 2 values for 3 reward_funcs", "one weight per reward"],
    ),
    "reward model with no model": (
        ["--reward_funcs", "reward_model", "--reward_weights", "1"],
        ["reward_model_name_or_path is not set"],
    ),
    "group that does not fit": (
        ["--per_device_train_batch_size", "3", "--num_generations", "2"],
        ["not a multiple of num_generations 2", "set per_device_train_batch_size to 2"],
    ),
    "missing pairs, no source": (
        ["--pairs_file", "nowhere/train.jsonl", "--dataset_source", ""],
        ["pairs_file nowhere/train.jsonl does not exist", "python -m train.data --source SOURCE"],
    ),
    "LoRA target the model lacks": (
        ["--lora_target_modules", "q_proj", "o_proj"],
        ["lora_target_modules o_proj match no module", "its linear layers are: dense, fc1, fc2"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_recipe_is_one_line_naming_the_key(case, tmp_path, weightless, capsys):
    change, expected = CASES[case]
    pairs = write_pairs_file(tmp_path / "pairs")
    recipe = recipe_with(tmp_path, change if isinstance(change, str) else "")
    argv = [
        "--config",
        str(recipe),
        *tiny_overrides(weightless, pairs, tmp_path / "out"),
        "--num_generations",
        "2",
        "--per_device_train_batch_size",
        "2",
        *([] if isinstance(change, str) else change),
    ]
    err = error_of(argv, capsys)
    for part in expected:
        assert part in err, err
    assert not (tmp_path / "out").exists()  # nothing was written


@pytest.mark.parametrize(
    "sizes,processes,fix",
    [
        ({"per_device_train_batch_size": 2, "num_generations": 4}, 1, "per_device_train_batch_size to 4"),
        ({"per_device_train_batch_size": 2, "num_generations": 4}, 3, "per_device_train_batch_size to 4"),
        ({"per_device_train_batch_size": 1, "num_generations": 4}, 2, "per_device_train_batch_size to 2"),
        (
            {"per_device_train_batch_size": 3, "num_generations": 8, "gradient_accumulation_steps": 2},
            2,
            "to 2",
        ),
        (
            {"per_device_train_batch_size": 3, "generation_batch_size": 6, "num_generations": 4},
            1,
            "size to 12",
        ),
        ({"num_generations": 1}, 1, "set it to 2 or more"),
    ],
)
def test_group_sizes_say_what_to_change_for_any_process_count(sizes, processes, fix):
    """The error names a value to set, and that value fits on the same number of processes."""
    with pytest.raises(ConfigError, match=fix) as error:
        check_group_sizes(GroupArguments(**sizes), GRPO_DEFAULTS, processes)
    key, value = re.search(r"set (\w+) to (\d+)", str(error.value)).groups()
    fixed = {**sizes, "num_generations" if key == "it" else key: int(value)}
    check_group_sizes(GroupArguments(**fixed), GRPO_DEFAULTS, processes)  # the advice is right


def test_group_sizes_use_the_process_count_of_the_launch(tmp_path, weightless, monkeypatch, capsys):
    """accelerate launch / torchrun tell each rank WORLD_SIZE: 2 ranks x 1 completion cannot hold groups of 4."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    argv = [
        "--config",
        str(RECIPES / "phi2-grpo-qlora.yaml"),
        *tiny_overrides(weightless, write_pairs_file(tmp_path / "pairs"), tmp_path / "out"),
        "--per_device_train_batch_size",
        "1",
        "--num_generations",
        "4",
    ]
    err = error_of(argv, capsys)
    assert "1 x 2 processes x 1 steps = 2" in err and "set per_device_train_batch_size to 2" in err


def test_help_still_prints_the_options(capsys):
    assert main(["--config", str(RECIPES / "cpu-demo.yaml"), "--help"]) == 0
    assert "--config" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:  # TRL's own, for the recipe's method
        main(["--config", str(RECIPES / "cpu-demo.yaml"), "--help-trl"])
    assert done.value.code == 0 and "--num_generations" in capsys.readouterr().out
