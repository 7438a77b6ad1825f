"""train.evaluate on a tiny Phi whose answer is known by construction: a LoRA trained here (plain torch)
to prefer the chosen replies of hand-made pairs that the base model gets wrong."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests._helpers_precision import score_tolerance
from train import evaluate
from train.evaluate import answers as answering
from train.evaluate.inputs import order_pairs, pick_samples
from train.evaluate.preference import preference_accuracy

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
                "parent_id": f"p{k}",
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
        "method: grpo\nreward_funcs: [not_empty, concision]\nreward_weights: [0.5, 0.25]\n"
        "max_completion_length: 5\ntemperature: 1.0\n"
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
        expected[pair["parent_id"]] = {
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
def judge_dir(tmp_path_factory, smollm2_dir) -> Path:
    """A reward model whose preference is known by construction: no layers, and a score head that
    reads the embedding of the answer's last token, set so that an answer ending in " good" scores
    high and one ending in " bad" low (its tokenizer has no chat template: question and answer go in
    as a text pair, as for Open Assistant's DeBERTa judges)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    tokenizer.chat_template = None
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=0,
        num_attention_heads=2, num_labels=1, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    model = LlamaForSequenceClassification(config)
    good, bad = (tokenizer(w, add_special_tokens=False)["input_ids"][-1] for w in (" good", " bad"))
    with torch.no_grad():
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[good, 0] = 1.0
        model.model.embed_tokens.weight[bad, 0] = -1.0
        model.score.weight.zero_()
        model.score.weight[0, 0] = 1.0
    path = tmp_path_factory.mktemp("judge")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "chat_template.jinja").unlink(missing_ok=True)
    return path


@pytest.fixture(scope="module")
def evaluated(setup, judge_dir):
    out = setup["root"] / "adapter" / "eval"
    code = evaluate.main(
        ["--adapter", str(setup["adapter"]), "--pairs", str(setup["pairs_file"]), "--output-dir", str(out),
         "--judge", str(judge_dir), "--num-generations", "2", "--batch-size", "3", "--samples", "2",
         "--max-new-tokens", "5"]
    )  # fmt: skip
    assert code == 0
    return out, json.loads((out / "report.json").read_text())


