"""The Evidence tab's core (``assistant.evidence``) on the committed demo report, and on a minimal report
without the optional fields."""

import json
import shutil

from assistant.evidence import Evidence, comparison_markdown
from assistant.models import demo_dir

NAME = "smollm2-grpo-demo"


def test_the_committed_report_gives_the_verdict_and_every_comparison_with_the_judges_pick():
    folder = demo_dir() / NAME / "eval"
    report = json.loads((folder / "report.json").read_text())
    evidence = Evidence(folder, NAME)
    verdict = evidence.verdict()
    assert verdict.splitlines()[1].startswith("**It does not beat its base beyond chance**")  # first
    diff = report["preference"]["tuned_minus_base"]["accuracy"]
    assert diff["ci95"][0] < 0 < diff["ci95"][1] and f"{diff['mean'] * 100:+.1f} points" in verdict
    assert report["pairs"]["file"] in verdict and "longer reply" in verdict  # the split; the judge's caution
    # Beside the headline, what a reader sees, each with the report's own paired test per tree
    for key, what in (("loop", "It loops"), ("end", "It ends by itself")):
        defect = report["defects"][key]
        trees = defect["test"]["trees"]
        line = next(line for line in verdict.splitlines() if line.startswith(f"- {what} "))
        assert f"{defect['tuned']['rate']:.0%} of answers against {defect['base']['rate']:.0%}" in line
        assert f"trees {trees['better']} better, {trees['worse']} worse" in line
    # The per-prompt picks are the report's own: the same counts as its sign test.
    counts = report["judge_verdicts"]["per_prompt"]["test"]
    assert len(evidence.all) == counts["n"]
    assert (len(evidence.comparisons("better")), len(evidence.comparisons("worse"))) == (
        counts["better"],
        counts["worse"],
    )
    assert [p.name for p in evidence.plots[:2]] == ["margins.png", "judge.png"]
    cut = next(c for c in evidence.all if c.base["ended"] is False)
    head, base, _ = comparison_markdown(cut)
    assert f"Comparison {cut.number}" in head and "cut off at the 256-token limit" in base


def test_a_report_without_optional_fields_still_reads_and_loops_are_marked(tmp_path):
    folder = tmp_path / "adapter" / "eval"
    folder.mkdir(parents=True)
    report = {"preference": {"tuned_minus_base": {"accuracy": {"mean": 0.05, "ci95": [0.01, 0.09]}}}}
    (folder / "report.json").write_text(json.dumps(report))
    looping = "I like it. " + "the cat sat on the mat " * 10
    row = {
        "prompt": [{"role": "user", "content": "Hi?"}],
        "base": [{"answer": "Hello.", "tokens": 2, "ended": True, "judge": 0.1}],
        "tuned": [{"answer": looping, "tokens": 60, "ended": True, "judge": -0.2}],
    }
    (folder / "generations.jsonl").write_text(json.dumps(row) + "\n")
    evidence = Evidence(folder, "adapter")
    assert "**It beats its base**: preference accuracy +5.0 points" in evidence.verdict()
    (c,) = evidence.comparisons("worse")
    assert c.marks("tuned") == ["loops (repeats itself)"] and c.marks("base") == []
    assert evidence.comparisons("better") == [] and evidence.plots == []
    shutil.rmtree(folder.parent)


def test_the_sealed_tests_report_is_the_verdict_where_it_was_read(tmp_path):
    from types import SimpleNamespace

    from assistant.evidence import find

    adapter = tmp_path / "my-adapter"
    report = {"preference": {"tuned_minus_base": {"accuracy": {"mean": 0.0, "ci95": [-0.02, 0.02]}}}}
    for folder in ("eval", "sealed"):
        (adapter / folder).mkdir(parents=True)
        (adapter / folder / "report.json").write_text(json.dumps(report))
    served = SimpleNamespace(adapter=str(adapter))  # what find reads of a loaded model: its adapter path
    assert find(served, "my-adapter") == adapter / "sealed"
    verdict = Evidence(adapter / "sealed", "my-adapter").verdict()
    assert "the study's sealed test" in verdict and "my-adapter/sealed/report.json" in verdict
    shutil.rmtree(adapter / "sealed")
    assert find(served, "my-adapter") == adapter / "eval"


def test_the_evidence_tab_shows_every_plot_and_never_the_checkouts_path():
    """The served demo's Evidence tab, built as the app builds it: its plots reach the page as Gradio's
    own copies, and /config holds no absolute path of the checkout."""
    import json

    import gradio as gr

    from assistant.evidence import Evidence, find
    from assistant.models import PROJECT_ROOT, load_for_serving
    from assistant.service import Assistant
    from space.evidence import build_evidence

    assistant = Assistant(load_for_serving())
    with gr.Blocks() as demo:
        build_evidence(assistant)
    config = demo.get_config_file()
    (gallery,) = [c for c in config["components"] if c.get("type") == "gallery"]
    plots = Evidence(find(assistant.loaded, assistant.tuned_name), assistant.tuned_name).plots
    assert len(plots) >= 2 and len(gallery["props"]["value"]) == len(plots)
    assert str(PROJECT_ROOT) not in json.dumps(config)


def test_the_served_adapters_old_sealed_test_is_shown_as_the_reused_test_it_is():
    """study.run marks the served adapter's sealed report (reused.json): the Evidence tab says how often
    the test was read and gives the judge's win corrected over every candidate it read."""
    evidence = Evidence(demo_dir() / NAME / "sealed", NAME)
    verdict = evidence.verdict()
    reused = json.loads((demo_dir() / NAME / "sealed" / "reused.json").read_text())
    assert (reused["reads"], reused["candidates"]) == (7, 6)
    assert "- **A reused test.** This test was read 7 times for 6 candidates" in verdict
    assert "the judge's win (p = 0.018 alone) is p = 0.070 (Holm; Benjamini-Hochberg 0.035)" in verdict
    assert (
        "Where both answers are clean (ended by themselves, no loop), on 43 prompts, the judge prefers the "
        "tuned answer on 58% (trees 16 better, 12 worse, p = 0.57)" in verdict
    )
    assert "read once" not in verdict
