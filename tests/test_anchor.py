"""The preference anchor (train.anchor): DPO's length-normalised loss against the base, beside GRPO's."""

import json
import math
from pathlib import Path

import pytest
import torch

from tests._helpers_train import PAIRS, tiny_overrides, write_pairs_file
from train.anchor import anchor_loss, anchor_rows
from train.evaluate.preference import BASE, mean_logprobs, reply_tokens
from train.train import ConfigError, parse_args, run

ROOT = Path(__file__).resolve().parent.parent
PAIR_ROWS = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PAIRS]


@pytest.fixture(autouse=True)
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_the_anchor_starts_at_log_two_and_lifts_the_margin_above_the_bases(smollm2_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    rows = anchor_rows(PAIR_ROWS, tokenizer, seed=0, max_length=256)
    assert len(rows) == len(PAIRS) and rows != anchor_rows(PAIR_ROWS, tokenizer, seed=1, max_length=256)
    pad = tokenizer.pad_token_id
    # A fresh LoRA (lora_B = 0) is the base: the loss is DPO's log 2, the margins equal.
    loss, seen = anchor_loss(model, rows, pad, "cpu")
    assert loss.item() == pytest.approx(math.log(2), abs=1e-5)
    assert seen["anchor/margin"] == pytest.approx(seen["anchor/base_margin"], abs=1e-5)
    # The base's margin is the one the evaluation measures (the same rows, the adapter off).
    model.eval()  # PEFT mixes adapters in one batch only outside training
    scored = mean_logprobs(model, [(*side, BASE) for row in rows for side in row], pad, 4, "cpu")
    margins = [chosen - rejected for chosen, rejected in zip(scored[::2], scored[1::2], strict=True)]
    assert seen["anchor/base_margin"] == pytest.approx(sum(margins) / len(margins), abs=1e-4)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(4):
        optimizer.zero_grad()
        loss, seen = anchor_loss(model, rows, pad, "cpu")
        loss.backward()
        optimizer.step()
    loss, seen = anchor_loss(model, rows, pad, "cpu")
    assert loss.item() < math.log(2) - 0.05  # it learns: the chosen replies gained on the rejected ones
    assert seen["anchor/margin"] > seen["anchor/base_margin"] + 0.02
    assert seen["anchor/base_margin"] == pytest.approx(sum(margins) / len(margins), abs=1e-4)  # base held


def test_a_whole_anchor_leaves_out_the_pairs_a_cut_would_rob_of_their_end(smollm2_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    # every other pair's chosen reply ten times over: too long for 80 tokens, and cut at its tail
    pairs = [
        dict(row, chosen=" ".join([row["chosen"]] * 10)) if i % 2 else row for i, row in enumerate(PAIR_ROWS)
    ]
    lengths = [
        max(sum(map(len, reply_tokens(tokenizer, p["prompt"], p[s]))) for s in ("chosen", "rejected"))
        for p in pairs
    ]
    limit = 80
    fitting = sum(length <= limit for length in lengths)
    assert fitting == len(PAIRS) // 2
    cut = anchor_rows(pairs, tokenizer, seed=0, max_length=limit)
    assert len(cut) == len(PAIRS) and all(len(p) + len(r) <= limit for row in cut for p, r in row)
    assert (
        sum(r[-1] != end for row in cut for _, r in row) == len(PAIRS) - fitting
    )  # cut replies lost their end
    whole = anchor_rows(pairs, tokenizer, seed=0, max_length=limit, whole=True)
    assert len(whole) == fitting and all(r[-1] == end for row in whole for _, r in row)
    with pytest.raises(
        ConfigError, match=r"^no training pair fits whole in preference_anchor_max_length 8 tok"
    ):
        anchor_rows(PAIR_ROWS, tokenizer, seed=0, max_length=8, whole=True)


def test_grpo_with_an_anchor_adds_it_at_every_step_and_logs_it(tmp_path, tiny_phi_dir):
    pairs = write_pairs_file(tmp_path / "pairs")
    argv = [
        "--config", str(ROOT / "recipes/study/grpo-anchored.yaml"),
        *tiny_overrides(tiny_phi_dir, pairs, tmp_path / "out", max_steps=3),
        "--init_adapter", "", "--lora_target_modules", "q_proj", "v_proj",
        "--num_generations", "2", "--per_device_train_batch_size", "2", "--max_completion_length", "8",
        "--reward_funcs", "missing_eos_penalty", "no_loop", "--reward_weights", "1", "1",
        "--implicit_reward_adapter", "", "--preference_anchor_pairs", "2", "--save_steps", "3",
        "--preference_anchor_whole", "true", "--preference_anchor_max_length", "64",
    ]  # fmt: skip
    trainer = run(parse_args(argv))
    assert trainer._anchor_calls == 3  # one call a step: 6 pairs taken, each once
    info = json.loads((tmp_path / "out" / "training_info.json").read_text())
    assert info["anchor_pairs"] == len(PAIRS)  # the test pairs are short: all fit whole in 64 tokens
    logged = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in logged if "anchor/loss" in m]
    assert [m["step"] for m in steps] == [1, 2, 3]
    assert all(0 < m["anchor/loss"] < 5 and 0 <= m["anchor/accuracy"] <= 1 for m in steps)
    # the anchor's base margins are those of three different batches of the shuffled pairs
    assert len({round(m["anchor/base_margin"], 6) for m in steps}) == 3
    assert (tmp_path / "out" / "plots" / "anchor.png").stat().st_size > 0


def test_an_anchor_on_another_method_than_grpo_or_below_zero_is_one_line(tmp_path, tiny_phi_dir):
    pairs = write_pairs_file(tmp_path / "pairs")
    tiny = tiny_overrides(tiny_phi_dir, pairs, tmp_path)
    with pytest.raises(ConfigError, match="^preference_anchor adds DPO's loss to GRPO's, not to method dpo"):
        parse_args(["--config", str(ROOT / "recipes/study/dpo.yaml"), *tiny, "--preference_anchor", "0.1"])
    with pytest.raises(ConfigError, match="^preference_anchor must be at least 0 .* got -0.1 and 4$"):
        parse_args(
            ["--config", str(ROOT / "recipes/study/grpo-anchored.yaml"), *tiny, "--preference_anchor", "-0.1"]
        )
    with pytest.raises(ConfigError, match="^preference_anchor_max_length must be at least 2 tokens, got 1$"):
        parse_args(
            [
                "--config",
                str(ROOT / "recipes/study/grpo-anchored.yaml"),
                *tiny,
                "--preference_anchor_max_length",
                "1",
            ]
        )
