"""Our model card: rendered from a real training output folder, and written over PEFT's."""

import json
import shutil
import subprocess
import sys

import pytest
from huggingface_hub import ModelCard

from tests._helpers_card import add_eval, build_training_output, tiny_lora
from train.card import CardError, render_card, write_card
from train.evaluate.length import length_baselines
from train.evaluate.stats import rate

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def output_dir(tmp_path_factory, tiny_phi_dir, sample_path):
    out = tmp_path_factory.mktemp("run") / "phi2-grpo"
    build_training_output(out, tiny_phi_dir, sample_path)
    return out


@pytest.fixture
def run(output_dir, tmp_path):
    """A private copy of the output folder, for tests that change it."""
    copy = tmp_path / output_dir.name
    shutil.copytree(output_dir, copy)
    return copy


def test_metadata(output_dir):
    card = ModelCard.load(write_card(output_dir))
    data = card.data
    assert data.base_model == "microsoft/phi-2"
    assert data.library_name == "peft"
    assert data.datasets == ["OpenAssistant/oasst2"]  # the pairs came from the local oasst2 sample
    assert data.language == ["en"]  # every pair of the sample that train.data kept is English
    assert data.license == "mit"
    assert data.pipeline_tag == "text-generation"
    assert {"trl", "grpo", "lora", "qlora"} <= set(data.tags)
    assert "dpo" not in data.tags


def test_body_reports_the_real_run(output_dir, tiny_phi_dir):
    text = render_card(output_dir).text
    stats = json.loads((output_dir / "data_stats.json").read_text())
    info = json.loads((output_dir / "training_info.json").read_text())

    # The trainable parameter count is the one PEFT computes for this very adapter.
    model, _ = tiny_lora(tiny_phi_dir, "microsoft/phi-2")
    trainable, _ = model.get_nb_trainable_parameters()
    assert info["trainable_params"] == trainable
    assert f"| Trainable parameters | {trainable:,} (" in text

    # Data counts from train.data's stats, hyper-parameters from the recipe, plots by relative link.
    assert f"| train / pairs | {stats['train']['pairs']:,} |" in text
    assert f"| trees_skipped / language | {stats['trees_skipped']['language']:,} |" in text
    assert "| `learning_rate` | 5e-06 |" in text
    assert "| `lora_target_modules` | q_proj, k_proj, v_proj, dense |" in text
    assert "| `preference` | 1 |" in text
    assert "![Reward](plots/reward.png)" in text
    assert "| `reward` | 0.1 | 0.3 | 0.2 |" in text  # first tenth, last tenth, the one pass
    assert "- no GPU: bf16/fp16 mixed precision off" in text and "- trl 1.16.0" in text

    # Usage: from the Hub with PEFT, prompts through the adapter's own chat template.
    assert 'AutoModelForCausalLM.from_pretrained("microsoft/phi-2"' in text
    assert "PeftModel.from_pretrained(base, adapter)" in text
    assert "tokenizer.apply_chat_template(" in text
    assert "## Limitations" in text
    # A path on the training machine is no use to a reader (and not theirs to see).
    assert "/home/someone" not in text and "train.jsonl" in text


def test_evaluation_section_iff_report(run):
    assert "## Evaluation" not in render_card(run).text
    assert "## Does it beat its base?" not in render_card(run).text
    add_eval(run)
    text = render_card(run).text
    assert "## Evaluation" in text
    # the answer a reader comes for, before the details
    assert text.index("## Does it beat its base?") < text.index("## Model details")
    assert "\n### Held-out pairs\n\n#### Evaluation: base vs tuned\n" in text  # nested under the card's
    assert (
        "- *Held-out pairs* (20 prompts of `dev.jsonl`, the dev split, where the study chooses among "
        "candidates (a choice, not a proof)): The tuned "
        "model beats its base at p < 0.05 on held-out preference accuracy.\n" in text
    )
    assert "\n##### Generation quality\n" in text
    assert "Tuned wins **60%** of 20 held-out prompts." in text
    assert "![Win rate](eval/win_rate.png)" in text  # its links rebased from eval/ to the root
    assert "[samples.md](eval/samples.md)" in text
    assert "![Lengths](eval/lengths.png)" in text  # its other plots are shown too
    assert text.count("eval/win_rate.png") == 1


