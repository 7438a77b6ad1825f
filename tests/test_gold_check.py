"""The gold check of a GRPO run on the tiny Phi model with a tiny judge: the training reward and the judge
on fixed dev answers every N steps, in the run's metrics and plotted together."""

import json
from pathlib import Path

import pytest
import torch

from tests._helpers_train import make_tiny_classifier, tiny_overrides, write_pairs_file
from train.train import ConfigError, parse_args, run

ROOT = Path(__file__).resolve().parent.parent
DEV = [
    ("What colour is the sky on a clear day?", "It is blue.", "Green, always."),
    ("What colour is the sky on a clear day?", "It is blue.", "Who knows."),  # same prompt: answered once
    ("How many days are in a week?", "Seven days.", "About a dozen."),
    ("Summarise this: " + "lorem ipsum " * 100, "It is filler text.", "No."),  # longer than max_prompt_tokens
    ("What do bees make?", "Bees make honey.", "Bees make cars."),
]


@pytest.fixture(autouse=True)
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def write_dev(path: Path) -> Path:
    rows = [
        {"prompt": p, "chosen": c, "rejected": r, "tree_id": f"dev{i}", "prompt_id": f"dp{p[:8]}"}
        for i, (p, c, r) in enumerate(DEV)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def argv_for(tmp_path, tiny_phi_dir, dev: Path) -> list[str]:
    pairs = write_pairs_file(tmp_path / "pairs")
    judge = make_tiny_classifier(tmp_path / "judge", tiny_phi_dir)
    return [
        "--config", str(ROOT / "recipes/study/grpo-from-dpo.yaml"),
        *tiny_overrides(tiny_phi_dir, pairs, tmp_path / "out", max_steps=2),
        "--init_adapter", "", "--implicit_reward_adapter", "", "--lora_target_modules", "q_proj", "v_proj",
        "--num_generations", "2", "--per_device_train_batch_size", "2", "--max_completion_length", "6",
        "--reward_funcs", "reward_model", "missing_eos_penalty", "--reward_weights", "1", "0.5",
        "--reward_model_name_or_path", str(judge),
        "--gold_check_every", "1", "--gold_check_pairs", str(dev), "--gold_check_judge", str(judge),
        "--max_prompt_tokens", "64",
    ]  # fmt: skip


def test_gold_check_logs_reward_and_judge_on_dev_answers_and_plots_them(tmp_path, tiny_phi_dir):
    dev = write_dev(tmp_path / "dev.jsonl")
    run(parse_args(argv_for(tmp_path, tiny_phi_dir, dev)))
    out = tmp_path / "out"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    gold = [r for r in records if "gold/judge" in r]
    assert [r["step"] for r in gold] == [0, 1, 2]  # before the first step, then every step
    for r in gold:
        assert r["gold/prompts"] == 3  # distinct dev prompts that fit in max_prompt_tokens, as training's
        assert 0 <= r["gold/ended"] <= 1 and 0 < r["gold/length"] <= 6
        # the weighted sum of the per-reward means, as the recipe weighs them
        assert r["gold/reward"] == pytest.approx(
            r["gold/rewards/reward_model"] + 0.5 * r["gold/rewards/missing_eos_penalty"], abs=1e-5
        )
    assert "gold/judge_win" not in gold[0] and all(0 <= r["gold/judge_win"] <= 1 for r in gold[1:])
    start = json.loads((out / "gold_check_start.json").read_text())
    assert start["step"] == 0 and len(start["judge"]) == 3
    assert gold[0]["gold/judge"] == pytest.approx(sum(start["judge"]) / 3, abs=1e-5)
    # the training steps' own metrics are still logged whole, once per step
    assert [r["step"] for r in records if "reward" in r] == [1, 2]
    assert (out / "plots" / "gold_check.png").stat().st_size > 1000


def test_gold_check_refuses_dev_prompts_from_training_trees(tmp_path, tiny_phi_dir):
    argv = argv_for(tmp_path, tiny_phi_dir, tmp_path / "pairs" / "train.jsonl")
    with pytest.raises(ConfigError, match="shares 6 trees with the training pairs"):
        run(parse_args(argv))
