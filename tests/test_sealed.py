"""The sealed test's ledger: counting, recording, refusing. On real files: the study's recipes and the
sealed test built from the real Open Assistant subsets committed in tests/data."""

import json
import shutil

import pytest

from study import run as study
from study import sealed
from study.ledger import ledger_line
from tests._helpers_data import OASST1_EN, SAMPLE
from train.data.splits import write_splits


@pytest.fixture(scope="module")
def test_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("splits")
    write_splits(out, [str(OASST1_EN), str(SAMPLE)], depth="all", eval_fraction=0.25, test_fraction=0.25)
    return out / "test.jsonl"


@pytest.fixture
def recipes(tmp_path):
    folder = tmp_path / "recipes"
    folder.mkdir()
    for name in ("dpo", "grpo-tuned"):
        shutil.copy(study.ROOT / "recipes/study" / f"{name}.yaml", folder)
    return folder


def shas(recipes, names):
    return {n: sealed.sha256(sealed.recipe_file(n, recipes.parent / "runs", recipes)) for n in names}


def evaluate_once(path, recipes, names, record_changed=False):
    ledger = sealed.read_ledger(path)
    candidates = sealed.plan(ledger, names, shas(recipes, names), record_changed)
    candidates = [{**c, "report": f"outputs/study/{c['name']}/sealed/report.md"} for c in candidates]
    return candidates, ledger


def test_a_run_is_recorded_before_the_test_is_read_and_counted(tmp_path, recipes, test_file):
    path = tmp_path / "sealed.json"
    candidates, ledger = evaluate_once(path, recipes, ["dpo", "grpo-tuned"])
    ledger = sealed.record_start(path, ledger, candidates, test_file)
    on_disk = json.loads(path.read_text())
    assert (
        on_disk == ledger and on_disk["evaluations"] == 2 and on_disk["candidates"] == ["dpo", "grpo-tuned"]
    )
    run = on_disk["runs"][0]
    assert run["finished"] is False  # written before the evaluation: the test counts as read from here
    assert run["test_sha256"] == sealed.sha256(test_file)
    assert run["candidates"][0]["recipe_sha256"] == sealed.sha256(recipes / "dpo.yaml")
    assert run["ran_at"].endswith("+00:00")
    sealed.record_finish(path, ledger)
    assert json.loads(path.read_text())["runs"][0]["finished"] is True


def test_a_candidate_is_read_once(tmp_path, recipes, test_file):
    path = tmp_path / "sealed.json"
    candidates, ledger = evaluate_once(path, recipes, ["dpo"])
    sealed.record_start(path, ledger, candidates, test_file)
    with pytest.raises(
        sealed.SealedError, match="dpo: already evaluated on the sealed test on .* it is read once"
    ):
        evaluate_once(path, recipes, ["dpo"])
    # a new candidate still may be evaluated, and counts
    candidates, ledger = evaluate_once(path, recipes, ["grpo-tuned"])
    assert sealed.record_start(path, ledger, candidates, test_file)["evaluations"] == 2


def test_a_changed_recipe_is_refused_unless_the_change_is_recorded(tmp_path, recipes, test_file):
    path = tmp_path / "sealed.json"
    candidates, ledger = evaluate_once(path, recipes, ["dpo"])
    sealed.record_start(path, ledger, candidates, test_file)
    (recipes / "dpo.yaml").write_text((recipes / "dpo.yaml").read_text() + "learning_rate: 1.0e-3\n")
    before = path.read_bytes()
    with pytest.raises(sealed.SealedError, match="dpo: its recipe changed after the sealed test saw it"):
        evaluate_once(path, recipes, ["dpo"])
    assert path.read_bytes() == before  # a refusal records nothing
    candidates, ledger = evaluate_once(path, recipes, ["dpo"], record_changed=True)
    ledger = sealed.record_start(path, ledger, candidates, test_file)
    assert ledger["runs"][-1]["candidates"][0]["changed_after_seen"] is True
    assert ledger["evaluations"] == 2 and ledger["candidates"] == ["dpo"]
    assert ledger["runs"][0]["candidates"][0]["changed_after_seen"] is False


def test_a_broken_ledger_is_an_error_never_a_fresh_start(tmp_path):
    path = tmp_path / "sealed.json"
    path.write_text("{not json")
    with pytest.raises(sealed.SealedError, match="not a sealed-test ledger"):
        sealed.read_ledger(path)


def test_the_committed_ledger_reads(tmp_path):
    if sealed.LEDGER.exists():
        ledger = sealed.read_ledger(study.ROOT / sealed.LEDGER)
        assert ledger["evaluations"] == sum(len(r["candidates"]) for r in ledger["runs"])


def test_the_command_refuses_in_one_line_before_loading_anything(capsys, tmp_path):
    ledger = study.ROOT / sealed.LEDGER
    before = ledger.read_bytes() if ledger.exists() else None
    assert sealed.main(["no-such-candidate"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert (ledger.read_bytes() if ledger.exists() else None) == before


def test_train_evaluate_refuses_the_sealed_test_unless_study_sealed_runs_it(test_file, tmp_path):
    from dataclasses import replace

    from train.evaluate.inputs import EvalArguments, EvalError, check_args

    args = EvalArguments(
        output_dir=str(tmp_path / "eval"), adapter="demo/smollm2-grpo-demo", pairs=str(test_file)
    )
    with pytest.raises(EvalError, match="a sealed test .* only python -m study.sealed evaluates on it"):
        check_args(args)
    check_args(replace(args, pairs=str(test_file.parent / "dev.jsonl")))
    check_args(replace(args, sealed=True))


def test_the_ledger_line_says_how_often_the_test_was_read(tmp_path, recipes, test_file):
    path = tmp_path / "sealed.json"
    assert "has not been read" in ledger_line(path)
    candidates, ledger = evaluate_once(path, recipes, ["dpo", "grpo-tuned"])
    sealed.record_start(path, ledger, candidates, test_file)
    assert "has evaluated 2 candidate(s) in 1 run(s) (dpo, grpo-tuned;" in ledger_line(path)


def test_the_studys_evaluations_run_at_serving_length():
    from transformers import HfArgumentParser

    from train.evaluate.inputs import EvalArguments

    argv = [*study.EVAL_OPTIONS, "--adapter", "demo/smollm2-grpo-demo", "--output-dir", "x"]
    (args,) = HfArgumentParser(EvalArguments).parse_args_into_dataclasses(argv)
    assert args.max_new_tokens == 256 and args.base_cache == str(study.RUNS / "base-cache")