def estimates(node, path=""):
    """Every interval estimate in a report ({"mean" or "rate", "ci95", "n"}), with where it is."""
    if isinstance(node, dict):
        if {"ci95", "n"} <= node.keys() and node["ci95"][0] is not None:
            yield path, node
        for key, value in node.items():
            yield from estimates(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from estimates(value, f"{path}[{i}]")


@pytest.mark.precision
def test_preference_accuracy_known_by_construction(setup, evaluated):
    _, report = evaluated
    preference = report["preference"]
    assert preference["n"] == len(TEXTS)
    assert preference["base"]["accuracy"]["rate"] == 0.0
    assert preference["tuned"]["accuracy"]["rate"] == 1.0
    assert preference["tuned_minus_base"]["accuracy"]["mean"] == 1.0
    # every pair flipped to right: exact McNemar p = 2 / 2**4
    assert preference["test"] == {
        "better": 4,
        "worse": 0,
        "same": 0,
        "n": 4,
        "p_value": pytest.approx(2 / 16),
    }
    # Batched, left-padded, mixed-adapter scoring agrees with one-sequence-at-a-time by hand (in fp32),
    # within the rounding of the precision the evaluation ran in.
    for pair in preference["pairs"]:
        expected = setup["expected"][pair["parent_id"]]
        assert pair["base"]["margin"] == pytest.approx(expected["base"], abs=score_tolerance())
        assert pair["tuned"]["margin"] == pytest.approx(expected["tuned"], abs=score_tolerance())


def test_report_belongs_to_its_adapter_and_reads_the_recipe(setup, evaluated):
    from train.identity import file_sha256

    out, report = evaluated
    assert report["adapter"]["sha256"] == file_sha256(setup["adapter"] / "adapter_model.safetensors")
    assert report["adapter"]["base"]["source"] == "local folder"
    assert report["adapter"]["base"]["weights_sha256"]
    # max new tokens as given (5), temperature from the adapter's recipe.yaml (1.0); k = 2 seeds
    settings = report["settings"]
    assert (settings["max_new_tokens"], settings["temperature"], settings["k"]) == (5, 1.0, 2)
    assert settings["from_recipe"] == "temperature from the adapter's recipe"
    assert report["adapter"]["method"] == "grpo"
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == len(TEXTS)
    for row in rows:
        for side in ("base", "tuned"):
            assert [a["seed"] for a in row[side]] == [42, 43]
            assert all(a["tokens"] <= 5 for a in row[side])
    # the training objective is its own section, never the headline
    objective = report["training_objective"]
    assert objective["reward_funcs"] == ["not_empty", "concision"]
    markdown = (out / "report.md").read_text()
    assert (
        markdown.index("Preference accuracy")
        < markdown.index("independent judge")
        < markdown.index("The training objective")
    )
    assert "| Accuracy | 4 | 0% [0, 49] | 100% [51, 100] |" in markdown
    assert "Small sample (n = 4)" in markdown
    for found, estimate in estimates({k: v for k, v in report.items() if k != "samples"}):
        value = estimate.get("rate", estimate.get("mean"))
        low, high = estimate["ci95"]
        assert low - 1e-9 <= value <= high + 1e-9, found
    for link in ("margins.png", "judge.png"):
        assert f"]({link})" in markdown and (out / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.parent.glob(".eval.*")), "temporary folders left behind"


def test_the_base_side_is_kept_for_the_next_adapter(setup, judge_dir, tmp_path):
    """A second adapter on the same base, pairs and settings reuses the base's half, and gets the same
    base figures as computing it again would."""
    common = ["--pairs", str(setup["pairs_file"]), "--judge", str(judge_dir), "--num-generations", "2",
              "--max-new-tokens", "3", "--temperature", "1.0", "--base-cache", str(tmp_path / "cache")]  # fmt: skip
    reports = []
    for adapter, out in ((setup["adapter"], "a"), (setup["untrained"], "b"), (setup["untrained"], "c")):
        extra = [] if out != "c" else ["--base-cache", str(tmp_path / "other-cache")]  # c: computed afresh
        assert (
            evaluate.main(["--adapter", str(adapter), *common, *extra, "--output-dir", str(tmp_path / out)])
            == 0
        )
        reports.append(json.loads((tmp_path / out / "report.json").read_text()))
    assert [r["base_from_cache"] for r in reports] == [False, True, False]
    for key in ("preference",):
        assert reports[1][key]["base"] == reports[0][key]["base"]
        assert reports[1][key]["base"]["accuracy"] == reports[2][key]["base"]["accuracy"]
    assert reports[1]["judge_verdicts"]["base"] == reports[2]["judge_verdicts"]["base"]
    assert reports[1]["answers"]["base"] == reports[2]["answers"]["base"]


def test_judge_with_a_known_preference(judge_dir):
    from assistant.generation import Answer
    from train.scorer import Scorer

    judge = Scorer(str(judge_dir))
    pairs = [
        {"prompt": f"Question {i}?", "chosen": f"Answer {i}, good", "rejected": f"Answer {i}, bad"}
        for i in range(6)
    ]
    pairs[5] = {**pairs[5], "chosen": "It is bad", "rejected": "It is good"}  # people chose the bad one
    accuracy = answering.judge_accuracy(judge, pairs)
    assert (accuracy["k"], accuracy["n"]) == (5, 6)
    # "Answer i, good" is one character longer than "Answer i, bad"; "It is bad" one shorter than "It is good"
    baselines = accuracy["baselines"]
    assert baselines["longer_wins"]["k"] == 5 and baselines["shorter_wins"]["k"] == 1
    assert (baselines["length_matched"]["k"], baselines["length_matched"]["n"]) == (5, 6)
    answer = lambda text: Answer(text=text, ended=True, cut=False, tokens=3, adapter="x")  # noqa: E731
    prompts = pairs[:4]
    answers = {
        "base": [[answer("too bad"), answer("so good")] for _ in prompts],
        "tuned": [[answer("so good"), answer("so good")] for _ in prompts[:3]]
        + [[answer("too bad"), answer("too bad")]],
    }  # every answer 7 characters long
    scores = {side: answering.judge_scores(judge, prompts, answers[side]) for side in answers}
    verdicts = answering.judge_verdicts(scores, prompts, answers, seed=0, limit=3)
    test = verdicts["per_prompt"]["test"]
    assert (test["better"], test["worse"], test["same"]) == (3, 1, 0)
    assert test["p_value"] == pytest.approx(10 / 16)
    assert verdicts["per_prompt"]["win"]["k"] == 3
    assert (
        verdicts["per_answer"]["n"] == 8 and verdicts["per_answer"]["win"]["k"] == 3
    )  # sample j against sample j
    # every answer has 7 characters: no length difference to control for, so Firth's intercept alone,
    # (3 wins + 1/2) / (4 prompts + 1)
    controlled = verdicts["length_controlled"]
    assert controlled["rate"] == pytest.approx(3.5 / 5, abs=1e-6) and controlled["raw"]["rate"] == 0.75
    assert controlled["length_vs_judge_spearman"] is None


def test_two_answers_cut_at_the_limit_are_not_equal_length_by_construction():
    """Equal length is read in characters, and prompts where both answers ran to the token limit are
    left out (their lengths are unknown), not counted as equal because both stopped at 256 tokens."""
    from assistant.generation import Answer

    def answer(text, ended=True, tokens=3):
        return Answer(text=text, ended=ended, cut=False, tokens=tokens, adapter="x")

    prompts = [{"prompt": f"q{i}", "tree_id": f"t{i}"} for i in range(6)]
    answers = {  # prompts 0-1: both cut at 10 tokens (tuned wins); 2-5: both ended, one as long as the other
        "base": [[answer("a" * 40, False, 10)]] * 2 + [[answer("b" * 20)]] * 4,
        "tuned": [[answer("c" * 50, False, 10)]] * 2 + [[answer("d" * 22)]] * 2 + [[answer("e" * 80)]] * 2,
    }
    difference = np.array([1.0, 1.0, 1.0, -1.0, 1.0, -1.0])
    control = answering.length_control(difference, answers, [p["tree_id"] for p in prompts], limit=10)
    assert control["unit"] == "characters" and control["left_out_both_cut"] == 2 and control["n"] == 4
    # within 25% in characters and not both cut: prompts 2 and 3 (22 against 20), one win, one loss
    assert (control["length_matched"]["k"], control["length_matched"]["n"]) == (1, 2)
    assert answering.capped(answer("x", False, 10), 10) and not answering.capped(answer("x", False, 9), 10)


def test_loops_and_ends_are_paired_per_prompt_with_an_exact_test():
    from scipy.stats import binomtest

    from assistant.generation import Answer
    from train.evaluate.defects import compare

    loop = "the cat sat on the mat " * 10
    fine = "Paris is the capital of France, and it has been for a long time, said the guide."

    def answer(text, ended):
        return Answer(text=text, ended=ended, cut=False, tokens=5, adapter="x")

    # 12 prompts in 12 trees: base loops on 10, tuned on 1 (one prompt loops on both); tuned ends more
    base = [[answer(loop, False)] for _ in range(10)] + [[answer(fine, True)] for _ in range(2)]
    tuned = [[answer(fine, True)] for _ in range(9)] + [[answer(loop, False)]] + [[answer(fine, True)]] * 2
    result = compare(base, tuned, [f"t{i}" for i in range(12)])
    assert (result["loop"]["base"]["k"], result["loop"]["tuned"]["k"]) == (10, 1)
    assert (result["loop"]["test"]["better"], result["loop"]["test"]["worse"]) == (9, 0)
    # McNemar exact on the discordant prompts: 9 against 0
    assert result["loop"]["test"]["p_value"] == pytest.approx(binomtest(9, 9, 0.5).pvalue)
    assert (result["end"]["base"]["k"], result["end"]["tuned"]["k"], result["end"]["test"]["better"]) == (
        2,
        11,
        9,
    )
    # prompts of one tree vote once: all 12 in 3 trees leave 3 votes
    clustered = compare(base, tuned, [f"t{i % 3}" for i in range(12)])
    assert clustered["loop"]["test"]["trees"]["n"] == 3


def test_answers_are_drawn_by_the_spaces_own_sampler(setup):
    """The evaluation's answers are the Space's (assistant.engine.stream: temperature and top-p, no
    top-k) for the same settings and seed, and report.json records every sampling setting."""
    from assistant.engine import stream
    from assistant.generation import BASE, GenerationSettings
    from assistant.models import load_model
    from train.data import prompt_messages

    loaded = load_model(adapter=str(setup["adapter"]), device="cpu")
    pairs = setup["pairs"][:2]
    settings = GenerationSettings(max_new_tokens=8, temperature=1.0, seed=5)
    answers = answering.generate_answers(loaded, pairs, settings, k=1, batch_size=2)
    *_, space = stream(loaded, [prompt_messages(p["prompt"]) for p in pairs], [BASE, BASE], settings)
    assert [row[0].text for row in answers["base"]] == [a.text for a in space]
    assert "penalised" not in answers  # only when asked for
    recorded = answering.sampling(settings)
    assert (
        recorded["top_k"] == 0 and recorded["repetition_penalty"] == 1.0 and "engine" in recorded["sampler"]
    )


def test_the_decoding_knob_is_each_requests_own_and_changes_the_answer(smollm2_dir):
    """On the real SmolLM2, greedy: a strong repetition penalty in the request's settings changes its
    answer, and nothing is left on the model (the tiny Phi's logits are too flat to show it)."""
    from assistant.generation import BASE, GenerationSettings
    from assistant.models import load_model

    loaded = load_model(base=str(smollm2_dir), device="cpu")
    settings = GenerationSettings(max_new_tokens=16, temperature=0, seed=0)
    conversation = [[{"role": "user", "content": "Write the word yes ten times, separated by commas."}]]
    plain = answering.serve(loaded, conversation, BASE, settings)
    penalised = answering.serve(loaded, conversation, BASE, replace(settings, repetition_penalty=3.0))
    assert penalised[0].text != plain[0].text
    banned = answering.serve(loaded, conversation, BASE, replace(settings, no_repeat_ngram_size=2))
    assert banned[0].text != plain[0].text
    assert answering.serve(loaded, conversation, BASE, settings)[0].text == plain[0].text


def test_multi_turn_pairs_are_scored_through_the_chat_template(setup, tmp_path):
    from assistant.models import load_model

    loaded = load_model(adapter=str(setup["untrained"]), device="cpu")
    conversation = [
        {"role": "user", "content": "Hi there."},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "What do bees make?"},
    ]
    pair = {**setup["pairs"][3], "prompt": conversation, "parent_id": "deep", "depth": 2}
    first_turn = setup["pairs"][3]
    result = preference_accuracy(loaded, [pair, first_turn], batch_size=4, max_length=1024, seed=0)
    deep, flat = result["pairs"]
    assert deep["parent_id"] == "deep"
    assert deep["base"]["chosen"] != pytest.approx(flat["base"]["chosen"])  # the earlier turns count


