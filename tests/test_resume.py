"""Resume that survives the kill it is for: one output folder, a real process SIGKILLed at three points
(mid-training with the metrics line cut, during a checkpoint save, during the card write), then the
same command until it finishes, then once more (finished: nothing changes), then a start over.

The killed runs are `python -m train` processes killed by themselves at the chosen point
(tests/_killed_run.py); the runs after them are in this process, which is faster and just as real.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests._helpers_train import tiny_overrides, write_pairs_file
from train.callbacks import read_metrics
from train.train import parse_args, run

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "phi2-grpo-qlora.yaml"
GRPO = [
    "--num_generations",
    "2",
    "--per_device_train_batch_size",
    "2",
    "--max_completion_length",
    "8",
    "--reward_funcs",
    "not_empty",
    "ends_with_eos",
    "--reward_weights",
    "1",
    "1",
]


def killed_at(point: str, argv: list[str]) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "_killed_run.py"), point, *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == -9, f"not killed at {point}: rc {done.returncode}\n{done.stderr[-3000:]}"
    return done.stdout


def steps_logged(out: Path) -> list[int]:
    return [r["step"] for r in read_metrics(out / "metrics.jsonl") if "train_runtime" not in r]


def snapshot(folder: Path) -> dict:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_killed_three_times_then_finished_then_left_alone(tmp_path, tiny_phi_dir, capsys):
    out = tmp_path / "out"
    argv = [
        "--config",
        str(RECIPE),
        *tiny_overrides(tiny_phi_dir, write_pairs_file(tmp_path / "pairs"), out, max_steps=4),
        *GRPO,
    ]

    # 1. Killed after step 3, its metrics line cut: checkpoint-2 is what a resume has.
    killed_at("log:3", argv)
    assert not (out / "metrics.jsonl").read_text().endswith("\n")
    assert steps_logged(out) == [1, 2]  # the cut line is left out, not a JSONDecodeError
    assert (out / "checkpoint-2" / "trainer_state.json").exists() and not (
        out / "training_info.json"
    ).exists()

    # 2. Resumed from checkpoint-2, killed while saving checkpoint-4: half a checkpoint on disk.
    log = killed_at("checkpoint:4", argv)
    assert f"resuming from {out / 'checkpoint-2'}" in log
    assert (out / "checkpoint-4" / "adapter_model.safetensors").exists()
    assert not (out / "checkpoint-4" / "trainer_state.json").exists()
    assert steps_logged(out) == [1, 2, 3, 4]  # steps 3 and 4 once each, the cut line gone

    # 3. The half checkpoint is not taken up: resumed from checkpoint-2 again, killed during the card write.
    log = killed_at("card", argv)
    assert (
        f"removing {out / 'checkpoint-4'}: cut short" in log
        and f"resuming from {out / 'checkpoint-2'}" in log
    )
    info = json.loads((out / "training_info.json").read_text())
    assert info["global_step"] == 4 and "finished" not in info  # complete, but the card is not in place

    # 4. The same command again: nothing left to train, the end is written again, now marked finished.
    trainer = run(parse_args(argv))
    info = json.loads((out / "training_info.json").read_text())
    assert trainer.state.global_step == info["global_step"] == 4 and info["finished"] is True
    assert info["resumed_from"] == str(out / "checkpoint-4")
    assert (
        load_file(out / "adapter_model.safetensors").keys()
        == load_file(out / "checkpoint-4" / "adapter_model.safetensors").keys()
    )
    for key, value in load_file(out / "adapter_model.safetensors").items():
        assert torch.equal(value, load_file(out / "checkpoint-4" / "adapter_model.safetensors")[key])
    assert steps_logged(out) == [1, 2, 3, 4]
    card = (out / "README.md").read_text()
    assert "This model is a fine-tuned version of" not in card and "| Optimizer steps | 4 |" in card
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]

    # 5. Finished: the same command says so and changes nothing, byte for byte and time for time.
    before = snapshot(out)
    capsys.readouterr()
    run(parse_args(argv))
    assert "already finished" in capsys.readouterr().out
    assert snapshot(out) == before

    # 6. Unless asked to start over: the old checkpoints go, so no later resume picks them up.
    run(parse_args([*argv, "--resume", "false", "--max_steps", "1", "--save_steps", "1"]))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    assert steps_logged(out) == [1]
    assert json.loads((out / "training_info.json").read_text())["global_step"] == 1


@pytest.mark.parametrize("method", ["dpo", "reward"])
def test_other_methods_resume_and_finish_the_same_way(method, tmp_path, tiny_phi_dir, capsys):
    """DPO and the reward model share the save / resume path: a finished run is left alone, and a
    larger max_steps trains on from its last checkpoint."""
    recipe = {"dpo": "phi2-dpo-qlora.yaml", "reward": "judge-hh-rlhf.yaml"}[method]
    out = tmp_path / "out"
    argv = [
        "--config",
        str(ROOT / "recipes" / recipe),
        *tiny_overrides(tiny_phi_dir, write_pairs_file(tmp_path / "pairs"), out),
        "--per_device_train_batch_size",
        "2",
        "--max_length",
        "64",
        "--lora_target_modules",  # the judge's regex names SmolLM2's layers
        "q_proj",
        "v_proj",
    ]
    run(parse_args(argv))
    info = json.loads((out / "training_info.json").read_text())
    assert (info["method"], info["global_step"], info["finished"]) == (method, 2, True)
    before = snapshot(out)
    capsys.readouterr()
    run(parse_args(argv))
    assert "already finished" in capsys.readouterr().out and snapshot(out) == before
    trainer = run(parse_args([*argv, "--max_steps", "3"]))
    info = json.loads((out / "training_info.json").read_text())
    assert trainer.state.global_step == info["global_step"] == 3
    assert info["resumed_from"] == str(out / "checkpoint-2") and steps_logged(out) == [1, 2, 3]
