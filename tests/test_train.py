"""python -m train on the tiny random Phi model: recipes, LoRA targets, GRPO and DPO steps, outputs, resume.

The training runs start from the real Phi-2 recipes with overrides for the tiny model, so the recipe
logic (4-bit and bf16 switched off on a CPU, Phi-2's target modules) is what runs. Nothing here asserts
the devices of the machine it runs on: the runs ask for the CPU (use_cpu), and the choices that depend
on a GPU are tested by simulating one with and without bf16.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from assistant.precision import DTYPE_NAMES, compute_dtype
from assistant.prompt import PHI2_CHAT_TEMPLATE
from tests._helpers_train import make_tiny_classifier, tiny_overrides, write_pairs_file
from train.train import ConfigError, check_target_modules, main, parse_args, run

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
PHI2_TARGETS = ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"]


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


GRPO_SMALL = [
    "--num_generations",
    "2",
    "--per_device_train_batch_size",
    "2",
    "--max_completion_length",
    "8",
    "--reward_funcs",
    "preference",
    "ends_with_eos",
    "no_user_turn",
    "not_empty",
    "concision",
    "reward_model",
    "--reward_weights",
    "4",
    "1",
    "0.5",
    "0.5",
    "0.25",
    "1",
]


def lora_count(model, targets, r):
    """LoRA parameters computed from the layer shapes: r x (in + out) for every targeted Linear."""
    return sum(
        r * (m.in_features + m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets
    )


GRPO_STUDY = ("grpo-baseline", "grpo-tuned", "grpo-reward-model", "grpo-reward-model-long")


@pytest.mark.parametrize(
    "name,config_class,method",
    [
        ("phi2-grpo-qlora", "GRPOConfig", "grpo"),
        ("phi2-dpo-qlora", "DPOConfig", "dpo"),
        ("cpu-demo", "GRPOConfig", "grpo"),
        ("cpu-demo-dpo", "DPOConfig", "dpo"),
        ("judge-hh-rlhf", "RewardConfig", "reward"),
        *[(f"study/{n}", "GRPOConfig", "grpo") for n in GRPO_STUDY],
        *[(f"study/{n}", "DPOConfig", "dpo") for n in ("dpo", "dpo-length-normalised")],
        ("study/reward-model-oasst", "RewardConfig", "reward"),
    ],
)
def test_recipes_parse(name, config_class, method, no_gpu):
    parsed = parse_args(["--config", str(RECIPES / f"{name}.yaml")])
    assert type(parsed.training).__name__ == config_class
    assert parsed.train.method == method
    assert parsed.model.use_peft and parsed.model.lora_r == 16 and parsed.model.lora_alpha == 32
    assert parsed.training.bf16 is False  # no GPU: switched off before TrainingArguments refuses it
    if name.startswith("phi2"):
        model, training = parsed.model, parsed.training
        assert model.model_name_or_path == "microsoft/phi-2"
        assert model.lora_target_modules == PHI2_TARGETS
        assert model.load_in_4bit and model.bnb_4bit_quant_type == "nf4" and model.dtype == "bfloat16"
        assert parsed.mixed_precision == "bf16"
        # the method study's LoRA-scale rates (the original's 5e-6 is a full fine-tune's)
        assert training.per_device_train_batch_size == 2
        assert training.learning_rate == (2e-5 if method == "grpo" else 5e-5)
        assert (training.gradient_accumulation_steps, training.num_train_epochs) == (4, 1)
        assert (training.warmup_steps, training.lr_scheduler_type.value) == (0.1, "cosine")
        assert training.gradient_checkpointing and training.optim.value == "adamw_torch"
    if method == "grpo":
        weights = parsed.training.reward_weights  # none: normalize_then_sum weighs them equally
        assert weights is None or len(weights) == len(parsed.train.reward_funcs)
        assert parsed.training.generation_batch_size % parsed.training.num_generations == 0


def test_the_cpu_demo_recipe_trains_the_committed_demo_adapter(no_gpu):
    """The demo adapter is copied from the study's run (study.run.promote): the demo recipe must be the
    recipe that run used, or `python -m train --config recipes/cpu-demo.yaml` trains something else."""
    recipe, adapter = "cpu-demo", "smollm2-grpo-demo"

    def options(path):
        parsed = parse_args(["--config", str(path)])
        return {k: v for part in (parsed.train, parsed.training, parsed.model) for k, v in vars(part).items()}

    ours, used = options(RECIPES / f"{recipe}.yaml"), options(ROOT / "demo" / adapter / "recipe.yaml")
    differ = {k for k in ours.keys() | used.keys() if str(ours.get(k)) != str(used.get(k))}
    # where it is written, what it says, and how a missing pairs file is built (the run's existed)
    allowed = {"output_dir", "description", "dataset_source", "dataset_depth", "dataset_eval_fraction"}
    assert differ <= allowed, f"recipes/{recipe}.yaml differs from demo/{adapter}: {sorted(differ - allowed)}"
    assert ours["pairs_file"] == used["pairs_file"] == "data/study-splits/train.jsonl"


def test_command_line_overrides_the_recipe():
    parsed = parse_args(["--config", str(RECIPES / "cpu-demo.yaml"), "--max_steps", "7", "--save_only_model"])
    assert (parsed.training.max_steps, parsed.training.save_only_model) == (7, True)
    assert parsed.keys[0] == "method" and parsed.keys[-1] == "save_only_model" and "max_steps" in parsed.keys


def test_bad_recipe_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text((RECIPES / "cpu-demo.yaml").read_text() + "\nlearning_rat: 0.1\n")
    assert main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "learning_rat" in err and len(err.splitlines()) == 1
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_one_recipe_adapts_to_a_cpu(no_gpu, monkeypatch):
    from train.train import adapt_to_device

    monkeypatch.setenv("ASSISTANT_CPU_DTYPE", "bf16")  # a CPU with native bf16 (AVX512-BF16, AMX)
    parsed = parse_args(["--config", str(RECIPES / "phi2-grpo-qlora.yaml")])
    _, precision, notes = adapt_to_device(parsed.train, parsed.training, parsed.model, parsed.mixed_precision)
    assert precision == "bfloat16 weights, bf16 mixed precision" and parsed.training.bf16
    assert parsed.training.mixed_precision == "bf16" and "native bf16" in notes[0]
    monkeypatch.setenv("ASSISTANT_CPU_DTYPE", "fp32")  # any other CPU
    parsed = parse_args(["--config", str(RECIPES / "phi2-grpo-qlora.yaml")])
    device, precision, notes = adapt_to_device(
        parsed.train, parsed.training, parsed.model, parsed.mixed_precision
    )
    assert (device, precision, parsed.model.load_in_4bit) == ("cpu", "float32", False)
    assert len(notes) == 3 and "bf16" in notes[0]
    # 4-bit on a CPU only when asked (bitsandbytes runs there, slower than fp32)
    parsed = parse_args(["--config", str(RECIPES / "phi2-grpo-qlora.yaml"), "--quantize_on_cpu", "true"])
    _, precision, _ = adapt_to_device(parsed.train, parsed.training, parsed.model, parsed.mixed_precision)
    assert parsed.model.load_in_4bit and precision == "4-bit NF4 base, float32 compute"


def test_target_modules_that_match_nothing_are_an_error(tiny_phi_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_phi_dir)
    assert check_target_modules(model, PHI2_TARGETS) == PHI2_TARGETS
    assert check_target_modules(model, "fc1") == ["fc1"]  # TRL makes a one-item list a string
    with pytest.raises(ConfigError) as error:
        # the original write-up's names: Phi-2 has no o_proj, gate_proj, up_proj or down_proj
        check_target_modules(
            model, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        )
    message = str(error.value)
    assert "o_proj, gate_proj, up_proj, down_proj" in message and "q_proj," not in message.split(";")[0]
    assert "dense" in message and "fc1" in message  # says what the model has
    with pytest.raises(ConfigError, match="regex"):
        check_target_modules(model, r".*\.attn\.(o|out)_proj")


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory, tiny_phi_dir):
    """Two GRPO steps on the tiny Phi model from the Phi-2 GRPO recipe, all rewards incl. a reward model."""
    base = tmp_path_factory.mktemp("grpo")
    pairs = write_pairs_file(base / "pairs")
    classifier = make_tiny_classifier(base / "reward-model", tiny_phi_dir)
    argv = [
        "--config",
        str(RECIPES / "phi2-grpo-qlora.yaml"),
        *tiny_overrides(tiny_phi_dir, pairs, base / "out"),
        *GRPO_SMALL,
        "--reward_model_name_or_path",
        str(classifier),
        "--beta",
        "0.04",  # a KL term: keeps the kl metric and its plot tested, whatever the recipe's beta
    ]
    trainer = run(parse_args(argv))
    return base / "out", trainer, argv


def check_adapter_trained(output, trainer, tiny_phi_dir, r=4):
    """The LoRA weights moved from their initialisation; the base weights are exactly the checkpoint's."""
    adapter = load_file(output / "adapter_model.safetensors")
    assert adapter and all("lora_A" in k or "lora_B" in k for k in adapter)
    # PEFT starts every lora_B at zero: trained ones are not.
    assert all(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)
    original = load_file(tiny_phi_dir / "model.safetensors")
    base = trainer.model.get_base_model().state_dict()
    for key, value in original.items():
        name = key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        tensor = base.get(key, base.get(name))
        assert tensor is not None, key
        # in the precision the rule trains in: bf16 on a CPU that has it natively
        assert torch.equal(tensor, value.to(tensor.dtype)), f"base weight {key} changed"
    targets = json.loads((output / "adapter_config.json").read_text())["target_modules"]
    assert sorted(targets) == sorted(PHI2_TARGETS)
    info = json.loads((output / "training_info.json").read_text())
    from transformers import AutoModelForCausalLM

    fresh = AutoModelForCausalLM.from_pretrained(tiny_phi_dir)
    assert info["trainable_params"] == lora_count(fresh, PHI2_TARGETS, r) > 0
    return info


