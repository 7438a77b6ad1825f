"""What a newcomer meets first: the commands' help, one-line errors for a recipe's missing pieces, the
demo adapters found from an installed layout, and a quiet start-up. (.ci/newcomer checks the rest
with real virtualenvs and the real wheel.)"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RECIPE = """method: grpo
model_name_or_path: {model}
pairs_file: {pairs}
reward_funcs: [reward_model, not_empty]
reward_model_name_or_path: {reward_model}
use_cpu: true
report_to: none
output_dir: {out}
"""


def test_train_help_leads_with_our_options_and_names_trl_in_a_paragraph(capsys):
    from train.config import TrainArguments
    from train.train import main

    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: python -m train --config RECIPE.yaml")
    options = text[text.index("options:") :]
    assert options.index("--config") < options.index("--method")
    for name in TrainArguments.__dataclass_fields__:
        assert f"--{name}" in text
    assert "--help-trl" in text and "https://huggingface.co/docs/trl" in text
    assert "--num_generations" not in text and len(text.splitlines()) < 100


def test_help_trl_lists_trl_options_for_the_method(capsys):
    from train.train import main

    with pytest.raises(SystemExit) as exit_:
        main(["--help-trl", "--method", "dpo"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: python -m train") and "--loss_type" in text and "--beta" in text


@pytest.mark.parametrize(
    "module", ["train.data", "train.evaluate", "train.hh_rlhf", "train.hub", "train.card", "study.run"]
)
def test_every_usage_line_names_the_real_command(module, capsys):
    import importlib

    main = importlib.import_module(module if module != "train.card" else "train.card.__main__").main
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m {module} ")


def test_without_the_train_extra_the_help_works_and_a_run_says_what_to_install(monkeypatch, capsys):
    from train.train import main

    monkeypatch.setitem(sys.modules, "trl", None)  # as if trl were not installed
    assert main(["--help"]) == 0
    assert "pip install 'phi2-assistant[train]'" in capsys.readouterr().out.splitlines()[-1]
    with pytest.raises(SystemExit) as exit_:
        main(["--config", "recipes/cpu-demo.yaml"])
    (line,) = str(exit_.value.code).splitlines()
    assert line.startswith("error: python -m train needs the training extra (trl missing)")
    assert "pip install 'phi2-assistant[train]'" in line


def test_a_missing_reward_model_is_one_line_with_the_run_that_makes_it(tmp_path, tiny_phi_dir, capsys):
    from train.train import main

    pairs = tmp_path / "pairs" / "train.jsonl"
    pairs.parent.mkdir()
    pairs.write_text('{"prompt": "Hi?", "chosen": "Hello.", "rejected": "No."}\n')
    recipe = tmp_path / "recipe.yaml"
    missing = "outputs/study/reward-model-oasst"  # what recipes/study/reward-model-oasst.yaml makes
    recipe.write_text(RECIPE.format(model=tiny_phi_dir, pairs=pairs, reward_model=missing, out=tmp_path))
    assert main(["--config", str(recipe)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        f"error: reward_model_name_or_path {missing} is not here; "
        "make it with: python -m train --config recipes/study/reward-model-oasst.yaml"
    )


def test_a_missing_data_source_is_one_line_saying_where_it_comes_from(tmp_path, capsys):
    from train.train import main

    recipe = tmp_path / "recipe.yaml"
    source = tmp_path / "absent" / "oasst1-validation-en.jsonl"
    recipe.write_text(
        f"method: dpo\npairs_file: {tmp_path / 'pairs' / 'train.jsonl'}\ndataset_source: [{source}]\n"
        f"use_cpu: true\nreport_to: none\noutput_dir: {tmp_path / 'out'}\n"
    )
    assert main(["--config", str(recipe)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"dataset_source {source} is not here" in line and "docs/data.md" in line


def test_the_committed_grpo_demo_is_evaluable_with_what_is_committed(monkeypatch, tmp_path):
    """Its training objective (the DPO implicit reward) needs a DPO adapter: the committed one is
    there, so the section is computed; where it is not, one line says which and how to make it."""
    from train.evaluate import objective_left_out
    from train.evaluate.inputs import read_recipe

    monkeypatch.chdir(ROOT)
    recipe = read_recipe("demo/smollm2-grpo-demo")
    assert "dpo_implicit" in recipe["reward_funcs"] and objective_left_out(recipe) is None
    missing = str(tmp_path / "dpo-adapter")
    note = objective_left_out({**recipe, "implicit_reward_adapter": missing})
    assert note == (
        f"the training-objective section is left out: its implicit reward's DPO adapter {missing} is not "
        "here; train it or give another folder"
    )
    assert objective_left_out({**recipe, "method": "dpo"}) is None  # DPO has none


def test_demo_adapters_are_found_in_an_installed_layout(tmp_path):
    """A wheel puts demo/ inside the package (setup.py: assistant.demo); nothing of the checkout is
    on the path and the working folder is elsewhere."""
    site = tmp_path / "site-packages"
    shutil.copytree(ROOT / "assistant", site / "assistant", ignore=shutil.ignore_patterns("__pycache__"))
    for config in (ROOT / "demo").glob("*/adapter_config.json"):
        (site / "assistant" / "demo" / config.parent.name).mkdir(parents=True)
        shutil.copy(config, site / "assistant" / "demo" / config.parent.name)
    code = "import json; from assistant.models import demo_adapters; print(json.dumps(demo_adapters()))"
    result = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {code}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert [Path(p).name for p in found] == ["smollm2-grpo-demo"]
    assert all(Path(p).parent == site / "assistant" / "demo" for p in found)


def test_an_offline_start_logs_nothing_that_reads_as_an_error(caplog):
    """HF_HUB_OFFLINE (set for the tests) is the expected case: the serving line says why the demo is
    served; nothing at INFO or above says a fetch failed."""
    from assistant.models import load_for_serving

    with caplog.at_level(logging.INFO):
        loaded = load_for_serving(None, None, None)
    assert "HF_HUB_OFFLINE is set" in loaded.describe()
    loud = [
        r.getMessage() for r in caplog.records if r.levelno >= logging.INFO and r.name.startswith("assistant")
    ]
    assert not [m for m in loud if "cannot fetch" in m or "error" in m.lower()], loud


def test_streamlit_collects_no_usage_statistics():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["browser"]["gatherUsageStats"] is False
