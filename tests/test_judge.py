"""The offline judge's route: HH-RLHF dialogues -> pairs -> `python -m train` with method reward ->
a reward LoRA that train.scorer loads and scores with, on real data and a tiny model."""

from __future__ import annotations

import json
import math

from tests._helpers_data import HH, OASST1_EN, full_data
from train import hh_rlhf


def test_a_dialogue_becomes_prompt_chosen_rejected():
    line = {
        "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: A fruit?\n\nAssistant: An apple.",
        "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: A fruit?\n\nAssistant: No.",
    }
    pair, why = hh_rlhf.pair_from_line(line)
    assert why is None
    assert pair["prompt"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "A fruit?"},
    ]
    assert (pair["chosen"], pair["rejected"], pair["depth"]) == ("An apple.", "No.", 2)
    other = {**line, "rejected": "\n\nHuman: Bye\n\nAssistant: No."}
    assert hh_rlhf.pair_from_line(other) == (None, "different_prompts")
    assert hh_rlhf.pair_from_line({**line, "rejected": line["chosen"]}) == (None, "identical_answers")
    assert hh_rlhf.pair_from_line({"chosen": "no turns"}) == (None, "malformed")


def test_the_real_helpfulness_files():
    assert hh_rlhf.is_hh_rlhf(HH) and not hh_rlhf.is_hh_rlhf(OASST1_EN)
    train, held_out, stats = hh_rlhf.build_pairs(HH)
    assert len(train) + len(held_out) + sum(stats["skipped"].values()) == 3 * 60  # the committed lines
    assert held_out and not {p["tree_id"] for p in train} & {p["tree_id"] for p in held_out}
    again, _, _ = hh_rlhf.build_pairs(HH, limit=100)
    assert again == train[:100]  # a fixed hash order: limits never reshuffle


def test_the_full_helpfulness_files_count_as_their_readme():
    full = full_data("hh-rlhf-helpful")
    train, held_out, stats = hh_rlhf.build_pairs(full)
    assert len(train) + len(held_out) + sum(stats["skipped"].values()) == 6240
    assert 0.08 < len(held_out) / (len(train) + len(held_out)) < 0.12


def test_reward_recipe_trains_a_judge_that_scores(tmp_path, tiny_phi_dir):
    from train.scorer import Scorer
    from train.train import main

    recipe = tmp_path / "judge.yaml"
    recipe.write_text(
        f"method: reward\nmodel_name_or_path: {tiny_phi_dir}\nuse_peft: true\nlora_r: 4\nlora_alpha: 8\n"
        f"lora_target_modules: [q_proj, v_proj]\npairs_file: {tmp_path / 'hh' / 'train.jsonl'}\n"
        f"dataset_source: {HH}\ndataset_limit: 16\nmax_length: 256\nmax_prompt_tokens: 128\n"
        f"per_device_train_batch_size: 4\nmax_steps: 2\nlearning_rate: 1.0e-3\nlogging_steps: 1\n"
        f"save_strategy: 'no'\nreport_to: none\nbf16: false\noutput_dir: {tmp_path / 'judge'}\n"
    )
    assert main(["--config", str(recipe)]) == 0
    out = tmp_path / "judge"
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS"
    assert "score" in (config.get("modules_to_save") or [])  # the new head is saved with the LoRA
    assert json.loads((out / "training_info.json").read_text())["method"] == "reward"
    scores = Scorer(str(out)).score(
        [[{"role": "user", "content": "Hi?"}]] * 2, ["Hello, how can I help?", "No."]
    )
    assert len(scores) == 2 and all(math.isfinite(s) for s in scores) and scores[0] != scores[1]


def test_a_mean_of_judges_scores_each_member_in_its_own_units_and_is_named_by_them(
    tmp_path, tiny_phi_dir, capsys
):
    """The judge study.judge_skill writes when the combination wins (demo/judge-combined): two real
    (tiny) reward models, each score divided by its scale, averaged; its identity follows its members."""
    import pytest
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tests._helpers_train import make_tiny_classifier
    from train.evaluate import judge_identity
    from train.scorer import MeanOfJudges, Scorer, load_judge

    first, second = make_tiny_classifier(tmp_path / "first", tiny_phi_dir), tmp_path / "second"
    model = AutoModelForSequenceClassification.from_pretrained(first)
    with torch.no_grad():
        model.score.weight.mul_(-3.0)  # another judge: reversed and three times as wide
    model.save_pretrained(second)
    AutoTokenizer.from_pretrained(first).save_pretrained(second)
    combined = tmp_path / "combined"
    combined.mkdir()
    spec = {"members": [{"path": "../first", "scale": 2.0}, {"path": "../second", "scale": 0.5}]}
    (combined / "judges.json").write_text(json.dumps(spec))

    judge = load_judge(str(combined), device="cpu")
    assert isinstance(judge, MeanOfJudges) and isinstance(load_judge(str(first), device="cpu"), Scorer)
    conversations, answers = [[{"role": "user", "content": "Hi?"}]] * 2, ["Hello.", "Go away, I am busy."]
    a = Scorer(str(first), "cpu").score(conversations, answers)
    b = Scorer(str(second), "cpu").score(conversations, answers)
    assert a[0] != a[1] and judge.score(conversations, answers) == pytest.approx(
        [(x / 2.0 + y / 0.5) / 2 for x, y in zip(a, b, strict=True)]
    )
    capsys.readouterr()
    judge.score(conversations * 40, answers * 40)  # an evaluation's many rows: one bar a member
    shown = capsys.readouterr().err
    assert "judging (first)" in shown and "judging (second)" in shown and "80/80" in shown
    judge.score(conversations, answers)  # a reward's few rows at a GRPO step: none
    assert "judging" not in capsys.readouterr().err
    before = judge_identity(str(combined))["weights_sha256"]
    spec["members"][1]["scale"] = 1.0
    (combined / "judges.json").write_text(json.dumps(spec))
    assert before and judge_identity(str(combined))["weights_sha256"] != before