@pytest.mark.precision
def test_grpo_steps_train_lora_only(grpo_run, tiny_phi_dir):
    output, trainer, _ = grpo_run
    info = check_adapter_trained(output, trainer, tiny_phi_dir)
    assert info["method"] == "grpo" and info["global_step"] == 2 and info["device"] == "cpu"
    assert 100 < info["peak_rss_mb"] < 24 * 1024  # the run's own peak memory, for the study's table
    used = [json.loads(line)["tree_id"] for line in Path(info["pairs_file"]).read_text().splitlines()]
    assert info["train_tree_ids"] == sorted(set(used[: info["train_pairs"]]))
    assert info["base_model"] == str(tiny_phi_dir)
    # "no GPU: ..." here, "use_cpu: ..." on a GPU machine; bf16 on a CPU that has it natively
    served = DTYPE_NAMES[compute_dtype("cpu")]
    assert any(
        n.endswith(f": base loaded in {served}, not quantized (set quantize_on_cpu to keep 4-bit)")
        for n in info["notes"]
    )
    assert info["reward_weights"] == {
        "preference": 4.0,
        "ends_with_eos": 1.0,
        "no_user_turn": 0.5,
        "not_empty": 0.5,
        "concision": 0.25,
        "reward_model": 1.0,
    }


