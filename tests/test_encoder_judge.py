"""The MiniLM judge: its head is fitted on the features the scorer computes, and it loads through
train.scorer.Scorer; its skill figures beside the length heuristics. The real packaged MiniLM."""

import json

import numpy as np
import pytest

from study import judge_skill, judge_train
from train.encoder_judge import FEATURES, MINILM_ID, save_head
from train.scorer import Scorer

PAIRS = [
    {"prompt": "How do I boil an egg?", "chosen": "Put it in boiling water for eight minutes.",
     "rejected": "Eggs are laid by hens."},
    {"prompt": [{"role": "user", "content": "Name a prime number."}, {"role": "assistant", "content": "7"},
                {"role": "user", "content": "Another one?"}], "chosen": "11", "rejected": "Twelve is one."},
]  # fmt: skip


@pytest.fixture(scope="module")
def encoded():
    model, tokenizer = judge_train.load_encoder()
    qs = [judge_train.question(p["prompt"]) for p in PAIRS]
    return {
        side: judge_train.encode(model, tokenizer, qs, [p[side] for p in PAIRS])
        for side in ("chosen", "rejected")
    }


def test_the_scorer_gives_the_fitted_head_its_training_features(tmp_path, encoded):
    size = encoded["chosen"]["pooled"].shape[1]
    weights = np.random.default_rng(0).normal(size=len(FEATURES) * size)
    info = {"encoder": MINILM_ID, "features": list(FEATURES), "max_length": judge_train.MAX_LENGTH}
    save_head(tmp_path / "judge", weights, info, {"training_info.json": json.dumps({"description": "t"})})
    scorer = Scorer(str(tmp_path / "judge"))
    assert scorer.max_length == judge_train.MAX_LENGTH  # the encoder's positions, not the scorer's 1024
    conversations = [[{"role": "user", "content": p["prompt"]}] if isinstance(p["prompt"], str) else p["prompt"]
                     for p in PAIRS]  # fmt: skip
    for side in ("chosen", "rejected"):
        scores = scorer.score(conversations, [p[side] for p in PAIRS])
        x = np.concatenate([encoded[side][n] for n in FEATURES], axis=1)
        np.testing.assert_allclose(scores, x @ weights, rtol=1e-4, atol=1e-4)
    # a long question and answer are cut to the encoder's length, never an indexing error
    assert len(scorer.score([[{"role": "user", "content": "why " * 600}]], ["because " * 600])) == 1


def test_the_fit_learns_content_and_drops_the_length_term():
    rng = np.random.default_rng(0)
    content = rng.normal(size=(600, 3))
    ratio = rng.normal(size=600)
    # the preference follows content column 0 and length; rows are chosen - rejected, flipped where needed
    signal = 2 * content[:, 0] + 3 * ratio
    sign = np.where(signal + rng.logistic(size=600) > 0, 1.0, -1.0)
    feats = {"chosen_x": content * sign[:, None], "rejected_x": np.zeros_like(content),
             "chosen_tokens": np.exp(np.where(sign > 0, ratio, -ratio)) * 100, "rejected_tokens": np.full(600, 100.0)}  # fmt: skip
    weights, chosen = judge_train.train_head(feats, ("x",), length_control=True)
    assert weights.shape == (3,)  # the length term is fitted, then dropped
    assert weights[0] > 5 * max(abs(weights[1]), abs(weights[2]))
    assert set(chosen["cv_accuracy"]) == set(judge_train.L2) and chosen["pairs"] == 600


