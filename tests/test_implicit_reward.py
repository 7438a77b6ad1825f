"""The rewards GRPO can optimise beyond the heuristics: a DPO adapter's implicit reward and the
missing-EOS penalty; and study.reward_skill, which measures any reward against "the longer reply wins"."""

import json

import numpy as np
import pytest
import torch

from study import reward_skill
from tests._helpers_precision import score_tolerance
from tests._helpers_train import PAIRS, write_pairs_file
from train.rewards import get_reward_funcs, missing_eos_penalty


@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory, tiny_phi_dir):
    """A LoRA with random (non-zero) weights on the tiny Phi model, saved like a DPO run's folder."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from assistant.prompt import ensure_chat_template

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_phi_dir)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "fc1"], init_lora_weights=False
    )
    model = get_peft_model(base, config)
    path = tmp_path_factory.mktemp("dpo-adapter")
    model.save_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_phi_dir)
    ensure_chat_template(tokenizer)
    tokenizer.save_pretrained(path)
    return path


def direct_mean_logprob(model, prompt_ids, reply_ids) -> float:
    """Mean log p(reply | prompt), one unpadded sequence at a time: what the batched scorer must match."""
    ids = torch.tensor([prompt_ids + reply_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
    return (logits.log_softmax(-1).gather(-1, torch.tensor(reply_ids)[:, None])).mean().item()


def test_missing_eos_penalty_charges_only_answers_that_never_ended():
    eos = (0, 2)
    assert missing_eos_penalty(completion_ids=[[5, 6, 2], [5, 6, 7], [0], []], eos_token_ids=eos) == [
        0.0,
        -1.0,
        0.0,  # an empty answer that stopped is not this penalty's business (not_empty is)
        -1.0,
    ]


@pytest.mark.precision
def test_dpo_implicit_is_the_mean_per_token_log_ratio_of_adapter_and_base(tiny_adapter):
    from train.implicit import implicit_reward

    reward = get_reward_funcs(["dpo_implicit"], implicit_reward_adapter=str(tiny_adapter))[0]
    model = implicit_reward(str(tiny_adapter))
    prompts = [[{"role": "user", "content": p}] for p, _, _ in PAIRS[:3]]
    completion_ids = [[11, 12, 13, 14, 15, 16], [21, 22], [31, 32, 33, 0]]  # different lengths: padded batch
    scores = reward(prompts=prompts, completions=["x"] * 3, completion_ids=completion_ids)
    for prompt, ids, score in zip(prompts, completion_ids, scores, strict=True):
        prompt_ids = model.prompt_ids(prompt)
        tuned = direct_mean_logprob(model.model, prompt_ids, ids)
        with model.model.disable_adapter():
            base = direct_mean_logprob(model.model, prompt_ids, ids)
        assert score == pytest.approx(tuned - base, abs=score_tolerance())  # batched, padded
    assert max(abs(s) for s in scores) > 1e-3  # a random adapter does change the likelihoods


def test_reward_registry_knows_the_new_rewards_by_the_names_trl_logs(tiny_adapter):
    from trl.trainer.utils import get_callable_name

    names = ["dpo_implicit", "missing_eos_penalty"]
    funcs = get_reward_funcs(names, eos_token_ids=[2], implicit_reward_adapter=str(tiny_adapter))
    assert [get_callable_name(f) for f in funcs] == names
    with pytest.raises(ValueError, match="implicit_reward_adapter"):
        get_reward_funcs(["dpo_implicit"])


def test_skill_counts_the_reward_and_the_length_heuristic_on_all_and_matched_pairs():
    chosen, rejected = (
        np.array([1.0, 0.0, 2.0, 5.0]),
        np.array([0.0, 1.0, 1.0, 5.0]),
    )  # right, wrong, right, tie
    # lengths: chosen longer (far) twice, matched and longer (100 vs 80), matched and shorter
    lengths = np.array([[100, 10], [100, 10], [100, 80], [90, 100]])
    result = reward_skill.skill(chosen, rejected, lengths, np.array(["a", "b", "c", "d"], dtype=object))
    assert (result["all"]["reward"]["k"], result["all"]["reward"]["n"]) == (2, 4)  # a tie is not a win
    assert (result["all"]["longer_wins"]["k"], result["all"]["longer_wins"]["n"]) == (3, 4)
    # on the same pairs: only length gets the second one right
    assert {k: result["all"]["reward_vs_longer"][k] for k in ("better", "worse", "same")} == {
        "better": 0,
        "worse": 1,
        "same": 3,
    }
    matched = result["length_matched"]
    assert (matched["reward"]["k"], matched["reward"]["n"]) == (1, 2)
    assert (matched["longer_wins"]["k"], matched["longer_wins"]["n"]) == (1, 2)
    assert matched["reward"]["ci95"][0] < 0.5 < matched["reward"]["ci95"][1]  # Wilson, not a point
    # pairs of one tree count together: the first two pairs are one tree, one vote (length's: 0 and -1)
    one_tree = reward_skill.skill(chosen, rejected, lengths, np.array(["a", "a", "c", "d"], dtype=object))
    assert one_tree["all"]["reward_vs_longer"]["trees"] == {"better": 0, "worse": 1, "same": 2, "n": 3}
    assert one_tree["all"]["reward"]["trees"] == 3


def test_reward_skill_measures_skips_the_missing_and_refuses_a_reward_trained_on_the_pairs(
    tmp_path, tiny_adapter, capsys
):
    pairs = write_pairs_file(tmp_path / "pairs")
    output = tmp_path / "skill"
    argv = ["--pairs", str(pairs), "--output", str(output), "--reward", f"dpo_implicit:{tiny_adapter}"]
    assert reward_skill.main(argv + ["--reward", f"reward_model:{tmp_path / 'absent'}"]) == 0
    results = json.loads(output.with_suffix(".json").read_text())
    (measured,) = results["rewards"].values()
    assert measured["all"]["reward"]["n"] == len(PAIRS) and measured["score_std"] > 0
    assert "absent does not exist" in results["skipped"][0]
    assert "longer wins" in output.with_suffix(".md").read_text()
    from study.reading import rewards_optimised  # the study's results show it beside the judge

    (line,) = rewards_optimised(output.with_suffix(".json"))
    assert (
        f"`dpo_implicit:{tiny_adapter.name}` (a reward GRPO maximised" in line
        and "the longer reply wins" in line
    )
    # an adapter whose training_info names these trees is no held-out measure
    (tiny_adapter / "training_info.json").write_text(json.dumps({"train_tree_ids": ["t0", "zz"]}))
    try:
        assert reward_skill.main(argv) == 2
    finally:
        (tiny_adapter / "training_info.json").unlink()
    assert "trained on 1 trees" in capsys.readouterr().out


def test_reward_skill_reads_the_implicit_reward_from_the_adapters_own_report(tmp_path, tiny_adapter):
    """The evaluation report of these weights on these pairs already holds both mean log-probs."""
    import shutil

    from train.identity import file_sha256

    adapter = shutil.copytree(tiny_adapter, tmp_path / "adapter")
    pairs = write_pairs_file(tmp_path / "pairs")
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    scored = [  # reversed: the report's order is its own; the chosen reply always gains more
        {"chosen_id": r["chosen_id"], "rejected_id": r["rejected_id"],
         "base": {"chosen": -2.0, "rejected": -2.0}, "tuned": {"chosen": -1.0, "rejected": -3.0 - i}}
        for i, r in enumerate(reversed(rows))
    ]  # fmt: skip
    report = {
        "adapter": {"sha256": file_sha256(adapter / "adapter_model.safetensors")},
        "preference": {"max_length": 512, "pairs": scored},
    }
    (adapter / "eval").mkdir()
    (adapter / "eval" / "report.json").write_text(json.dumps(report))
    output = tmp_path / "skill"
    argv = ["--pairs", str(pairs), "--output", str(output), "--reward", f"dpo_implicit:{adapter}"]
    assert reward_skill.main(argv) == 0
    (measured,) = json.loads(output.with_suffix(".json").read_text())["rewards"].values()
    assert measured["scores_from"].endswith("report.json") and measured["max_length"] == 512
    assert measured["all"]["reward"]["k"] == len(PAIRS)
    # other weights than the report's: scored afresh
    report["adapter"]["sha256"] = "0" * 64
    (adapter / "eval" / "report.json").write_text(json.dumps(report))
    assert reward_skill.main(argv) == 0
    (measured,) = json.loads(output.with_suffix(".json").read_text())["rewards"].values()
    assert measured["scores_from"] == "scored here"


def test_an_evaluation_computes_the_implicit_reward_it_was_trained_on_or_says_why_not(tiny_adapter, tmp_path):
    """A GRPO adapter rewarded by a DPO adapter's implicit reward: train.evaluate's training-objective
    section binds that adapter from the recipe, and says before generating when it is missing."""
    from train.evaluate import objective_left_out
    from train.evaluate.answers import training_objective

    recipe = {"method": "grpo", "reward_funcs": ["dpo_implicit", "missing_eos_penalty"]}
    assert objective_left_out({**recipe, "implicit_reward_adapter": str(tiny_adapter)}) is None
    missing = objective_left_out({**recipe, "implicit_reward_adapter": str(tmp_path / "gone")})
    assert missing.startswith("the training-objective section is left out: its implicit reward's DPO adapter")
    from assistant.generation import Answer
    from assistant.models import load_model

    loaded = load_model(
        base=json.loads((tiny_adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    )
    prompts = [{"prompt": q, "chosen": c, "rejected": r} for q, c, r in PAIRS[:2]]
    answer = Answer(text="An answer.", ended=True, cut=False, tokens=3, adapter="x")
    answers = {side: [[answer] for _ in prompts] for side in ("base", "tuned")}
    result = training_objective(
        loaded, prompts, answers, {**recipe, "implicit_reward_adapter": str(tiny_adapter)}, 0
    )
    assert result["reward_funcs"] == recipe["reward_funcs"] and "dpo_implicit" in result["tuned"]