@pytest.mark.precision
def test_output_folder_contract(grpo_run, tiny_phi_dir):
    output, trainer, argv = grpo_run
    config = json.loads((output / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_phi_dir)
    # Phi-2 ships no chat template: ours is saved with the tokenizer next to the adapter.
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(output).chat_template == PHI2_CHAT_TEMPLATE
    metrics = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "reward" in m]
    assert [m["step"] for m in steps] == [1, 2]
    for name in ("preference", "ends_with_eos", "no_user_turn", "not_empty", "concision", "reward_model"):
        assert f"rewards/{name}/mean" in steps[0]
    assert {"reward_std", "frac_reward_zero_std", "kl", "completions/mean_length"} <= set(steps[0])
    trends = json.loads((output / "training_info.json").read_text())["trends"]
    assert trends["reward"]["first_tenth_mean"] == pytest.approx(steps[0]["reward"])
    assert trends["rewards/preference/mean"]["last_tenth_mean"] == pytest.approx(
        steps[1]["rewards/preference/mean"]
    )
    plots = {p.name for p in (output / "plots").glob("*.png")}
    assert plots == {
        "reward.png",
        "rewards_per_function.png",
        "loss_kl.png",
        "completion_length.png",
        "anchor.png",
    }
    assert json.loads((output / "data_stats.json").read_text())["source"] == "hand-made"
    assert (output / "checkpoint-2").is_dir()
    # Our card replaced the one TRL writes on save.
    card = (output / "README.md").read_text()
    assert "This model is a fine-tuned version of" not in card and "GRPO" in card
    # The resolved recipe parses again and says what ran, including the CPU changes.
    recipe = yaml.safe_load((output / "recipe.yaml").read_text())
    bf16 = compute_dtype("cpu") == torch.bfloat16  # the rule's choice on this CPU, recorded as it ran
    assert recipe["load_in_4bit"] is False and recipe["bf16"] is bf16 and recipe["max_steps"] == 2
    again = parse_args(["--config", str(output / "recipe.yaml")])
    assert again.training.max_steps == 2 and again.train.reward_funcs == recipe["reward_funcs"]