def test_untrained_adapter_ties_with_base(setup):
    """A fresh LoRA (B = 0) is the base model: same margins, and the same answers under one seed."""
    from assistant.generation import GenerationSettings
    from assistant.models import load_model

    loaded = load_model(adapter=str(setup["untrained"]), device="cpu")
    pairs = setup["pairs"]
    preference = preference_accuracy(loaded, pairs, batch_size=5, max_length=1024, seed=0)
    for pair in preference["pairs"]:
        assert pair["tuned"]["margin"] == pytest.approx(pair["base"]["margin"], abs=1e-5)
    assert preference["test"]["p_value"] == 1.0
    settings = GenerationSettings(max_new_tokens=4, temperature=1.0, seed=3)
    answers = answering.generate_answers(loaded, pairs, settings, k=2, batch_size=4)
    assert [[a.text for a in row] for row in answers["base"]] == [
        [a.text for a in row] for row in answers["tuned"]
    ]


def test_pairs_from_trees_the_adapter_was_trained_on_are_left_out(setup, tmp_path, capsys):
    adapter = tmp_path / "adapter"
    shutil.copytree(setup["untrained"], adapter)
    trained = [pair["tree_id"] for pair in setup["pairs"][:-2]]
    (adapter / "training_info.json").write_text(json.dumps({"train_tree_ids": trained}))
    out = tmp_path / "eval"
    args = ["--adapter", str(adapter), "--pairs", str(setup["pairs_file"]), "--output-dir", str(out),
            "--max-new-tokens", "2", "--num-generations", "1", "--samples", "1"]  # fmt: skip
    assert evaluate.main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["pairs"]["n"] == 2 and report["pairs"]["left_out_trained_trees"] == len(trained)
    assert {p["parent_id"] for p in report["preference"]["pairs"]} == {
        p["parent_id"] for p in setup["pairs"][-2:]
    }
    assert f"{len(trained)} such pairs were left out" in (out / "report.md").read_text()

    everything = [pair["tree_id"] for pair in setup["pairs"]]
    (adapter / "training_info.json").write_text(json.dumps({"train_tree_ids": everything}))
    capsys.readouterr()
    args[args.index(str(out))] = str(tmp_path / "none")
    assert evaluate.main(args) == 2
    assert (
        f"all {len(everything)} pairs come from trees the adapter was trained on" in capsys.readouterr().err
    )
    assert not (tmp_path / "none").exists()


