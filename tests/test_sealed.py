"""The sealed test's ledger: counting, recording, refusing. On real files: the study's recipes and the
sealed test built from the real Open Assistant subsets committed in tests/data."""

import json
import shutil

import pytest

from study import run as study
from study import sealed
from tests._helpers_data import OASST1_EN, SAMPLE
from train.data.splits import write_splits
from train.evaluate.ledger import ledger_line


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


def info(name):
    return {"adapter_sha256": f"weights-of-{name}", "report": f"outputs/study/{name}/sealed/report.md"}


def start(path, recipes, names, test_file, record_changed=False):
    return sealed.record_start(path, names, shas(recipes, names), record_changed, info, test_file)


def test_a_run_is_recorded_before_the_test_is_read_and_counted(tmp_path, recipes, test_file):
    path = tmp_path / "sealed.json"
    run = start(path, recipes, ["dpo", "grpo-tuned"], test_file)
    on_disk = json.loads(path.read_text())
    assert on_disk["runs"] == [run] and on_disk["evaluations"] == 2
    assert on_disk["candidates"] == ["dpo", "grpo-tuned"]
    assert run["finished"] is False  # written before the evaluation: the test counts as read from here
    assert run["test_sha256"] == sealed.sha256(test_file)
    assert run["candidates"][0]["recipe_sha256"] == sealed.sha256(recipes / "dpo.yaml")
    assert run["ran_at"].endswith("+00:00")
    sealed.record_finish(path, run)
    assert json.loads(path.read_text())["runs"][0]["finished"] is True


def test_two_runs_that_overlap_both_stay_on_record(tmp_path, recipes, test_file):
    """The first run finishes after a second one started: both stay, and only the first is finished;
    runs started at once from several threads (each its own lock) are all recorded."""
    path = tmp_path / "sealed.json"
    first = start(path, recipes, ["dpo"], test_file)
    second = start(path, recipes, ["grpo-tuned"], test_file)
    sealed.record_finish(path, first)
    ledger = json.loads(path.read_text())
    assert [r["candidates"][0]["name"] for r in ledger["runs"]] == ["dpo", "grpo-tuned"]
    assert [r["finished"] for r in ledger["runs"]] == [True, False] and ledger["evaluations"] == 2
    assert second in [{**r, "finished": False} for r in ledger["runs"]]

    from concurrent.futures import ThreadPoolExecutor

    crowd = tmp_path / "crowd.json"
    names = [f"candidate-{i}" for i in range(12)]
    with ThreadPoolExecutor(6) as pool:
        runs = list(
            pool.map(lambda n: sealed.record_start(crowd, [n], {n: n}, False, info, test_file), names)
        )
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda run: sealed.record_finish(crowd, run), runs))
    ledger = json.loads(crowd.read_text())
    assert ledger["evaluations"] == 12 and ledger["candidates"] == sorted(names)
    assert all(run["finished"] for run in ledger["runs"])


def test_a_candidate_is_read_once(tmp_path, recipes, test_file):
    path = tmp_path / "sealed.json"
    start(path, recipes, ["dpo"], test_file)
    with pytest.raises(
        sealed.SealedError, match="dpo: already evaluated on the sealed test on .* it is read once"
    ):
        start(path, recipes, ["dpo"], test_file)
    # a new candidate still may be evaluated, and counts
    start(path, recipes, ["grpo-tuned"], test_file)
    assert json.loads(path.read_text())["evaluations"] == 2


def test_a_run_stopped_before_its_report_may_be_finished_on_record_once(tmp_path, recipes, test_file):
    """Interrupted (no report written): refused by default, run again with finish_interrupted, which the
    ledger counts as a read too and marks; once that run finished, the candidate is refused again."""
    path = tmp_path / "sealed.json"
    first = start(path, recipes, ["dpo"], test_file)
    with pytest.raises(sealed.SealedError, match="it is read once; it stopped before its report"):
        start(path, recipes, ["dpo"], test_file)
    again = sealed.record_start(path, ["dpo"], shas(recipes, ["dpo"]), False, info, test_file, True)
    assert again["candidates"][0]["resumes"] == first["ran_at"]
    assert json.loads(path.read_text())["evaluations"] == 2  # both reads are on record
    sealed.record_finish(path, again)
    with pytest.raises(sealed.SealedError, match="it is read once$"):
        sealed.record_start(path, ["dpo"], shas(recipes, ["dpo"]), False, info, test_file, True)


def test_a_changed_recipe_is_refused_unless_the_change_is_recorded(tmp_path, recipes, test_file):
    path = tmp_path / "sealed.json"
    start(path, recipes, ["dpo"], test_file)
    (recipes / "dpo.yaml").write_text((recipes / "dpo.yaml").read_text() + "learning_rate: 1.0e-3\n")
    before = path.read_bytes()
    with pytest.raises(sealed.SealedError, match="dpo: its recipe changed after the sealed test saw it"):
        start(path, recipes, ["dpo"], test_file)
    assert path.read_bytes() == before  # a refusal records nothing
    run = start(path, recipes, ["dpo"], test_file, record_changed=True)
    ledger = json.loads(path.read_text())
    assert run["candidates"][0]["changed_after_seen"] is True
    assert ledger["evaluations"] == 2 and ledger["candidates"] == ["dpo"]
    assert ledger["runs"][0]["candidates"][0]["changed_after_seen"] is False


