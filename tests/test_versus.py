"""study.versus: a candidate against its warm start, prompt by prompt, from two evaluations' files."""

import json

import pytest

from study.versus import VersusError, compare, main, summary


def evaluation(folder, name, judge_scores, tokens, ended, judge="judge-minilm-hh", pairs="dev.jsonl"):
    """The two files train.evaluate writes that the comparison reads: one tuned answer per prompt."""
    folder.mkdir(parents=True)
    trees = ["t1", "t1", "t2", "t3", "t4", "t5"]
    report = {
        "adapter": {"name": name},
        "pairs": {"file": pairs, "n": 6, "prompts": 6, "left_out_trained_trees": 0},
        "settings": {"max_new_tokens": 256, "temperature": 0.7, "k": 1},
        "seed": 0,
        "judge": {"name": judge, "weights_sha256": judge},
    }
    (folder / "report.json").write_text(json.dumps(report))
    rows = [
        {"parent_id": f"p{i}", "tree_id": tree, "prompt": "q",
         "tuned": [{"answer": "a", "tokens": n, "ended": e, "seed": 0, "judge": s}]}
        for i, (tree, s, n, e) in enumerate(zip(trees, judge_scores, tokens, ended, strict=True))
    ]  # fmt: skip
    (folder / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_a_candidate_against_its_warm_start_by_hand(tmp_path):
    # A better on p0, p1 (one tree), p2, p3, p4; worse on p5: 5 prompts of 6, 4 trees of 5 (p = 0.375)
    a = evaluation(tmp_path / "a", "grpo", [1, 1, 1, 1, 1, 0], [10] * 6, [True] * 3 + [False] * 3)
    b = evaluation(tmp_path / "b", "dpo", [0, 0, 0, 0, 0, 1], [10] * 6, [False] * 6)
    result = compare(a, b)
    assert result["per_prompt"]["win"]["rate"] == pytest.approx(5 / 6)
    trees = result["per_prompt"]["test"]["trees"]
    assert (trees["better"], trees["worse"]) == (4, 1)
    assert result["per_prompt"]["test"]["p_value"] == pytest.approx(0.375)
    assert result["a_minus_b"]["mean"] == pytest.approx(4 / 6)
    assert result["ended_properly"]["a"]["rate"] == 0.5 and result["ended_properly"]["b"]["rate"] == 0.0
    assert result["length_controlled"]["slope"] == 0.0  # the same lengths: nothing to control for
    assert "`grpo` against `dpo` on 6 prompts of dev.jsonl" in summary(result)


def test_evaluations_that_differ_are_refused_in_one_line(tmp_path, capsys):
    a = evaluation(tmp_path / "a", "grpo", [1] * 6, [10] * 6, [True] * 6)
    other_judge = evaluation(tmp_path / "b", "dpo", [0] * 6, [10] * 6, [True] * 6, judge="judge-hh-rlhf")
    with pytest.raises(VersusError, match="differ in judge"):
        compare(a, other_judge)
    test_split = evaluation(tmp_path / "c", "dpo", [0] * 6, [10] * 6, [True] * 6, pairs="test.jsonl")
    assert main([str(a), str(test_split)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "differ in pairs" in err and len(err.splitlines()) == 1
    assert main([str(a), str(tmp_path / "missing")]) == 2
    assert "run python -m train.evaluate first" in capsys.readouterr().err