def test_the_sealed_test_leads_and_the_warm_start_comparison_is_told(run):
    add_eval(run)
    add_eval(run, "sealed")
    (run / "sealed" / "versus.json").write_text(
        json.dumps({"summary": "`a` against `b`: the judge prefers `a`"})
    )
    text = render_card(run).text
    sealed, dev = text.index("- *Sealed test* (20 prompts of `test.jsonl`"), text.index("- *Held-out pairs*")
    assert sealed < dev < text.index("\n### Sealed test\n") < text.index("\n### Held-out pairs\n")
    assert "Against its warm start: `a` against `b`: the judge prefers `a`." in text
    assert "![Win rate](sealed/win_rate.png)" in text and "![Win rate](eval/win_rate.png)" in text
    assert text.count("sealed/lengths.png") == 1 and "[samples.md](sealed/samples.md)" in text
    # once read again for other candidates (study.run writes reused.json), the card says so
    reused = {"reads": 7, "candidates": 6, "designs_after_reads": "a gate set after a read", "family": 6,
              "ledger": "study/sealed.json", "judge": {"p_value": 0.0175, "holm": 0.0701, "benjamini_hochberg": 0.0351}}  # fmt: skip
    (run / "sealed" / "reused.json").write_text(json.dumps(reused))
    text = render_card(run).text
    assert (
        "- *Reused test* (20 prompts of `test.jsonl`, the study's old sealed test, a reused test now: read 7 "
        "times for 6 candidates, and later designs were made after earlier reads (a gate set after a read"
        in text
    )
    assert (
        "of all 6 candidates this test read, the judge's win is p = 0.070 (Holm; Benjamini-Hochberg p = 0.035)"
        in text
    )
    assert "\n### Reused test\n" in text and "Sealed test" not in text


def test_a_report_of_other_weights_is_refused(run, capsys):
    """Training again into a folder with an old eval/: the old numbers must not reach the card."""
    add_eval(run)
    weights = run / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes() + b" retrained")
    text = render_card(run).text
    assert "## Evaluation" not in text and "Tuned wins" not in text
    assert "not a report of this adapter" in capsys.readouterr().out


def test_report_headings_shift_under_the_card(run):
    add_eval(run)
    (run / "eval" / "report.md").write_text(
        "# Results\n\n## Accuracy\n\nSee [the site](https://x.org/a.png).\n"
    )
    text = render_card(run).text
    assert "\n#### Results\n" in text and "\n##### Accuracy\n" in text
    assert "[the site](https://x.org/a.png)" in text  # absolute links stay as they are


def test_repo_id_names_the_adapter_in_usage(output_dir):
    assert 'adapter = "phi2-grpo"' in render_card(output_dir).text
    assert "replace `phi2-grpo`" in render_card(output_dir).text
    text = render_card(output_dir, repo_id="someone/phi-2-oasst1-grpo").text
    assert 'adapter = "someone/phi-2-oasst1-grpo"' in text
    assert "replace `" not in text
    assert text.startswith("\n# phi-2-oasst1-grpo") or "# phi-2-oasst1-grpo\n" in text


def test_description_method_and_demo_base(run):
    info = json.loads((run / "training_info.json").read_text())
    info.update(
        method="dpo",
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        precision="fp32",
        description="CPU demo: SmolLM2-135M-Instruct, 3 steps on 43 pairs. Not the tuned Phi-2.",
    )
    (run / "training_info.json").write_text(json.dumps(info))
    (run / "recipe.yaml").write_text("method: dpo\nload_in_4bit: false\n")
    stats = json.loads((run / "data_stats.json").read_text())
    (run / "data_stats.json").write_text(
        json.dumps({**stats, "source": "OpenAssistant/oasst1", "sources": ["OpenAssistant/oasst1"]})
    )
    card = render_card(run)
    assert card.data.datasets == ["OpenAssistant/oasst1"]
    assert "> **CPU demo: SmolLM2-135M-Instruct, 3 steps on 43 pairs. Not the tuned Phi-2.**" in card.text
    assert "| Method | DPO (dpo) with TRL |" in card.text
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card.data.license == "apache-2.0"
    assert "dpo" in card.data.tags and "qlora" not in card.data.tags and "grpo" not in card.data.tags


def test_optional_files_missing(run):
    for name in ("recipe.yaml", "data_stats.json", "metrics.jsonl", "adapter_config.json"):
        (run / name).unlink()
    shutil.rmtree(run / "plots")
    (run / "training_info.json").write_text(json.dumps({"method": "grpo", "base_model": "microsoft/phi-2"}))
    card = ModelCard.load(write_card(run))
    assert card.data.base_model == "microsoft/phi-2" and card.data.language == ["en"]
    assert "| Trainable parameters | not recorded |" in card.text
    assert "data counts are not recorded" in card.text
    assert "Training curves" not in card.text


def test_written_over_peft_card(run, tiny_phi_dir):
    ours = write_card(run).read_text()
    # PEFT's save_pretrained edits README.md: base_model becomes the local folder, our tags go.
    model, _ = tiny_lora(tiny_phi_dir, "microsoft/phi-2")
    model.save_pretrained(run)
    peft_card = ModelCard.load(run / "README.md")
    assert peft_card.data.base_model == str(tiny_phi_dir)
    assert "trl" not in (peft_card.data.tags or [])
    # Written last, ours is back, whole.
    assert write_card(run).read_text() == ours
    assert not list(run.glob(".README.*"))  # no temp file left behind