def test_a_missing_reward_model_leaves_the_objective_out_said_before_generating(setup, tmp_path, capsys):
    adapter = tmp_path / "adapter"
    shutil.copytree(setup["untrained"], adapter)
    missing = tmp_path / "reward-model"
    (adapter / "recipe.yaml").write_text(
        f"method: grpo\nreward_funcs: [reward_model, not_empty]\nreward_model_name_or_path: {missing}\n"
    )
    out = tmp_path / "eval"
    args = ["--adapter", str(adapter), "--pairs", str(setup["pairs_file"]), "--output-dir", str(out),
            "--max-new-tokens", "2", "--num-generations", "1", "--samples", "0"]  # fmt: skip
    assert evaluate.main(args) == 0
    note = (
        f"the training-objective section is left out: its reward model {missing} is not here; "
        "train it or give another folder"
    )
    assert capsys.readouterr().err.splitlines()[0] == f"note: {note}"  # the first line, before any model
    report = json.loads((out / "report.json").read_text())
    assert report["training_objective_left_out"] == note and "training_objective" not in report
    assert f"Not computed: {note}." in (out / "report.md").read_text()


def test_rejudging_with_the_same_judge_gives_the_same_report(setup, evaluated, judge_dir, tmp_path):
    """train.evaluate.rejudge scores the answers of generations.jsonl again (nothing generated): with the
    judge that made the report, every judge figure, loop and end comes out as the evaluation wrote it."""
    from train.evaluate.rejudge import rejudge

    folder = tmp_path / "adapter"
    shutil.copytree(setup["adapter"], folder)  # with the eval/ the evaluated fixture wrote into it
    before = json.loads((folder / "eval" / "report.json").read_text())
    after = rejudge(folder / "eval", str(judge_dir), str(setup["pairs_file"]))
    for key in ("judge", "judge_verdicts", "defects", "penalised_base", "preference", "samples"):
        assert after[key] == before[key], key
    assert after["rejudged"]["judge_before"] == before["judge"]["name"]
    assert json.loads((folder / "eval" / "report.json").read_text()) == after


def test_a_stale_report_stays_out_of_the_card(setup, evaluated, tmp_path):
    """Re-training into a folder with an old eval/ must not publish the old numbers."""
    from train.card import report_matches

    folder = tmp_path / "run"
    shutil.copytree(setup["adapter"], folder)  # with the eval/ the evaluated fixture wrote into it
    assert report_matches(folder)
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\1")  # other weights: a new training run
    assert not report_matches(folder)


