"""Bad recipes stop with one line that names the key and says what to do, before any model is loaded.

The model folder given to every case has a config and a tokenizer but no weights: a check that came
after the weights were loaded would fail there instead ("cannot load base model"), not with its own line.
"""

import shutil
from pathlib import Path

import pytest

from tests._helpers_train import tiny_overrides, write_pairs_file
from train.train import main

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


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
    # recipe file lines or command-line arguments -> what the one line must say. Types and choices are
    # argparse's (TRL's parser, the recipe's values parsed as the command line's are), GRPO's group
    # sizes GRPOConfig's own check; the rest are ours.
    "unknown key": ("learning_rat: 0.1", ["'learning_rat'", "recipe.yaml", "did you mean learning_rate?"]),
    "unknown flag": (["--num_generation", "2"], ["'num_generation'", "the command line", "num_generations"]),
    "float for an int": ("max_steps: 1.5", ["recipe.yaml", "--max_steps", "invalid int value: '1.5'"]),
    "word for a number": (
        "learning_rate: fast",
        ["recipe.yaml", "--learning_rate", "invalid float value: 'fast'"],
    ),
    "word for a bool": ("use_peft: maybe", ["recipe.yaml", "--use_peft", "Truthy value expected: got maybe"]),
    "number for a list": ("reward_funcs: 3", ["reward_funcs names 3", "train.rewards.REWARDS"]),
    "bad flag value": (
        ["--max_steps", "many"],
        ["the command line", "--max_steps", "invalid int value: 'many'"],
    ),
    "unknown method": (
        "method: grop",
        ["recipe.yaml", "--method", "invalid choice: 'grop'", "'grpo', 'dpo'"],
    ),
    "unknown TRL choice": (
        "lr_scheduler_type: cosin",
        ["recipe.yaml", "invalid choice: 'cosin'", "'cosine'"],
    ),
    "broken YAML": ("reward_funcs: [preference", ["recipe.yaml is not YAML", "line"]),
    "reward not in the registry": (
        ["--reward_funcs", "preference", "helpfulness", "--reward_weights", "1", "1"],
        ["reward_funcs names helpfulness", "train.rewards.REWARDS", "concision"],
    ),
    "weights of the wrong length": (
        ["--reward_weights", "1", "2", "3"],
        ["reward_weights has 3 values for 2 reward_funcs", "one weight per reward"],
    ),
    "reward model with no model": (
        ["--reward_funcs", "reward_model", "--reward_weights", "1"],
        ["reward_model_name_or_path is not set"],
    ),
    "group that does not fit": (
        ["--per_device_train_batch_size", "3", "--num_generations", "2"],
        ["generation_batch_size (3) must be divisible by num_generations (2)"],
    ),
    "group of one": (["--num_generations", "1"], ["at least 2 generations per prompt", "You provided 1"]),
    "missing pairs, no source": (
        ["--pairs_file", "nowhere/train.jsonl", "--dataset_source", ""],
        ["pairs_file nowhere/train.jsonl does not exist", "python -m train.data --source SOURCE"],
    ),
    "vLLM with a 4-bit base": (
        ["--use_vllm", "true"],
        ["use_vllm cannot run with a quantized base", "TRL #4973"],
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


def test_help_still_prints_the_options(capsys):
    assert main(["--config", str(RECIPES / "cpu-demo.yaml"), "--help"]) == 0
    assert "--config" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:  # TRL's own, for the recipe's method
        main(["--config", str(RECIPES / "cpu-demo.yaml"), "--help-trl"])
    assert done.value.code == 0 and "--num_generations" in capsys.readouterr().out


def test_vllm_with_a_16bit_base_parses(tmp_path, weightless):
    """The refusal above is of the 4-bit base alone: vLLM with a 16-bit base is a recipe that can run."""
    from train.train import parse_args

    pairs = write_pairs_file(tmp_path / "pairs")
    argv = [
        *["--config", str(RECIPES / "phi2-grpo-qlora.yaml")],
        *tiny_overrides(weightless, pairs, tmp_path / "out"),
        *["--num_generations", "2", "--per_device_train_batch_size", "2"],
        *["--use_vllm", "true", "--load_in_4bit", "false"],
    ]
    parsed = parse_args(argv)
    assert parsed.training.use_vllm and not parsed.model.load_in_4bit
