"""train.evaluate on a tiny Phi whose answer is known by construction: a LoRA trained here (plain torch)
to prefer the chosen replies of hand-made pairs that the base model gets wrong."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train import evaluate

ROOT = Path(__file__).resolve().parent.parent

# (prompt, reply A, reply B): which one is "chosen" is decided below so that the base model prefers
# the other one; the trained adapter must then prefer the chosen one.
TEXTS = [
    ("What is the capital of France?", "The capital of France is Paris.", "I like turtles and green tea."),
    ("How many legs does a spider have?", "A spider has eight legs.", "Please ask me later about cars."),
    ("Name a primary colour.", "Red is a primary colour.", "Quantum bicycles hum softly at dawn."),
    ("What do bees make?", "Bees make honey.", "Television schedules vary by region."),
]


def reference_logprob(model, tokenizer, prompt: str, reply: str) -> float:
    """Mean log-prob of the reply's tokens, one unpadded sequence at a time, written out by hand for the
    Phi-2 template (``Instruct: ...\\nOutput:`` then `` reply<eos>``)."""
    prompt_ids = tokenizer(f"Instruct: {prompt}\nOutput:", add_special_tokens=False)["input_ids"]
    reply_ids = tokenizer(f" {reply}{tokenizer.eos_token}", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + reply_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    targets = ids[0, 1:]
    token_logprobs = logprobs[torch.arange(len(targets)), targets]
    return token_logprobs[-len(reply_ids) :].mean().item()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_phi_dir):
    """Pairs the base gets wrong, an adapter trained to get them right, and an untrained adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, PhiForCausalLM

    root = tmp_path_factory.mktemp("evaluate")
    tokenizer = AutoTokenizer.from_pretrained(tiny_phi_dir)
    model = PhiForCausalLM.from_pretrained(tiny_phi_dir).eval()
    pairs = []
    for k, (prompt, a, b) in enumerate(TEXTS):
        # Orient each pair so that the base model prefers the rejected reply: base accuracy is 0.
        worse, better = (
            (a, b)
            if reference_logprob(model, tokenizer, prompt, a) < reference_logprob(model, tokenizer, prompt, b)
            else (b, a)
        )
        pairs.append(
            {
                "prompt": prompt,
                "chosen": worse,
                "rejected": better,
                "tree_id": f"t{k}",
                "prompt_id": f"p{k}",
                "chosen_id": f"c{k}",
                "rejected_id": f"r{k}",
                "lang": "en",
                "chosen_rank": 0,
                "rejected_rank": 1,
                "chosen_likes": 0,
                "rejected_likes": 0,
                "rule": "rank",
            }
        )
    pairs_file = write_jsonl(root / "eval.jsonl", pairs)

    config = LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"]
    )
    untrained = get_peft_model(PhiForCausalLM.from_pretrained(tiny_phi_dir), config)
    untrained.save_pretrained(root / "untrained")

    torch.manual_seed(0)
    peft_model = get_peft_model(model, config)
    peft_model.train()
    # Raise the likelihood of the chosen replies, nothing else: one right-padded batch, loss on replies.
    sequences, labels = [], []
    for pair in pairs:
        prompt_ids = tokenizer(f"Instruct: {pair['prompt']}\nOutput:", add_special_tokens=False)["input_ids"]
        reply_ids = tokenizer(f" {pair['chosen']}{tokenizer.eos_token}", add_special_tokens=False)[
            "input_ids"
        ]
        sequences.append(prompt_ids + reply_ids)
        labels.append([-100] * len(prompt_ids) + reply_ids)
    width = max(map(len, sequences))
    ids = torch.tensor([s + [tokenizer.pad_token_id] * (width - len(s)) for s in sequences])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])
    labels = torch.tensor([x + [-100] * (width - len(x)) for x in labels])
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=2e-2)
    for _ in range(15):
        loss = peft_model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    peft_model.eval()
    peft_model.save_pretrained(root / "adapter")
    (root / "adapter" / "recipe.yaml").write_text(
        "method: grpo\nreward_funcs: [preference, ends_with_eos, not_empty, concision]\n"
        "reward_weights: [4.0, 1.0, 0.5, 0.25]\n"
    )
    expected = {}
    for pair in pairs:
        tuned = {
            r: reference_logprob(peft_model, tokenizer, pair["prompt"], pair[r])
            for r in ("chosen", "rejected")
        }
        with peft_model.disable_adapter():
            base = {
                r: reference_logprob(peft_model, tokenizer, pair["prompt"], pair[r])
                for r in ("chosen", "rejected")
            }
        expected[pair["prompt_id"]] = {
            "base": base["chosen"] - base["rejected"],
            "tuned": tuned["chosen"] - tuned["rejected"],
        }
    return {
        "root": root,
        "pairs": pairs,
        "pairs_file": pairs_file,
        "adapter": root / "adapter",
        "untrained": root / "untrained",
        "expected": expected,
    }