def test_study_table_is_written_from_reports_of_current_weights(setup, evaluated, tmp_path):
    """study.table reads the candidates' own files; a candidate whose report belongs to other weights is
    left out of the table, and the promote rule ranks by the paired tests' p-values."""
    from study.run import evidence
    from study.table import BEGIN, END, embed, reading, write_table

    runs = tmp_path / "runs"
    for name in ("fresh", "stale"):
        shutil.copytree(setup["adapter"], runs / name)
        (runs / name / "training_info.json").write_text(
            json.dumps({"method": "grpo", "global_step": 3, "train_runtime_s": 120.0,
                        "trends": {"reward": {"first_tenth_mean": 0.1, "last_tenth_mean": 0.4}}})
        )  # fmt: skip
    (runs / "fresh" / "run.json").write_text(json.dumps({"wall_s": 130.0, "peak_rss_mb": 2048}))
    weights = runs / "stale" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\1")

    tables = write_table(("fresh", "stale", "missing"), runs, tmp_path / "results", {})
    rows, sealed_rows, _ = tables
    assert [r["name"] for r in rows] == ["fresh"] and sealed_rows == []  # dev only: the test is unread
    report = evaluated[1]
    assert rows[0]["preference"]["tuned"] == report["preference"]["tuned"]["accuracy"]
    assert rows[0]["peak_rss_mb"] == 2048
    table = (tmp_path / "results" / "README.md").read_text()
    assert "`fresh`" in table and "`stale`" not in table and "reward 0.100 → 0.400" in table
    assert json.loads((tmp_path / "results" / "results.json").read_text())["dev"] == rows
    # a clone without the runs must not erase the committed results
    before = (tmp_path / "results" / "results.json").read_bytes()
    with pytest.raises(
        SystemExit, match=r"^error: dev: fresh are in .*results.json but their reports are not in"
    ):
        write_table(("stale", "missing"), runs, tmp_path / "results", {})
    assert (tmp_path / "results" / "results.json").read_bytes() == before
    from train.evaluate.ledger import ledger_line

    assert "## Reused test (the old sealed test)" in table and ledger_line() in table  # how often it was read
    assert "This is a reused test, not a sealed one" in table
    # against a warm start, from the real evaluation files: the same weights tie on every prompt
    shutil.copytree(runs / "fresh", runs / "warm")
    _, _, versus = write_table(("fresh",), runs, tmp_path / "results", {}, {"fresh": "warm", "stale": "warm"})
    assert [(v["a"], v["b"], v["split"]) for v in versus] == [("fresh", "warm", "dev")]
    assert (
        versus[0]["per_prompt"]["tie"]["rate"] == 1.0 and versus[0]["prompts"] == report["pairs"]["prompts"]
    )
    assert (
        json.loads((runs / "fresh" / "eval" / "versus.json").read_text())["summary"] == versus[0]["summary"]
    )
    assert f"- {versus[0]['summary']}." in (tmp_path / "results" / "README.md").read_text()
    assert (tmp_path / "results" / "plots" / "study.png").stat().st_size > 0
    # 4 of 4 pairs flipped right is McNemar p = 0.125: not enough pairs to call it a win
    assert "**No candidate beat its base at p < 0.05**" in table

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\nold table\n{END}\noutro\n")
    embed(readme, tables, {Path("demo/x"): "fresh"})
    text = readme.read_text()
    assert text.startswith(f"intro\n{BEGIN}\n### Dev: every choice") and text.endswith(f"{END}\noutro\n")
    assert "old table" not in text and "`fresh` (grpo): preference accuracy" in text
    assert "`demo/x` is the `fresh` adapter" in text
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="no study table markers"):
        embed(readme, tables, {})
    assert readme.read_text() == "no markers\n"

    better = rows[0]["preference"]["test"]
    assert better["better"] > better["worse"]  # the adapter was trained to get these pairs right
    worse = {**rows[0], "preference": {**rows[0]["preference"], "test": {**better, "better": 0, "worse": 4}}}
    worse["judge"] = {**worse["judge"], "per_prompt": None}
    assert evidence(worse) == (1.0, 0.0)  # no test where tuned did better: no evidence
    assert evidence(rows[0]) < evidence(worse)

    won = {**worse, "name": "won", "preference": {**worse["preference"], "test": {**better, "better": 20,
           "worse": 2, "p_value": 0.0001}}}  # fmt: skip
    verdict = reading([rows[0], won])[-1]
    assert verdict.startswith("**Beat their base at p < 0.05:** `won` (preference accuracy).")
    assert "Corrected for the table's 3 paired tests (Benjamini-Hochberg): `won` (preference" in verdict
    # a win at p < 0.05 that the correction takes away is named, with its adjusted p-value
    marginal = {**won, "name": "marginal", "preference": {**won["preference"], "test": {**better, "better": 9,
                "worse": 1, "p_value": 0.04}}}  # fmt: skip
    corrected = reading([rows[0], won, marginal])[-1]
    assert "`marginal` (preference accuracy)" in corrected  # a win before the correction
    assert "Not beyond chance after it: `marginal` (preference, adjusted p = 0.080)." in corrected
    assert verdict.endswith("its verdicts may be about length, not quality.**")  # the judge's weakness
    judged = {**won, "judge": {**won["judge"], "per_prompt": {**rows[0]["judge"]["per_prompt"], "test": {
        "better": 30, "worse": 10, "same": 0, "n": 40, "p_value": 0.002}}}, "length_controlled": {
        "rate": 0.6, "ci95": [0.3, 0.8], "n": 40}}  # fmt: skip
    assert "(preference accuracy, the judge, but not at equal length: 60% [30, 80])" in reading([judged])[-1]
    assert "at equal length it wins 60% [30, 80]" in reading([judged])[0]
    # the judge's length baselines stand next to its accuracy in the study's results
    accuracy = report["judge"]["accuracy"]
    assert (
        "the longer reply wins" in table
        and f"{accuracy['baselines']['length_matched']['n']} length-matched" in table
    )


