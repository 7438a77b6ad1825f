"""Two processes for real: `accelerate launch` with the repo's multi-GPU config, which on a machine without
GPUs (and with use_cpu) starts two ranks that train with DDP over gloo.

What this covers is the data-parallel path of train.train: pairs built once on the main process
(`main_process_first`), save_model on every rank, the rest of the folder, our card and the push on the
main process only, and DDP itself (a DPO adapter trained on 2 ranks x 1 pair equals the one trained on
1 rank x 2 pairs). DeepSpeed, FSDP and several machines are not covered: they need GPUs.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests._helpers_train import make_tiny_classifier, write_pairs_file
from train.train import parse_args, run

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
LAUNCH = [
    sys.executable,
    "-m",
    "accelerate.commands.accelerate_cli",
    "launch",
    "--config_file",
    str(RECIPES / "accelerate" / "multi_gpu.yaml"),
    "--num_processes",
    "2",
    "--mixed_precision",  # the config's bf16 is for GPUs
    "no",
    "-m",
    "train",
]


def tiny(tiny_phi_dir, pairs_file, output_dir):
    return [
        "--model_name_or_path",
        str(tiny_phi_dir),
        "--pairs_file",
        str(pairs_file),
        "--output_dir",
        str(output_dir),
        "--max_steps",
        "2",
        "--save_steps",
        "2",
        "--logging_steps",
        "1",
        "--lora_r",
        "4",
        "--lora_alpha",
        "8",
        "--lora_dropout",
        "0",  # dropout draws differ between ranks; without it DPO is exactly DDP's sum
        "--learning_rate",
        "1e-3",
        "--gradient_accumulation_steps",
        "1",
        "--use_cpu",
        "true",
    ]


def launch(argv, env=None, timeout=300, fails=False):
    """Run the launch; on a timeout kill all its ranks (its own session), not only the launcher."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    process = subprocess.Popen(
        [*LAUNCH, *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"the launch hung for {timeout} s:\n{stdout[-2000:]}{stderr[-3000:]}")
    assert (process.returncode != 0) == fails, stdout[-2000:] + stderr[-3000:]
    return stdout + stderr


def test_group_sizes_count_the_processes_of_the_launch(tmp_path, tiny_phi_dir):
    """GRPOConfig's own check, on each rank of a real launch: a generation batch of 2 ranks x 1
    completion cannot hold a group of 4, and a rank that reaches the check says so in one line before
    any model loads.

    Not necessarily both ranks: torch's elastic agent (which `accelerate launch` runs) looks at its
    workers every 0.1 s (`--monitor_interval`) and stops the others as soon as one has failed, so a
    rank still importing when the first one exits is stopped before it can print anything (the
    failure seen once in three runs: one error line where two were expected). What must hold whatever
    the timing: at least one rank printed the error, every error line is that one, and nothing loaded."""
    argv = [
        "--config",
        str(RECIPES / "phi2-grpo-qlora.yaml"),
        *tiny(tiny_phi_dir, write_pairs_file(tmp_path / "pairs"), tmp_path / "out"),
        "--per_device_train_batch_size",
        "1",
        "--num_generations",
        "4",
    ]
    log = launch(argv, fails=True)
    errors = [line for line in log.splitlines() if line.startswith("error: ")]
    expected = "error: generation_batch_size (2) must be divisible by num_generations (4)."
    assert errors in ([expected], [expected] * 2), log  # "(2)": the batch counts both processes
    assert "trainable parameters:" not in log and not (tmp_path / "out").exists()


def test_grpo_on_two_processes_builds_saves_writes_and_pushes_once(tmp_path, tiny_phi_dir, sample_path):
    from tests.hub_server import HubStandIn

    classifier = make_tiny_classifier(tmp_path / "reward-model", tiny_phi_dir)
    out = tmp_path / "out"
    token = "hf_standInTokenForTheTrainingPush0123456789"
    with HubStandIn(token=token, user="tester") as hub:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
        env.update(HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_HOME=str(tmp_path / "hf"), HF_TOKEN=token)
        log = launch(
            [
                "--config",
                str(RECIPES / "phi2-grpo-qlora.yaml"),
                *tiny(tiny_phi_dir, tmp_path / "built" / "train.jsonl", out),
                "--dataset_source",  # no pairs file yet: built from the real sample, once
                str(sample_path),
                "--num_generations",
                "2",
                "--per_device_train_batch_size",
                "2",
                "--max_completion_length",
                "8",
                "--reward_funcs",
                "reward_model",  # a random classifier: scores differ, so the groups teach something
                "not_empty",
                "--reward_weights",
                "1",
                "1",
                "--reward_model_name_or_path",
                str(classifier),
                "--push_to_hub",
                "true",
                "--hub_model_id",
                "tester/tiny-grpo-ddp",
            ],
            env=env,
        )
        commits = hub.repos["tester/tiny-grpo-ddp"].commits
    assert log.count("trainable parameters:") == 2  # both ranks built and trained a model
    assert log.count("building pairs from") == 1
    assert log.count("card: ") == 1 and log.count("pushed ") == 1 and len(commits) == 1
    info = json.loads((out / "training_info.json").read_text())
    assert (info["num_processes"], info["device"], info["global_step"], info["finished"]) == (
        2,
        "cpu x2",
        2,
        True,
    )
    assert commits[0]["files"]["README.md"] == (out / "README.md").read_bytes()
    adapter = load_file(out / "adapter_model.safetensors")
    assert all(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # it trained
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == [1, 2, 2]  # written by one rank: two steps and the summary
    assert all("anchor/loss" in m for m in logged[:2])  # the recipe's preference anchor, on both ranks' DDP


def test_dpo_on_two_processes_trains_the_adapter_of_one(tmp_path, tiny_phi_dir, monkeypatch):
    """DDP averages the gradients of the ranks: 2 ranks x 1 pair make the step of 1 rank x 2 pairs."""
    # Equal to 1e-6 in fp32 only: under bf16 autocast a batch of 2 and two of 1 round differently.
    monkeypatch.setenv("ASSISTANT_CPU_DTYPE", "fp32")  # the launched ranks inherit it
    pairs = write_pairs_file(tmp_path / "pairs")
    recipe = ["--config", str(RECIPES / "phi2-dpo-qlora.yaml"), "--max_length", "64"]
    run(
        parse_args(
            [*recipe, *tiny(tiny_phi_dir, pairs, tmp_path / "one"), "--per_device_train_batch_size", "2"]
        )
    )
    launch([*recipe, *tiny(tiny_phi_dir, pairs, tmp_path / "two"), "--per_device_train_batch_size", "1"])
    one = load_file(tmp_path / "one" / "adapter_model.safetensors")
    two = load_file(tmp_path / "two" / "adapter_model.safetensors")
    assert one.keys() == two.keys()
    assert all(one[k].abs().sum() > 0 for k in one if "lora_B" in k)
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-6)
    info = json.loads((tmp_path / "two" / "training_info.json").read_text())
    assert info["method"] == "dpo" and info["num_processes"] == 2