def test_a_broken_ledger_is_an_error_never_a_fresh_start(tmp_path):
    path = tmp_path / "sealed.json"
    path.write_text("{not json")
    with pytest.raises(sealed.SealedError, match="not a sealed-test ledger"):
        sealed.read_ledger(path)


def test_the_committed_ledger_reads():
    path = study.ROOT / sealed.LEDGER  # from the checkout, whatever folder the tests run from
    assert path.is_file(), f"{path} is missing: the record of every sealed read is committed"
    ledger = sealed.read_ledger(path)
    assert ledger["runs"] and ledger["evaluations"] == sum(len(r["candidates"]) for r in ledger["runs"])


def test_the_command_refuses_in_one_line_before_loading_anything(capsys, tmp_path):
    ledger = study.ROOT / sealed.LEDGER
    before = ledger.read_bytes() if ledger.exists() else None
    assert sealed.main(["no-such-candidate"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert (ledger.read_bytes() if ledger.exists() else None) == before


def test_train_evaluate_refuses_the_sealed_test_unless_study_sealed_runs_it(
    test_file, tmp_path, recipes, monkeypatch
):
    """By content, not by name: a renamed copy, or a file holding one sealed pair, is the sealed test;
    and --sealed reads it only for an adapter that a ledger run has open, so every read is on record."""
    from dataclasses import replace

    from train.evaluate import inputs
    from train.evaluate import ledger as ledger_module
    from train.evaluate.inputs import EvalArguments, EvalError, check_args
    from train.identity import file_sha256

    monkeypatch.setattr(inputs, "SEALED_TEST", test_file)
    monkeypatch.setattr(ledger_module, "LEDGER", tmp_path / "sealed.json")
    adapter = "demo/smollm2-grpo-demo"
    args = EvalArguments(output_dir=str(tmp_path / "eval"), adapter=adapter, pairs=str(test_file))
    refused = "a sealed test .* whatever the file is called; only python -m study.sealed evaluates on it"
    with pytest.raises(EvalError, match=refused):
        check_args(args)
    dev = test_file.parent / "dev.jsonl"
    check_args(replace(args, pairs=str(dev)))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    copy = shutil.copy(test_file, elsewhere / "held-out.jsonl")
    mixed = elsewhere / "mixed.jsonl"
    mixed.write_text(dev.read_text() + test_file.read_text().splitlines(keepends=True)[3])
    for path in (copy, mixed):
        with pytest.raises(EvalError, match=refused):
            check_args(replace(args, pairs=str(path)))
    assert sealed.content_sha256(copy) == sealed.content_sha256(test_file)

    with pytest.raises(EvalError, match="the ledger has no open run of python -m study.sealed"):
        check_args(replace(args, sealed=True))
    weights = file_sha256(study.ROOT / adapter / "adapter_model.safetensors")
    opened = sealed.record_start(
        tmp_path / "sealed.json", ["demo"], {"demo": "r"}, False,
        lambda n: {"adapter_sha256": weights, "report": "x"}, test_file,
    )  # fmt: skip
    check_args(replace(args, pairs=str(copy), sealed=True))  # on record: the run is open
    sealed.record_finish(tmp_path / "sealed.json", opened)
    with pytest.raises(EvalError, match="no open run"):
        check_args(replace(args, sealed=True))


def test_the_ledger_line_says_how_often_the_test_was_read(tmp_path, recipes, test_file):
    path = tmp_path / "sealed.json"
    assert "has not been read" in ledger_line(path)
    start(path, recipes, ["dpo", "grpo-tuned"], test_file)
    assert "has evaluated 2 candidate(s) in 1 run(s) (dpo, grpo-tuned;" in ledger_line(path)


def test_the_studys_evaluations_run_at_serving_length():
    from transformers import HfArgumentParser

    from train.evaluate.inputs import EvalArguments

    argv = [*study.EVAL_OPTIONS, "--adapter", "demo/smollm2-grpo-demo", "--output-dir", "x"]
    (args,) = HfArgumentParser(EvalArguments).parse_args_into_dataclasses(argv)
    assert args.max_new_tokens == 256 and args.base_cache == str(study.BASE_CACHE)


def test_keeping_a_sealed_report_leaves_the_kept_dev_reports_as_they_are(tmp_path, monkeypatch):
    import study.run as run

    monkeypatch.setattr(run, "ROOT", tmp_path)
    made, kept = tmp_path / run.RUNS / "cand", tmp_path / run.KEPT / "cand"
    for folder, text in ((made / "eval", "stale"), (made / "sealed", "sealed"), (kept / "eval", "re-judged")):
        folder.mkdir(parents=True)
        (folder / "report.md").write_text(text)
    (kept / "sealed").mkdir()
    (kept / "sealed" / "old.md").write_text("an earlier sealed report")
    run.keep("cand", "sealed")
    assert (kept / "eval" / "report.md").read_text() == "re-judged"  # study.sealed keeps only its report
    assert [p.name for p in (kept / "sealed").iterdir()] == ["report.md"]
    assert (kept / "sealed" / "report.md").read_text() == "sealed"