def test_the_committed_study_table_is_what_the_current_code_writes_from_the_committed_record(tmp_path):
    """study/README.md is rewritten byte for byte, and study/results.json to six significant digits, from
    study/adapters by today's code (python -m study.run --step table), so every figure in them traces to
    a kept report. The digits beyond are an optimiser's (the length-controlled win rate's BFGS fit):
    another CPU's BLAS moves them in the ninth (0.5055963267 against 0.5055963239); no table shows them."""
    import os

    from study.run import CANDIDATES, KEPT, RESULTS, ROOT, WARM_STARTS
    from study.table import write_table

    kept = tmp_path / "adapters"  # links to the committed files; the comparisons' versus.json are new files
    shutil.copytree(ROOT / KEPT, kept, copy_function=os.symlink)
    reward_models = json.loads((ROOT / RESULTS / "reward_models.json").read_text())
    (tmp_path / "results").mkdir()
    # the rewards GRPO maximised (study.reward_skill's file) are read from beside the results
    shutil.copy(ROOT / RESULTS / "reward_skill.json", tmp_path / "results")
    write_table(CANDIDATES, kept, tmp_path / "results", reward_models, WARM_STARTS)
    written, committed = (folder / "README.md" for folder in (tmp_path / "results", ROOT / RESULTS))
    assert written.read_text() == committed.read_text()
    written, committed = (
        json.loads((f / "results.json").read_text()) for f in (tmp_path / "results", ROOT / RESULTS)
    )
    assert shown(written) == shown(committed)