def test_missing_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(CardError, match="no training output folder"):
        render_card(tmp_path / "nope")
    with pytest.raises(CardError, match="training_info.json is missing"):
        render_card(tmp_path)
    (tmp_path / "training_info.json").write_text("[1, 2]")
    with pytest.raises(CardError, match="not a JSON object"):
        render_card(tmp_path)
    assert not (tmp_path / "README.md").exists()


def test_cli(run, tmp_path):
    (run / "README.md").unlink(missing_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "train.card", str(run), "--repo-id", "someone/x"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert 'adapter = "someone/x"' in (run / "README.md").read_text()

    done = subprocess.run(
        [sys.executable, "-m", "train.card", str(tmp_path / "missing")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: no training output folder at")
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_the_card_says_what_length_and_stopping_explain(run):
    """The card's verdict carries the length-controlled judge win, the judge's weakness beside length,
    the stop-rate flag, and for DPO that the margin is its own objective."""
    add_eval(run)
    path = run / "eval" / "report.json"
    report = json.loads(path.read_text())
    pairs = [
        {"chosen": "x" * (10 + 40 * (i % 2)), "rejected": "x" * 30, "tree_id": f"t{i}"} for i in range(20)
    ]
    right = [i % 2 == 1 for i in range(20)]  # the judge picks exactly the longer reply: length, nothing more
    report["adapter"]["method"] = "dpo"
    report["judge"] = {
        "name": "judge",
        "accuracy": {**rate(right), "baselines": length_baselines(pairs, right)},
    }
    report["judge_verdicts"] = {
        "per_prompt": {"test": {"better": 30, "worse": 10, "same": 0, "n": 40, "p_value": 0.002}},
        "length_controlled": {"rate": 0.52, "ci95": [0.35, 0.69], "n": 40},
    }
    report["answers"] = {
        "base": {"ended_properly": rate([1] * 5 + [0] * 75)},
        "tuned": {"ended_properly": rate([0] * 80)},
    }
    path.write_text(json.dumps(report))
    verdict = render_card(run).text.split("(a choice, not a proof)): ", 1)[1].split("\n", 1)[0]
    assert verdict.startswith(
        "The tuned model beats its base at p < 0.05 on held-out preference accuracy (the DPO objective on "
        "held-out pairs) and on the independent judge. At equal answer length the judge's win rate is "
        "52% [35, 69], so answer length may explain the win."
    )
    assert (
        'Caution: this judge does not beat "the longer reply wins" (50% [30, 70] against 50% [30, 70])'
        in verdict
    )
    assert "Flag: the tuned model ends its answers by itself 6 points less often" not in verdict  # 6 < 10
    report["answers"]["base"]["ended_properly"] = rate([1] * 20 + [0] * 60)  # 25% -> 0%: 25 points
    path.write_text(json.dumps(report))
    assert (
        "Flag: the tuned model ends its answers by itself 25 points less often than its base (0% against 25%"
        in (render_card(run).text)
    )


def test_a_resumed_run_says_its_time_is_the_last_part_only(run):
    assert "| Training time | 0.7 min |" in render_card(run).text
    info = json.loads((run / "training_info.json").read_text())
    info["resumed_from"] = str(run / "checkpoint-20")
    (run / "training_info.json").write_text(json.dumps(info))
    assert (
        "| Training time | 0.7 min (after resuming from checkpoint-20: that part only) |"
        in render_card(run).text
    )


def test_the_card_says_how_often_each_model_loops_and_ends(run):
    """Loops and ends of base → tuned with their paired exact test, and the base under a repetition
    penalty beside them, are in the card's verdict (from report.json, as train.evaluate writes them)."""
    from assistant.generation import Answer
    from train.evaluate.defects import compare

    add_eval(run)
    path = run / "eval" / "report.json"
    report = json.loads(path.read_text())
    loop = Answer(text="over and over " * 20, ended=False, cut=False, tokens=40, adapter="x")
    ends = Answer(text="It is Paris, the capital of France.", ended=True, cut=False, tokens=9, adapter="x")
    base, tuned = [[loop]] * 8 + [[ends]] * 2, [[ends]] * 10
    trees = [f"t{i}" for i in range(10)]
    report["defects"] = compare(base, tuned, trees)
    report["penalised_base"] = {
        "repetition_penalty": 1.2,
        **compare(base, [[loop]] * 6 + [[ends]] * 4, trees, ("base", "penalised")),
    }
    path.write_text(json.dumps(report))
    verdict = render_card(run).text.split("(a choice, not a proof)): ", 1)[1].split("\n", 1)[0]
    assert "What a reader sees: the tuned model loops 80% [" in verdict
    assert "(prompts 8 fewer, 0 more, exact paired test p = 0.008)" in verdict
    assert "the base with repetition penalty 1.2 loops 80% [" in verdict