def test_length_heuristics_and_wilson_by_hand():
    pairs = [
        {"chosen": "a" * 10, "rejected": "b" * 5},   # longer wins, not matched
        {"chosen": "a" * 10, "rejected": "b" * 9},   # longer wins, matched
        {"chosen": "a" * 9, "rejected": "b" * 10},   # shorter wins, matched
        {"chosen": "a" * 10, "rejected": "b" * 10},  # a tie: wrong for both, matched
    ]  # fmt: skip
    h = judge_skill.heuristics(pairs)
    assert h["length_matched_pairs"] == 3
    assert (h["longer_wins"]["k"], h["longer_wins"]["n"]) == (2.5, 4)  # a tie in length counts half
    assert (h["shorter_wins_length_matched"]["k"], h["shorter_wins_length_matched"]["n"]) == (1.5, 3)
    zero = judge_skill.figures(np.array([-1.0] * 4), pairs)["accuracy"]
    assert zero["rate"] == 0 and zero["ci95"][1] > 0.2  # never a zero-width interval
    f = judge_skill.figures(np.array([1.0, -1.0, 1.0, 0.5]), pairs)
    assert (f["accuracy"]["k"], f["accuracy_length_matched"]["k"], f["accuracy_length_matched"]["n"]) == (
        3,
        2,
        3,
    )
    assert (f["agrees_with_longer"]["k"], f["agrees_with_longer"]["n"]) == (1, 3)  # only the first


def test_judges_are_compared_per_tree_combined_on_hh_scales_and_chosen_where_length_cannot_decide():
    pairs = [{"chosen": "a" * 10, "rejected": "b" * 9, "tree_id": f"t{i // 2}"} for i in range(8)]
    a = np.array([1.0, 1, 1, 1, 1, 1, -1, -1])  # right on 6 of the 8 matched pairs
    b = np.array([-1.0, -1, -1, -1, 1, 1, 1, 1])  # right on 4
    tests = judge_skill.compare({"a": a, "b": b}, pairs)
    (only,) = tests
    assert only["judges"] == ["a", "b"] and only["test"]["trees"]["n"] == 4  # 8 pairs in 4 trees
    assert (only["test"]["trees"]["better"], only["test"]["trees"]["worse"]) == (2, 1)
    # the combination scales each judge by its sd on HH-RLHF, never on Open Assistant
    combined = judge_skill.combine(
        {
            "a": {"hh_rlhf_held_out": np.array([-2.0, 2.0]), "oa": a},
            "b": {"hh_rlhf_held_out": np.array([-1.0, 1.0]), "oa": b},
        }
    )
    assert combined["oa"][0] == pytest.approx((1 / 2 - 1 / 1) / 2)
    results = {
        "judges": {
            name: {judge_skill.CHOOSE_ON: judge_skill.figures(m, pairs)} for name, m in (("a", a), ("b", b))
        }
    }
    assert judge_skill.choose(results)["judge"] == "a"


def test_the_committed_judge_loads_and_names_its_weights():
    """The study's judge, demo/judge-combined: its members are the committed judges, as they are now (the
    sha256 it names), trained on no Open Assistant data; it loads, scores and names itself by them."""
    from study.run import JUDGE, JUDGES, ROOT
    from train.evaluate import judge_identity
    from train.identity import folder_weights_sha256
    from train.scorer import load_judge

    info = json.loads((ROOT / JUDGES[0] / "training_info.json").read_text())
    assert (
        info["train_pairs"] == 5570
        and info["length_control"]
        and "Open Assistant" not in info["data"]["source"]
    )
    spec = json.loads((ROOT / JUDGE / "judges.json").read_text())
    members = [(ROOT / JUDGE / m["path"]).resolve() for m in spec["members"]]
    assert members == [(ROOT / j).resolve() for j in JUDGES]
    assert [m["weights_sha256"] for m in spec["members"]] == [folder_weights_sha256(m) for m in members]
    identity = judge_identity(str(ROOT / JUDGE))
    assert identity["weights_sha256"] and identity["description"] == spec["description"]
    judge = load_judge(str(ROOT / JUDGE))
    good, bad = judge.score([[{"role": "user", "content": p["prompt"]}] for p in PAIRS[:1]] * 2,
                            [PAIRS[0]["chosen"], PAIRS[0]["rejected"]])  # fmt: skip
    assert np.isfinite([good, bad]).all()