def shown(value):
    """Every float of a results file to six significant digits, beyond what any table shows."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: shown(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shown(v) for v in value]
    return value


def test_the_space_serves_what_met_the_bar_on_the_sealed_test_as_the_ledger_holds_it():
    """study.run's promote rule on the committed record (study/adapters, the ledger): dev only chooses
    what the sealed test reads; a candidate is served when it met study.bar on a sealed read that the
    ledger holds for these very weights and an unchanged recipe, and demo/ holds exactly its weights."""
    from study.rows import row
    from study.run import CANDIDATES, DEMOS, KEPT, ROOT, passed, pick_demos, unread
    from train.evaluate.ledger import LEDGER, read_ledger
    from train.identity import file_sha256

    dev, sealed = ([r for r in (row(n, ROOT / KEPT, f) for n in CANDIDATES) if r] for f in ("eval", "sealed"))
    ledger = read_ledger(ROOT / LEDGER)
    chosen = pick_demos(sealed, ledger)
    assert chosen and all(passed(r) for r in chosen.values())
    assert any(not passed(r) for r in sealed)  # some sealed reads missed the bar: the rule had to choose
    for method, picked in chosen.items():
        assert file_sha256(ROOT / DEMOS[method] / "adapter_model.safetensors") == picked["adapter_sha256"]
    # candidates that met the bar on dev and were never read wait for the sealed test, not for the Space
    waiting = unread(dev, ledger)
    assert waiting and not set(waiting) & {r["name"] for r in sealed}
    assert all(passed(r) for r in dev if r["name"] in waiting)
    # weights the ledger did not see, or a read after the recipe changed, are no sealed result
    other = [{**r, "adapter_sha256": "0" * 64} for r in sealed]
    assert pick_demos(other, ledger) == {}
    changed = json.loads(json.dumps(ledger))
    for run in changed["runs"]:
        for candidate in run["candidates"]:
            candidate["changed_after_seen"] = True
    assert pick_demos(sealed, changed) == {}


def test_every_committed_demo_adapter_has_a_report_of_its_weights_at_serving_length_and_no_flag():
    """What the Space serves from demo/ keeps to the promote rule: each chat adapter there has a report of
    these very weights, made at the serving length, whose stop-rate guard did not trip."""
    from assistant.models import demo_adapters
    from train.card import report_matches
    from train.evaluate.answers import stop_guard

    demos = demo_adapters()
    assert demos
    for demo in map(Path, demos):
        assert report_matches(demo), f"{demo.name}: no report of these weights in eval/"
        report = json.loads((demo / "eval" / "report.json").read_text())
        assert report["settings"]["max_new_tokens"] == 256, demo.name
        assert not stop_guard(report["answers"])["flagged"], f"{demo.name}: flagged by the stop-rate guard"


def test_answers_are_judged_at_serving_length_not_the_training_length():
    """A GRPO recipe's max_completion_length is what it trained at; answers are judged as the apps serve
    them (GenerationSettings' max_new_tokens, the one place for that default)."""
    from assistant.generation import GenerationSettings
    from train.evaluate.inputs import EvalArguments, generation_defaults

    recipe = {"max_completion_length": 48, "temperature": 1.0}
    served = GenerationSettings().max_new_tokens
    assert served == 256
    assert generation_defaults(EvalArguments(output_dir="x"), recipe) == (
        served, 1.0, "temperature from the adapter's recipe"
    )  # fmt: skip
    assert generation_defaults(EvalArguments(output_dir="x", max_new_tokens=64), {})[0] == 64
    from study.run import EVAL_OPTIONS

    assert EVAL_OPTIONS[EVAL_OPTIONS.index("--max-new-tokens") + 1] == str(served)  # the study's too


def test_the_verdict_claims_no_win_without_a_significant_paired_test(evaluated):
    from train.evaluate.report import render_report, verdict

    report = evaluated[1]  # 4 of 4 pairs flipped right: McNemar p = 0.125
    assert report["preference"]["test"]["better"] == 4 and report["preference"]["test"]["worse"] == 0
    first, figures, judge_line = verdict(report).split(". ", 2)
    assert first == (
        "The tuned model does not beat its base at p < 0.05 on held-out preference accuracy or on the "
        "independent judge"
    )
    # by how much, and how sure: each effect with its interval and its paired test, each tree once
    pref, tuned = report["preference"]["base"]["accuracy"], report["preference"]["tuned"]["accuracy"]
    assert figures.startswith(
        f"By how much: held-out preference accuracy {100 * pref['rate']:.0f}% [{100 * pref['ci95'][0]:.0f}, "
        f"{100 * pref['ci95'][1]:.0f}] → {100 * tuned['rate']:.0f}% [{100 * tuned['ci95'][0]:.0f}, "
        f"{100 * tuned['ci95'][1]:.0f}] (items 4 better, 0 worse, p = 0.125)"  # no tree ids in these pairs: items
    )
    assert "; the judge prefers the tuned answer on " in figures and "at equal answer length" in figures
    assert judge_line.startswith("Caution: this judge")  # the judge has not shown skill beyond length
    won = {"better": 30, "worse": 10, "same": 0, "n": 40, "p_value": 0.002}
    equal = {"rate": 0.55, "ci95": [0.4, 0.7], "n": 40}
    judged = {**report, "judge_verdicts": {"per_prompt": {"test": won}, "length_controlled": equal}}
    assert verdict(judged).startswith(
        "The tuned model beats its base at p < 0.05 on the independent judge. At equal answer length the "
        "judge's win rate is 55% [40, 70], so answer length may explain the win."
    )
    assert (
        verdict(judged).count("at equal answer length") + verdict(judged).count("At equal answer length") == 1
    )
    holds = {
        **judged,
        "judge_verdicts": {**judged["judge_verdicts"], "length_controlled": {**equal, "ci95": [0.52, 0.7]}},
    }
    assert "so the win is not only length." in verdict(holds)
    # DPO: the margin is its own objective, and the report and the verdict say so
    dpo = {**report, "adapter": {**report["adapter"], "method": "dpo"}}
    assert "#### Preference accuracy (the DPO objective on held-out pairs" in render_report(dpo)
    assert "held-out preference accuracy (the DPO objective on held-out pairs)" in verdict(dpo)
    # the figures name it so too: a DPO adapter's gain there is its own objective, not evidence
    assert "By how much: held-out preference accuracy (the DPO objective on held-out pairs) " in verdict(dpo)
    assert "no training reward involved" in render_report(report) and "DPO objective" not in render_report(
        report
    )
    # a model that stopped ending its answers is flagged in the report and its verdict
    shares = {"base": 0.5, "tuned": 0.0}
    answers = {side: {**a, "ended_properly": {"rate": shares[side], "ci95": [0, 0.8], "n": 8}}
               for side, a in report["answers"].items()}  # fmt: skip
    stopped = {**report, "answers": answers}
    assert "Flag: the tuned model ends its answers by itself 50 points less often" in verdict(stopped)
    assert "**Flag: the tuned model ends its answers" in render_report(stopped)


def test_sample_selection_is_a_fixed_rule():
    pairs = [
        {"prompt": f"question {k}", "chosen": "a", "rejected": "b", "parent_id": f"id-{k}", "chosen_id": f"c{k}",
         "rejected_id": f"r{k}"}
        for k in range(30)
    ]  # fmt: skip
    pairs.append({**pairs[3], "chosen_id": "other", "rejected_id": "other-r"})  # a second pair of prompt 3
    by_hash = sorted({p["parent_id"] for p in pairs}, key=lambda i: hashlib.sha256(i.encode()).hexdigest())
    picked = [p["parent_id"] for p in pick_samples(pairs, 5)]
    assert picked == by_hash[:5]
    shuffled = pairs[:]
    random.Random(1).shuffle(shuffled)
    assert [p["parent_id"] for p in pick_samples(shuffled, 5)] == picked
    assert [p["parent_id"] for p in pick_samples(shuffled, 3)] == picked[:3]
    assert order_pairs(shuffled) == order_pairs(pairs)


def test_votes_give_the_leaderboard(tmp_path, capsys):
    votes = [
        {
            "type": "vote",
            "id": str(i),
            "mode": "anonymous",
            "model_a": "tuned",
            "model_b": "base",
            "winner": w,
        }
        for i, w in enumerate(["a"] * 6 + ["b"] * 2 + ["tie"])
    ]
    out = tmp_path / "report"
    assert (
        evaluate.main(
            ["--votes", str(write_jsonl(tmp_path / "votes.jsonl", votes)), "--output-dir", str(out)]
        )
        == 0
    )
    board = json.loads((out / "report.json").read_text())["leaderboard"]
    ratings = {m["model"]: m for m in board["models"]}
    assert ratings["tuned"]["rating"] > ratings["base"]["rating"]
    assert "tuned" in (out / "leaderboard.md").read_text()


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


def test_the_reused_tests_record_corrects_every_candidate_it_read():
    """The old sealed test, read 7 times for 6 candidates (study/sealed.json), is reported as a reused
    test: the served adapter's judge win, p = 0.018 alone, is Holm-adjusted over all 6 candidates' judge
    tests (the frozen second round's DPO read included) to 0.070, Benjamini-Hochberg 0.035."""
    from study.reading import holm
    from study.table import reused

    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])  # by hand
    committed = json.loads((ROOT / "study" / "results.json").read_text())
    record = reused(committed["sealed_test"])
    assert record == committed["reused_test"]
    assert (record["reads"], record["candidates"], len(record["judge"])) == (7, 6, 6)
    served = record["judge"]["grpo-whole-anchor"]
    assert served["p_value"] == pytest.approx(0.0175, abs=1e-4)
    assert served["holm"] == pytest.approx(0.0701, abs=1e-4)
    assert served["benjamini_hochberg"] == pytest.approx(0.0351, abs=1e-4)