@pytest.fixture(scope="module")
def evaluated(setup):
    out = setup["root"] / "adapter" / "eval"
    code = evaluate.main(
        [
            "--adapter",
            str(setup["adapter"]),
            "--pairs",
            str(setup["pairs_file"]),
            "--output-dir",
            str(out),
            "--max-new-tokens",
            "6",
            "--temperature",
            "0",
            "--batch-size",
            "3",
            "--samples",
            "2",
        ]
    )
    assert code == 0
    return out, json.loads((out / "report.json").read_text())


def estimates(node, path=""):
    """Every {"mean", "ci95", "n"} in a report, with where it is."""
    if isinstance(node, dict):
        if {"mean", "ci95", "n"} <= node.keys():
            yield path, node
        for key, value in node.items():
            yield from estimates(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from estimates(value, f"{path}[{i}]")


def test_preference_accuracy_known_by_construction(setup, evaluated):
    _, report = evaluated
    preference = report["preference"]
    assert preference["n"] == len(TEXTS)
    assert preference["base"]["accuracy"]["mean"] == 0.0
    assert preference["tuned"]["accuracy"]["mean"] == 1.0
    assert preference["tuned_minus_base"]["accuracy"]["mean"] == 1.0
    # Batched, left-padded, mixed-adapter scoring agrees with one-sequence-at-a-time by hand.
    for pair in preference["pairs"]:
        expected = setup["expected"][pair["prompt_id"]]
        assert pair["base"]["margin"] == pytest.approx(expected["base"], abs=1e-4)
        assert pair["tuned"]["margin"] == pytest.approx(expected["tuned"], abs=1e-4)


def test_report_schema_and_files(evaluated):
    out, report = evaluated
    assert {
        "schema_version",
        "seed",
        "options",
        "model",
        "pairs",
        "preference",
        "generation",
        "samples",
        "runtime_s",
    } <= report.keys()
    generation = report["generation"]
    assert generation["n"] == len(TEXTS)
    # Rewards and weights as the adapter's recipe.yaml gives them; the total is their weighted sum.
    assert generation["reward_funcs"] == ["preference", "ends_with_eos", "not_empty", "concision"]
    assert (
        generation["reward_weights"] == [4.0, 1.0, 0.5, 0.25] and generation["weights_from"] == "recipe.yaml"
    )
    for side in ("base", "tuned"):
        assert set(generation[side]["reward"]) == set(generation["reward_funcs"])
        assert {"total_reward", "answer_tokens", "ended_properly"} <= generation[side].keys()
    versus = generation["tuned_vs_base"]
    assert sum(versus[o]["mean"] for o in ("win", "tie", "loss")) == pytest.approx(1.0)
    found = list(estimates(report))
    assert len(found) > 20
    for where, estimate in found:
        low, high = estimate["ci95"]
        assert low - 1e-12 <= estimate["mean"] <= high + 1e-12, where
        assert estimate["n"] == len(TEXTS), where

    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == len(TEXTS)
    assert all(row["base"]["tokens"] <= 6 and row["tuned"]["tokens"] <= 6 for row in rows)
    for row in rows:
        for side in ("base", "tuned"):
            rewards = row[side]["rewards"]
            assert rewards["total"] == pytest.approx(
                sum(
                    w * rewards[name]
                    for name, w in zip(generation["reward_funcs"], generation["reward_weights"], strict=True)
                )
            )
            assert rewards["not_empty"] == float(bool(row[side]["answer"]))
    outcomes = [row["outcome"] for row in rows]
    assert versus["win"]["mean"] == outcomes.count("win") / len(rows)

    markdown = (out / "report.md").read_text()
    assert markdown.startswith("### ") and "\n# " not in markdown and "\n## " not in markdown
    assert "| Accuracy | 4 | 0% [0, 0] | 100% [100, 100] |" in markdown
    assert "Small sample (n = 4)" in markdown
    for link in ("margins.png", "rewards.png", "sample_1.png", "sample_2.png"):
        assert f"]({link})" in markdown
        assert (out / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [s["prompt_id"] for s in report["samples"]] == [
        p["prompt_id"]
        for p in evaluate.pick_samples(
            [
                {"prompt_id": f"p{k}", "prompt": t[0], "chosen": "", "rejected": ""}
                for k, t in enumerate(TEXTS)
            ],
            2,
        )
    ]
    samples = (out / "samples.md").read_text()
    for sample in report["samples"]:
        assert sample["prompt"] in samples
    assert not list(out.parent.glob(".eval.*")), "temporary folders left behind"


def test_untrained_adapter_ties_with_base(setup):
    """A fresh LoRA (B = 0) is the base model: same margins, and greedy answers tie everywhere."""
    from assistant.models import load_model

    loaded = load_model(adapter=str(setup["untrained"]), device="cpu")
    pairs = setup["pairs"]
    preference = evaluate.preference_accuracy(loaded, pairs, batch_size=5, max_length=1024, seed=0)
    for pair in preference["pairs"]:
        assert pair["tuned"]["margin"] == pytest.approx(pair["base"]["margin"], abs=1e-5)
    args = evaluate.EvalArguments(output_dir="unused", max_new_tokens=5, temperature=0.0, batch_size=4)
    generation = evaluate.generation_quality(loaded, pairs, args, recipe={})
    assert generation["tuned_vs_base"]["tie"]["mean"] == 1.0
    assert all(row["base"]["answer"] == row["tuned"]["answer"] for row in generation["rows"])


def test_pairs_from_trees_the_adapter_was_trained_on_are_left_out(setup, tmp_path, capsys):
    adapter = tmp_path / "adapter"
    shutil.copytree(setup["untrained"], adapter)
    trained = [pair["tree_id"] for pair in setup["pairs"][:-2]]
    (adapter / "training_info.json").write_text(json.dumps({"train_tree_ids": trained}))
    out = tmp_path / "eval"
    args = [
        "--adapter",
        str(adapter),
        "--pairs",
        str(setup["pairs_file"]),
        "--output-dir",
        str(out),
        "--max-new-tokens",
        "2",
        "--temperature",
        "0",
        "--samples",
        "1",
    ]
    assert evaluate.main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["pairs"]["n"] == 2 and report["pairs"]["left_out_trained_trees"] == len(trained)
    assert {p["prompt_id"] for p in report["preference"]["pairs"]} == {
        p["prompt_id"] for p in setup["pairs"][-2:]
    }
    assert f"left out: {len(trained)} pairs" in (out / "report.md").read_text()

    everything = [pair["tree_id"] for pair in setup["pairs"]]
    (adapter / "training_info.json").write_text(json.dumps({"train_tree_ids": everything}))
    capsys.readouterr()
    args[args.index(str(out))] = str(tmp_path / "none")
    assert evaluate.main(args) == 2
    assert (
        f"all {len(everything)} pairs come from trees the adapter was trained on" in capsys.readouterr().err
    )
    assert not (tmp_path / "none").exists()


def test_reward_weights_from_recipe_else_training_default():
    assert evaluate.reward_setup({"reward_funcs": ["not_empty", "concision"]}) == (
        ["not_empty", "concision"],
        [1.0, 1.0],
        "recipe.yaml, equal weights",
    )
    names, weights, source = evaluate.reward_setup({})
    from train.config import TrainArguments

    assert names == TrainArguments().reward_funcs and weights == [1.0] * len(names)
    with pytest.raises(evaluate.EvalError, match="2 reward_weights for 1 reward_funcs"):
        evaluate.reward_setup({"reward_funcs": ["not_empty"], "reward_weights": [1, 2]})


def test_sample_selection_is_a_fixed_rule():
    pairs = [
        {
            "prompt": f"question {k}",
            "chosen": "a",
            "rejected": "b",
            "prompt_id": f"id-{k}",
            "chosen_id": f"c{k}",
            "rejected_id": f"r{k}",
        }
        for k in range(30)
    ]
    pairs.append({**pairs[3], "chosen_id": "other", "rejected_id": "other-r"})  # a second pair of prompt 3
    by_hash = sorted({p["prompt_id"] for p in pairs}, key=lambda i: hashlib.sha256(i.encode()).hexdigest())
    picked = [p["prompt_id"] for p in evaluate.pick_samples(pairs, 5)]
    assert picked == by_hash[:5]
    shuffled = pairs[:]
    random.Random(1).shuffle(shuffled)
    assert [p["prompt_id"] for p in evaluate.pick_samples(shuffled, 5)] == picked
    assert [p["prompt_id"] for p in evaluate.pick_samples(shuffled, 3)] == picked[:3]
    assert evaluate.order_pairs(shuffled) == evaluate.order_pairs(pairs)


def test_bootstrap():
    values = [1.0, 0.0, 1.0, 1.0, float("nan"), 0.0, 1.0]
    estimate = evaluate.bootstrap(values, seed=3)
    assert estimate["n"] == 6 and estimate["mean"] == pytest.approx(4 / 6)
    assert 0 <= estimate["ci95"][0] < estimate["mean"] < estimate["ci95"][1] <= 1
    assert evaluate.bootstrap(values, seed=3) == estimate
    assert evaluate.bootstrap([2.0] * 5, seed=0) == {"mean": 2.0, "ci95": [2.0, 2.0], "n": 5}
    assert evaluate.bootstrap([], seed=0)["n"] == 0


def vote(vote: str, left_is: str) -> dict:
    right_is = "base" if left_is == "tuned" else "tuned"
    return {
        "time": "2025-01-01T00:00:00",
        "prompt": "hi",
        "vote": vote,
        "left_is": left_is,
        "left": {"model": left_is, "answer": "x"},
        "right": {"model": right_is, "answer": "y"},
        "settings": {"temperature": 0.7},
    }


def test_votes_summary(tmp_path, capsys):
    # Tuned wins 6 (left tuned voted left, or left base voted right), ties 1, loses 3.
    votes = (
        [vote("left", "tuned")] * 4
        + [vote("right", "base")] * 2
        + [vote("tie", "base")]
        + [vote("right", "tuned")] * 2
        + [vote("left", "base")]
    )
    votes_file = write_jsonl(tmp_path / "votes.jsonl", votes)
    out = tmp_path / "report"
    (out).mkdir()
    (out / "report.json").write_text("{}")
    (out / "stale.png").write_bytes(b"old")  # an earlier report's file: the new report replaces the folder

    assert evaluate.main(["--votes", str(votes_file), "--output-dir", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())["votes"]
    assert report["n"] == 10
    assert report["counts"] == {"win": 6, "tie": 1, "loss": 3}
    assert [report[o]["mean"] for o in ("win", "tie", "loss")] == pytest.approx([0.6, 0.1, 0.3])
    for o in ("win", "tie", "loss"):
        assert report[o]["ci95"][0] <= report[o]["mean"] <= report[o]["ci95"][1]
        assert report[o]["n"] == 10
    assert "| share | 10 | 60% [" in (out / "report.md").read_text()
    assert not (out / "stale.png").exists()
    assert "votes (n=10)" in capsys.readouterr().out

    # A bad line: a one-line error naming it, and the report already there stays as it was.
    before = (out / "report.json").read_bytes()
    write_jsonl(votes_file, votes[:2] + [{"vote": "maybe", "left_is": "base"}])
    assert evaluate.main(["--votes", str(votes_file), "--output-dir", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"{votes_file}:3" in error and "'vote'" in error
    assert (out / "report.json").read_bytes() == before


@pytest.mark.parametrize(
    "case",
    [
        "missing_pairs",
        "malformed_pairs",
        "missing_adapter",
        "folder_without_adapter",
        "adapter_without_pairs",
        "output_is_other_folder",
        "bad_limit",
        "bad_device",
    ],
)
def test_bad_input_is_one_line_error_and_writes_nothing(case, setup, tmp_path, capsys):
    out = tmp_path / "out"
    adapter, pairs = str(setup["adapter"]), str(setup["pairs_file"])
    args = {"--adapter": adapter, "--pairs": pairs, "--output-dir": str(out)}
    expect = {
        "missing_pairs": "no such pair file",
        "malformed_pairs": "malformed JSON",
        "missing_adapter": "no adapter there",
        "folder_without_adapter": "no adapter there",
        "adapter_without_pairs": "--adapter and --pairs go together",
        "output_is_other_folder": "not an evaluation folder",
        "bad_limit": "--limit must be at least 1",
        "bad_device": "--device must be",
    }[case]
    if case == "missing_pairs":
        args["--pairs"] = str(tmp_path / "nope.jsonl")
    elif case == "malformed_pairs":
        args["--pairs"] = str(tmp_path / "bad.jsonl")
        (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": \n')
    elif case == "missing_adapter":
        args["--adapter"] = str(tmp_path / "no-such-adapter")
    elif case == "folder_without_adapter":
        args["--adapter"] = str(tmp_path)
    elif case == "adapter_without_pairs":
        del args["--pairs"]
    elif case == "output_is_other_folder":
        out.mkdir()
        (out / "adapter_model.safetensors").write_bytes(b"precious")
    elif case == "bad_limit":
        args["--limit"] = "0"
    elif case == "bad_device":
        args["--device"] = "tpu"
    code = evaluate.main([x for item in args.items() for x in item])
    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith("error: ") and error.count("\n") == 1 and expect in error, error
    if case == "output_is_other_folder":
        assert [p.name for p in out.iterdir()] == ["adapter_model.safetensors"]
    else:
        assert not out.exists()
    assert not list(tmp_path.glob(".out.*"))


def test_cli_bad_path_exits_2_without_traceback(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "train.evaluate",
            "--adapter",
            str(tmp_path / "missing"),
            "--pairs",
            str(tmp_path / "missing.jsonl"),
            "--output-dir",
            str(tmp_path / "out"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not (tmp_path / "out").exists()