def test_rerun_resumes_from_the_last_checkpoint(grpo_run, tmp_path):
    output, _, argv = grpo_run
    copy = tmp_path / "out"
    shutil.copytree(output, copy)
    argv = [a if a != str(output) else str(copy) for a in argv]
    trainer = run(parse_args(argv + ["--max_steps", "3"]))
    info = json.loads((copy / "training_info.json").read_text())
    assert info["resumed_from"] == str(copy / "checkpoint-2")
    assert trainer.state.global_step == info["global_step"] == 3
    records = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
    # One record per step, nothing lost or doubled (train() summaries are separate records).
    assert [r["step"] for r in records if "reward" in r] == [1, 2, 3]
    # The file follows the log_history restored from checkpoint-2, saved before the first run's summary.
    assert [r["step"] for r in records if "train_runtime" in r] == [3]


@pytest.mark.precision
def test_dpo_steps_on_pairs_built_from_the_real_sample(tmp_path, tiny_phi_dir, sample_path):
    # No pairs file yet: the entry builds it from dataset_source with train.data first.
    pairs = tmp_path / "built" / "train.jsonl"
    argv = [
        "--config",
        str(RECIPES / "phi2-dpo-qlora.yaml"),
        *tiny_overrides(tiny_phi_dir, pairs, tmp_path / "out"),
        "--dataset_source",
        str(sample_path),
        "--per_device_train_batch_size",
        "2",
        "--max_length",
        "64",
    ]
    trainer = run(parse_args(argv))
    assert (
        pairs.exists()
        and json.loads((tmp_path / "out" / "data_stats.json").read_text())["train"]["pairs"] > 10
    )
    info = check_adapter_trained(tmp_path / "out", trainer, tiny_phi_dir)
    assert info["method"] == "dpo" and info["global_step"] == 2 and info["reward_weights"] is None
    metrics = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert "rewards/margins" in metrics[0]
    assert {p.name for p in (tmp_path / "out" / "plots").glob("*.png")} >= {"reward.png", "loss_kl.png"}


def test_push_to_hub_sends_our_card_not_trls(tmp_path, tiny_phi_dir):
    """--push_to_hub goes through train.hub after training (one commit with our card); TRL's own
    push stays off. Against the Hub stand-in on loopback, with the real huggingface_hub client."""
    import os
    import subprocess
    import sys

    from tests.hub_server import HubStandIn

    pairs = write_pairs_file(tmp_path / "pairs")
    token = "hf_standInTokenForTheTrainingPush0123456789"
    with HubStandIn(token=token, user="tester") as hub:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
        env.update(
            HF_ENDPOINT=hub.url,
            HF_HUB_OFFLINE="0",
            HF_HOME=str(tmp_path / "hf-home"),
            HF_TOKEN=token,
            HF_HUB_DISABLE_TELEMETRY="1",
            OMP_NUM_THREADS="1",
            PYTHONPATH=str(ROOT),
        )
        argv = [
            "--config",
            str(RECIPES / "phi2-grpo-qlora.yaml"),
            *tiny_overrides(tiny_phi_dir, pairs, tmp_path / "out", max_steps=1),
            *GRPO_SMALL[:6],
            "--reward_funcs",
            "preference",
            "not_empty",
            "--reward_weights",
            "1",
            "1",
            "--push_to_hub",
            "true",
            "--hub_model_id",
            "tester/tiny-grpo",
            "--hub_private_repo",
            "true",
        ]
        done = subprocess.run(
            [sys.executable, "-m", "train", *argv],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        repo = hub.repos["tester/tiny-grpo"]
        assert repo.private and len(repo.commits) == 1  # TRL pushed nothing of its own
        files = repo.commits[0]["files"]
        assert {"adapter_model.safetensors", "README.md", "recipe.yaml", "training_info.json"} <= set(files)
        assert not [p for p in files if p.startswith("checkpoint-") or p == "training_args.bin"]
        assert files["README.md"] == (tmp_path / "out" / "README.md").read_bytes()
        assert b"This model is a fine-tuned version of" not in files["README.md"]
        recipe = yaml.safe_load((tmp_path / "out" / "recipe.yaml").read_text())
        assert recipe["push_to_hub"] is True and recipe["hub_model_id"] == "tester/tiny-grpo"