def test_the_judge_on_content_counts_only_prompts_where_both_answers_are_clean():
    """Content, where endings and loops cannot decide: per prompt, the sample pairs (same seed) whose
    answers both ended by themselves without a loop; a prompt with none is left out. On the committed
    record, the served adapter's reused-test win there is 16 trees to 12 on 43 prompts (p = 0.57)."""
    from train.evaluate.defects import both_clean

    clean = {
        "base": [[True, False], [False, False], [True, True]],
        "tuned": [[True, True], [True, True], [True, True]],
    }
    scores = {"base": [[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]], "tuned": [[1.0, -5.0], [9.0, 9.0], [0.0, 0.5]]}
    result = both_clean(clean, scores, ["a", "b", "c"], 1e-6)
    assert result["prompts"] == 2  # prompt b has no clean pair; sample 2 of prompt a is the base's loop
    assert (result["test"]["better"], result["test"]["worse"]) == (1, 1)  # a: +1; c: mean of -1 and +0.5
    committed = json.loads((ROOT / "study" / "results.json").read_text())
    served = next(r for r in committed["sealed_test"] if r["name"] == "grpo-whole-anchor")["judge"][
        "both_clean"
    ]
    trees = served["test"]["trees"]
    assert (served["prompts"], trees["better"], trees["worse"]) == (43, 16, 12)
    assert served["test"]["p_value"] == pytest.approx(0.572, abs=1e-3)


def test_the_tuned_model_is_set_against_the_decoding_knob_as_well_as_the_base(evaluated):
    """The knob (the base under repetition penalty 1.2, end-of-turn tokens spared) is a baseline the
    tuned model must beat too: its loops, ends and the judge's verdict, overall and where both are clean."""
    from train.evaluate.report import seen

    _, report = evaluated
    knob = report["penalised_base"]
    assert knob["knob"] == {"repetition_penalty": 1.2}
    against = knob["tuned_against_it"]
    assert {"loop", "end", "judge"} <= set(against) and against["loop"]["test"]["n"] == report["pairs"][
        "prompts"
    ]
    assert against["judge"]["both_clean"]["prompts"] <= report["pairs"]["prompts"]
    assert "the base with repetition penalty 1.2 loops" in seen(report)
    assert "Against that knob, the tuned model loops" in seen(report)


def test_an_endpoint_judge_gives_its_verdicts_in_the_same_report(
    setup, judge_dir, tmp_path, monkeypatch, capsys
):
    """--judge-endpoint URL --judge-model NAME: a chat model behind an OpenAI-compatible endpoint (here a
    loopback stand-in that speaks the protocol) judges every answer pair in both orders, beside the
    encoder judge, in report.json and in the verdict; under HF_HUB_OFFLINE it is refused in one line."""
    from huggingface_hub import constants

    from tests._helpers_endpoint import JudgeEndpoint

    argv = ["--adapter", str(setup["adapter"]), "--pairs", str(setup["pairs_file"]), "--output-dir", str(tmp_path / "eval"),
            "--judge", str(judge_dir), "--num-generations", "1", "--batch-size", "4", "--max-new-tokens", "3",
            "--base-repetition-penalty", "0"]  # fmt: skip
    with JudgeEndpoint() as endpoint:
        assert evaluate.main([*argv, "--judge-endpoint", endpoint.url, "--judge-model", "stand-in"]) == 2
        assert "HF_HUB_OFFLINE is set" in capsys.readouterr().err and not endpoint.requests
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the stand-in is on loopback
        assert evaluate.main([*argv, "--judge-endpoint", endpoint.url, "--judge-model", "stand-in"]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    judged = report["endpoint_judge"]
    prompts = report["pairs"]["prompts"]
    assert len(endpoint.requests) == 2 * prompts  # one pair a prompt, both orders
    assert judged["model"] == "stand-in" and judged["per_prompt"]["test"]["n"] == prompts
    assert judged["agreement_with_encoder_judge"]["prompts"] <= prompts
    assert (
        "The endpoint judge `stand-in` (asked in both orders) prefers the tuned answer on"
        in (tmp_path / "eval" / "report.md").read_text()
    )
