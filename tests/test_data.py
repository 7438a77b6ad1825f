"""train/data.py: oasst (Hub id, flat table, trees export) -> preference pairs."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests._helpers_data import (
    MINI_FLAT_FILE,
    MINI_TREES_FILE,
    OASST1_EN,
    SAMPLE,
    a,
    flat_to_trees,
    full_data,
    message,
    mini_trees,
    read_trees,
    tree,
    trees_to_flat,
    walk,
    write_jsonl,
    write_parquet,
)
from train import data
from train.data import PAIR_KEYS, DataError, build_pairs, load_pairs, main, write_pairs

ROOT = Path(__file__).resolve().parents[1]
ALL_IN_TRAIN = {"eval_fraction": 0.0}

# The outcome of tests/fixtures/data_mini.* for English, best first (see the comments in _helpers_data).
EXPECTED_EN = [
    ("t18", "rank", "t18-a0", "t18-a4"),  # rank gap 4
    ("t01", "rank", "t01-a0", "t01-a2"),  # rank gap 2, beats the most liked a2
    ("t05", "rank", "t05-a0", "t05-a1"),  # gap 1, 2 ranked: tree id decides among these
    ("t07", "rank", "t07-a1", "t07-a2"),
    ("t08", "rank", "t08-a1", "t08-a2"),
    ("t17", "rank", "t17-a0", "t17-a1"),
    ("t20", "rank", "t20-a0", "t20-a1"),
    ("t15", "likes", "t15-a0", "t15-a1"),  # likes gap 10
    ("t02", "likes", "t02-a1", "t02-a0"),  # likes gap 4
    ("t16", "likes", "t16-a0", "t16-a2"),  # gap 2, 3 replies compared
    ("t06", "likes", "t06-a2", "t06-a0"),  # gap 2, 2 replies compared
]


def outcome(pairs):
    return [(p["tree_id"], p["rule"], p["chosen_id"], p["rejected_id"]) for p in pairs]


@pytest.fixture(scope="module")
def mini_forms(tmp_path_factory) -> dict[str, Path]:
    """The mini fixture in every form a source can take."""
    tmp = tmp_path_factory.mktemp("mini")
    rows = trees_to_flat(mini_trees())
    gz = tmp / "mini.trees.jsonl.gz"
    gz.write_bytes(gzip.compress(MINI_TREES_FILE.read_bytes()))
    plain_name = tmp / "export.jsonl"  # trees, detected from the nested "prompt", not the name
    plain_name.write_bytes(MINI_TREES_FILE.read_bytes())
    folder = tmp / "flat_folder"  # a folder of flat parts with no split names
    write_parquet(rows[:30], folder / "part-0.parquet")
    write_jsonl(rows[30:], folder / "part-1.jsonl")
    return {
        "trees": MINI_TREES_FILE,
        "trees_gz": gz,
        "trees_by_content": plain_name,
        "flat_jsonl": MINI_FLAT_FILE,
        "flat_parquet": write_parquet(rows, tmp / "mini.parquet"),
        "flat_folder": folder,
    }


# ---------------------------------------------------------------- fixtures stay what the generator says


def test_committed_fixtures_match_their_generator():
    assert read_trees(MINI_TREES_FILE) == json.loads(json.dumps(mini_trees()))
    assert read_trees(MINI_FLAT_FILE) == json.loads(json.dumps(trees_to_flat(mini_trees())))


# ---------------------------------------------------------------- rules


def test_rules_on_the_mini_fixture():
    train, evaluation, stats = build_pairs(MINI_TREES_FILE, **ALL_IN_TRAIN)
    assert outcome(train) == EXPECTED_EN
    assert evaluation == []
    assert stats["trees_skipped"] == {
        "fewer_than_two_replies": 2,  # t09 (one live reply), t19 (none)
        "language": 2,  # t12 de, t13 pt-BR
        "no_preference": 2,  # t03 equal likes, t04 no emojis and no ranks
        "prompt_deleted": 1,  # t10
        "prompt_failed_review": 1,  # t11
        "prompt_too_short": 1,  # t14 "Hi"
    }
    assert stats["messages_skipped"] == {
        "deleted": 3,
        "failed_review": 1,
        "not_assistant": 1,
        "reply_too_short": 1,
    }
    assert stats["trees"] == 20 == sum(stats["trees_skipped"].values()) + stats["candidates"]["total"]
    assert stats["candidates"] == {"total": 11, "trees": 11, "rank": 7, "likes": 4}
    assert stats["train"] == {
        "pairs": 11,
        "rank": 7,
        "likes": 4,
        "trees": 11,
        "languages": {"en": 11},
        "depths": {"0": 11},
    }
    assert stats["trees_by_state"] == {"ready_for_export": 20}


def test_pair_contents_and_provenance():
    train, _, _ = build_pairs(MINI_TREES_FILE, **ALL_IN_TRAIN)
    by_tree = {p["tree_id"]: p for p in train}
    t01 = by_tree["t01"]
    assert list(t01) == list(PAIR_KEYS)
    assert t01 == {
        "prompt": "How do rainbows form?",
        "chosen": "Answer 0 to t01, written with care.",
        "rejected": "Answer 2 to t01, written with care.",
        "tree_id": "t01",
        "prompt_id": "t01",
        "parent_id": "t01",
        "depth": 0,
        "chosen_id": "t01-a0",
        "rejected_id": "t01-a2",
        "lang": "en",
        "chosen_rank": 0,
        "rejected_rank": 2,
        "chosen_likes": 0,
        "rejected_likes": 9,
        "rule": "rank",
    }
    # likes rule: "-1" and other emojis are not likes; an unranked side has rank None
    t15 = by_tree["t15"]
    assert (t15["chosen_likes"], t15["rejected_likes"], t15["chosen_rank"], t15["rejected_rank"]) == (
        10,
        0,
        None,
        None,
    )
    # one ranked reply is no ranking: likes decide between the ranked and the unranked reply
    t06 = by_tree["t06"]
    assert (t06["chosen_rank"], t06["chosen_likes"], t06["rejected_rank"], t06["rejected_likes"]) == (
        None,
        3,
        0,
        1,
    )
    # two ranked replies: the unranked one with 50 likes is ignored
    assert (by_tree["t05"]["chosen_id"], by_tree["t05"]["rejected_id"]) == ("t05-a0", "t05-a1")


def test_deeper_messages_are_never_used():
    train, _, _ = build_pairs(MINI_TREES_FILE, **ALL_IN_TRAIN)
    used = {p[k] for p in train for k in ("prompt_id", "chosen_id", "rejected_id")}
    assert not {"t01-f", "t01-f-a0", "t01-f-a1"} & used


@pytest.mark.parametrize("depth", ["first", "all"])
@pytest.mark.parametrize(
    "form", ["trees_gz", "trees_by_content", "flat_jsonl", "flat_parquet", "flat_folder"]
)
def test_every_form_gives_the_same_pairs_and_stats(mini_forms, form, depth):
    options = {"languages": ["all"], "eval_fraction": 0.5, "depth": depth}
    ref_train, ref_eval, ref_stats = build_pairs(mini_forms["trees"], **options)
    train, evaluation, stats = build_pairs(mini_forms[form], **options)
    assert (train, evaluation) == (ref_train, ref_eval)
    keys = ("messages", "trees", "trees_by_state", "candidates", "trees_skipped", "groups_skipped")
    for key in (*keys, "messages_skipped", "train", "eval"):
        assert stats[key] == ref_stats[key], key
    if depth == "all":  # the follow-up turn of t01 is there, as a conversation, in every form
        assert any(isinstance(p["prompt"], list) and len(p["prompt"]) == 3 for p in train + evaluation)


@pytest.mark.parametrize(
    "languages, expected",
    [
        (["all"], {"en": 11, "de": 1, "pt-BR": 1}),
        (["de"], {"de": 1}),
        (["pt"], {"pt-BR": 1}),  # a language code matches its regional variants
        (["PT-br", "de"], {"pt-BR": 1, "de": 1}),
        (["de,pt"], {"pt-BR": 1, "de": 1}),  # comma lists work too
        (["es"], None),  # nothing left
    ],
)
def test_language_filter(languages, expected):
    if expected is None:
        with pytest.raises(DataError, match="no training pairs left"):
            build_pairs(MINI_TREES_FILE, languages=languages, **ALL_IN_TRAIN)
        return
    train, _, stats = build_pairs(MINI_TREES_FILE, languages=languages, **ALL_IN_TRAIN)
    assert stats["train"]["languages"] == dict(sorted(expected.items(), key=lambda kv: (-kv[1], kv[0])))
    # pt-BR has four ranked replies: a rank gap of 3, second only to t18
    if "pt-BR" in expected and "en" in expected:
        assert [p["tree_id"] for p in train[:2]] == ["t18", "t13"]


def test_length_limits():
    train, _, stats = build_pairs(MINI_TREES_FILE, max_reply_chars=200, **ALL_IN_TRAIN)
    assert "t17" not in {p["tree_id"] for p in train}  # a0 too long, a2 too short: one reply left
    assert stats["messages_skipped"]["reply_too_long"] == 1
    assert stats["trees_skipped"]["fewer_than_two_replies"] == 3
    train, _, stats = build_pairs(MINI_TREES_FILE, min_reply_chars=1, min_prompt_chars=1, **ALL_IN_TRAIN)
    assert ("t17", "rank", "t17-a0", "t17-a2") in outcome(train)  # "No" is allowed now: rank gap 2
    assert "t14" in {p["tree_id"] for p in train}  # "Hi" is allowed now
    _, _, stats = build_pairs(MINI_TREES_FILE, max_prompt_chars=15, **ALL_IN_TRAIN)
    assert stats["trees_skipped"]["prompt_too_long"] > 0


def test_limit_keeps_the_best_and_is_deterministic(mini_forms):
    train, _, stats = build_pairs(MINI_TREES_FILE, limit=3, **ALL_IN_TRAIN)
    assert outcome(train) == EXPECTED_EN[:3]
    assert stats["candidates"]["total"] == 11 and stats["train"]["pairs"] == 3
    # other row orders of the same flat table: same pairs
    rows = trees_to_flat(mini_trees(), shuffle_seed=7)
    other = write_jsonl(rows[::-1], mini_forms["flat_folder"].parent / "reversed.jsonl")
    assert (
        build_pairs(other, limit=3, **ALL_IN_TRAIN)[:2]
        == build_pairs(MINI_FLAT_FILE, limit=3, **ALL_IN_TRAIN)[:2]
    )


def test_reply_order_never_changes_the_outcome(tmp_path):
    trees = mini_trees()
    for t in trees:
        t["prompt"]["replies"].reverse()  # e.g. t16's tie at the top of likes now meets a0 first
    flipped = write_jsonl(trees[::-1], tmp_path / "flipped.trees.jsonl")
    assert build_pairs(flipped, **ALL_IN_TRAIN)[:2] == build_pairs(MINI_TREES_FILE, **ALL_IN_TRAIN)[:2]


def test_parameters_are_checked():
    for bad in (
        {"limit": 0},
        {"eval_fraction": 1.0},
        {"min_reply_chars": 10, "max_reply_chars": 5},
        {"languages": []},
        {"eval_limit": -1},
    ):
        with pytest.raises(DataError):
            build_pairs(MINI_TREES_FILE, **bad)


# ---------------------------------------------------------------- held-out pairs


def test_held_out_slice_by_tree_id_is_disjoint_and_stable():
    train, evaluation, stats = build_pairs(MINI_TREES_FILE, languages=["all"], eval_fraction=0.5)
    assert train and evaluation
    assert not {p["tree_id"] for p in train} & {p["tree_id"] for p in evaluation}
    assert len(train) + len(evaluation) == stats["candidates"]["total"]
    assert stats["held_out"] == {"method": "tree_id_sha1", "fraction": 0.5}
    # a tree's side depends on its id only: filtering other trees out never moves it
    _, evaluation_en, _ = build_pairs(MINI_TREES_FILE, eval_fraction=0.5)
    assert {p["tree_id"] for p in evaluation_en} == {p["tree_id"] for p in evaluation if p["lang"] == "en"}
    # eval_limit keeps the best held-out pairs
    _, first, _ = build_pairs(MINI_TREES_FILE, languages=["all"], eval_fraction=0.5, eval_limit=1)
    assert first == evaluation[:1]


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory) -> Path:
    """A local copy laid out like a Hub dataset repo: data/train-*.parquet and data/validation-*.parquet."""
    folder = tmp_path_factory.mktemp("hub") / "oasst_like"
    rows = trees_to_flat(mini_trees())
    validation = {"t02", "t07", "t13", "t18"}
    write_parquet(
        [r for r in rows if r["message_tree_id"] not in validation],
        folder / "data" / "train-00000-of-00001.parquet",
    )
    write_parquet(
        [r for r in rows if r["message_tree_id"] in validation],
        folder / "data" / "validation-00000-of-00001.parquet",
    )
    (folder / ".cache").mkdir()
    (folder / ".cache" / "junk.jsonl").write_text("not json\n")  # hidden folders are not data
    return folder


def test_validation_split_is_the_held_out_set(hub_folder):
    train, evaluation, stats = build_pairs(hub_folder, languages=["all"], eval_fraction=0.5)
    assert {p["tree_id"] for p in evaluation} == {"t02", "t07", "t13", "t18"}  # the split, not the hash
    assert {p["tree_id"] for p in train} == ({t for t, *_ in EXPECTED_EN} | {"t12"}) - {"t02", "t07", "t18"}
    assert stats["held_out"] == {"method": "split", "splits": ["validation"]}
    assert [i["split"] for i in stats["inputs"]] == ["train", "validation"]


def test_hub_loading_path_through_datasets(hub_folder, monkeypatch, tmp_path):
    """The Hub branch runs datasets.load_dataset; on a local Hub-layout folder it must agree with the
    plain folder reader (the Hub itself cannot be reached here)."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    parts = data._read_hub(str(hub_folder))
    assert [(info["format"], info["split"]) for _, info in parts] == [("hub", "train"), ("hub", "validation")]
    via_hub = pa.concat_tables([t for t, _ in parts])
    via_files, _ = data.read_messages(hub_folder)
    key = lambda table: sorted(table.to_pylist(), key=lambda r: r["message_id"])  # noqa: E731
    assert key(via_hub) == key(via_files)
    assert via_hub.num_rows == sum(1 for t in mini_trees() for _ in walk(t))


def test_source_detection(tmp_path):
    assert data._HUB_ID.match(data.DEFAULT_SOURCE)
    with pytest.raises(DataError, match="no such file or folder"):
        data.read_messages(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="no such file or folder"):
        data.read_messages("data/missing.parquet")  # looks like owner/name, but it is a file name
    assert data._split_of(Path("data/validation-00000-of-00001.parquet")) == "validation"
    assert data._split_of(Path("train/part-0.parquet")) == "train"
    assert data._split_of(Path("2023-04-12_oasst_ready.trees.jsonl.gz")) is None


# ---------------------------------------------------------------- duplicates


def test_repeated_identical_messages_are_dropped_and_counted(tmp_path):
    trees = mini_trees()
    path = write_jsonl(trees + trees[:2], tmp_path / "repeated.trees.jsonl")
    train, _, stats = build_pairs(path, **ALL_IN_TRAIN)
    assert outcome(train) == EXPECTED_EN
    assert stats["duplicate_messages"] == sum(1 for t in trees[:2] for _ in walk(t))


def test_conflicting_copies_of_a_message_are_an_error(tmp_path):
    trees = mini_trees()
    changed = json.loads(json.dumps(trees[1]))
    changed["prompt"]["replies"][0]["text"] = "A different text"
    path = write_jsonl(trees + [changed], tmp_path / "conflict.trees.jsonl")
    with pytest.raises(DataError, match=r"message_id t02-a0 appears twice with different 'text'"):
        build_pairs(path)


# ---------------------------------------------------------------- writing and reading


def test_cli_writes_pairs_and_stats(tmp_path, capsys):
    out = tmp_path / "pairs"
    args = ["--source", str(MINI_TREES_FILE), "--output-dir", str(out)]
    args += ["--languages", "all", "--eval_fraction", "0.5", "--limit", "5"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "wrote 5 train pairs" in printed and "trees skipped:" in printed
    assert sorted(p.name for p in out.iterdir()) == ["eval.jsonl", "stats.json", "train.jsonl"]
    train, evaluation = load_pairs(out / "train.jsonl"), load_pairs(out / "eval.jsonl")
    expected_train, expected_eval, expected_stats = build_pairs(
        MINI_TREES_FILE, languages=["all"], eval_fraction=0.5, limit=5
    )
    assert (train, evaluation) == (expected_train, expected_eval)
    stats = json.loads((out / "stats.json").read_text())
    assert stats == json.loads(json.dumps(expected_stats))
    assert stats["parameters"]["limit"] == 5 and stats["train"]["pairs"] == 5
    # same input, same bytes
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(args) == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first


def test_cli_reads_a_yaml_config(tmp_path):
    config = tmp_path / "data.yaml"
    config.write_text(
        f"source: {MINI_FLAT_FILE}\noutput_dir: {tmp_path / 'out'}\nlimit: 2\neval_fraction: 0.0\n"
    )
    assert main(["--config", str(config)]) == 0
    assert outcome(load_pairs(tmp_path / "out" / "train.jsonl")) == EXPECTED_EN[:2]


def test_an_interrupted_write_leaves_the_old_outputs_alone(tmp_path):
    out = tmp_path / "pairs"
    train, evaluation, stats = build_pairs(MINI_TREES_FILE, **ALL_IN_TRAIN)
    write_pairs(out, train, evaluation, stats)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    broken = train[:2] + [{**train[2], "prompt": object()}]  # fails half way through train.jsonl
    with pytest.raises(TypeError):
        write_pairs(out, broken, evaluation, stats)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temp files, nothing half-written


def test_load_pairs_errors(tmp_path):
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "c", "rejected": "r"}\n{"prompt": "p"}\n')
    with pytest.raises(DataError, match=r"train.jsonl:2: a pair needs"):
        load_pairs(bad)
    with pytest.raises(DataError, match="run python -m train.data first"):
        load_pairs(tmp_path / "missing.jsonl")


# ---------------------------------------------------- bad input: one line, exit 2, nothing written


def _flat_rows():
    return trees_to_flat(mini_trees())


def _truncated_gz(tmp):
    blob = gzip.compress(MINI_TREES_FILE.read_bytes())
    (tmp / "cut.trees.jsonl.gz").write_bytes(blob[: len(blob) // 2])
    return tmp / "cut.trees.jsonl.gz", r"cut\.trees\.jsonl\.gz: truncated or corrupt gzip data after line \d+"


def _truncated_parquet(tmp):
    path = write_parquet(_flat_rows(), tmp / "cut.parquet")
    path.write_bytes(path.read_bytes()[:-100])
    return path, r"cut\.parquet: not a readable parquet file"


def _malformed_line(tmp):
    lines = MINI_FLAT_FILE.read_text().splitlines()
    lines[6] = lines[6][:40]  # a line cut short, as by an interrupted copy
    (tmp / "bad.jsonl").write_text("\n".join(lines) + "\n")
    return tmp / "bad.jsonl", r"bad\.jsonl:7: malformed JSON"


def _missing_column_parquet(tmp):
    path = write_parquet(_flat_rows(), tmp / "nocol.parquet")
    pq.write_table(pq.read_table(path).drop_columns(["text", "role"]), path)
    return path, r"nocol\.parquet: missing required column\(s\) text, role"


def _missing_field_jsonl(tmp):
    rows = _flat_rows()
    del rows[4]["role"]
    return write_jsonl(
        rows, tmp / "nofield.jsonl"
    ), r"nofield\.jsonl:5: message is missing required field\(s\) role"


def _wrong_type(tmp):
    rows = _flat_rows()
    rows[2]["rank"] = "first"
    return write_jsonl(rows, tmp / "type.jsonl"), r"type\.jsonl:3: field 'rank' must be an integer or null"


def _wrong_column_type(tmp):
    rows = _flat_rows()
    table = pq.read_table(write_parquet(rows, tmp / "t.parquet"))
    table = table.set_column(
        table.schema.get_field_index("deleted"), "deleted", pa.array([{"x": 1}] * len(rows))
    )
    pq.write_table(table, tmp / "t.parquet")
    return tmp / "t.parquet", r"t\.parquet: column 'deleted' has type struct"


def _not_utf8(tmp):
    (tmp / "binary.jsonl").write_bytes(b"\xff\xfe\x00garbage\x00\n")
    return tmp / "binary.jsonl", r"binary\.jsonl:1: malformed JSON"


def _empty_file(tmp):
    (tmp / "empty.jsonl").write_text("\n\n")
    return tmp / "empty.jsonl", r"empty\.jsonl: empty file"


def _empty_folder(tmp):
    (tmp / "nothing").mkdir()
    (tmp / "nothing" / "notes.txt").write_text("hi")
    return tmp / "nothing", r"nothing: no \.parquet, \.jsonl or \.jsonl\.gz files"


def _missing_path(tmp):
    return tmp / "absent.trees.jsonl", r"absent\.trees\.jsonl: no such file or folder"


def _no_pairs(tmp):
    rows = [r for r in _flat_rows() if r["message_tree_id"] in {"t03", "t04", "t19"}]
    return write_jsonl(rows, tmp / "ties.jsonl"), r"ties\.jsonl: no training pairs left .*no_preference 2"


def _tree_without_prompt(tmp):
    (tmp / "x.trees.jsonl").write_text(json.dumps({"message_tree_id": "t", "prompt": None}) + "\n")
    return tmp / "x.trees.jsonl", r"x\.trees\.jsonl:1: a trees export line needs a 'prompt' object"


BAD_INPUTS = [
    _truncated_gz,
    _truncated_parquet,
    _malformed_line,
    _missing_column_parquet,
    _missing_field_jsonl,
    _wrong_type,
    _wrong_column_type,
    _not_utf8,
    _empty_file,
    _empty_folder,
    _missing_path,
    _no_pairs,
    _tree_without_prompt,
]


@pytest.mark.parametrize("make", BAD_INPUTS, ids=[f.__name__.strip("_") for f in BAD_INPUTS])
def test_bad_input_gives_one_line_and_writes_nothing(make, tmp_path, capsys):
    source, message = make(tmp_path)
    out = tmp_path / "out"
    assert main(["--source", str(source), "--output-dir", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert __import__("re").search(message, err), err
    assert not out.exists()


def test_output_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "taken").write_text("")
    assert main(["--source", str(MINI_TREES_FILE), "--output-dir", str(tmp_path / "taken")]) == 2
    assert "cannot create the output folder" in capsys.readouterr().err


def test_output_dir_with_other_files_is_refused(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep me")
    assert main(["--source", str(MINI_TREES_FILE), "--output-dir", str(tmp_path)]) == 2
    assert "holds other files (mine.txt)" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


def test_cli_process_exit_code_without_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "train.data",
            "--source",
            "nobody/no-such-dataset",
            "--output-dir",
            str(tmp_path / "o"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(
        "error: nobody/no-such-dataset: not a local path, and loading it from the Hugging Face Hub failed"
    )
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- the real sample, both forms


@pytest.fixture(scope="module")
def sample_forms(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sample")
    rows = trees_to_flat(read_trees(SAMPLE))
    return {
        "trees": SAMPLE,
        "flat_parquet": write_parquet(rows, tmp / "sample.parquet"),
        "flat_jsonl_gz": _gzip(write_jsonl(rows, tmp / "sample.jsonl")),
    }


def _gzip(path: Path) -> Path:
    gz = path.with_suffix(".jsonl.gz")
    gz.write_bytes(gzip.compress(path.read_bytes()))
    return gz


@pytest.mark.parametrize("languages", [["en"], ["all"]])
def test_real_sample_flat_and_trees_give_identical_pairs(sample_forms, languages):
    results = {form: build_pairs(path, languages=languages) for form, path in sample_forms.items()}
    train, evaluation, stats = results["trees"]
    for form in ("flat_parquet", "flat_jsonl_gz"):
        assert results[form][0] == train, form
        assert results[form][1] == evaluation, form
        assert results[form][2]["trees_skipped"] == stats["trees_skipped"]
        assert results[form][2]["messages_skipped"] == stats["messages_skipped"]
    assert train and evaluation
    assert not {p["tree_id"] for p in train} & {p["tree_id"] for p in evaluation}
    assert stats["trees"] == sum(stats["trees_skipped"].values()) + stats["candidates"]["total"]
    for pair in train + evaluation:
        assert pair["chosen"] != pair["rejected"] and pair["chosen_id"] != pair["rejected_id"]
        if pair["rule"] == "rank":
            assert pair["chosen_rank"] < pair["rejected_rank"]
        else:
            assert pair["chosen_likes"] > pair["rejected_likes"]
        if languages == ["en"]:
            assert pair["lang"] == "en"


def test_real_sample_counts_agree_with_a_direct_count(sample_forms):
    """Cross-check against a count written straight on the raw JSON: with every filter off, the rank
    pairs are exactly the distinct trees with a live prompt and at least two live ranked replies."""
    lines = read_trees(SAMPLE)
    trees = {t["message_tree_id"]: t for t in lines}  # the sample repeats trees
    live = lambda m: not m["deleted"] and m["review_result"] is not False  # noqa: E731
    expected_rank = sum(
        1
        for t in trees.values()
        if live(t["prompt"])
        and sum(live(r) and r["rank"] is not None for r in t["prompt"]["replies"] or []) >= 2
    )
    _, _, stats = build_pairs(
        SAMPLE,
        languages=["all"],
        min_prompt_chars=0,
        max_prompt_chars=10**9,
        min_reply_chars=0,
        max_reply_chars=10**9,
    )
    assert stats["candidates"]["rank"] == expected_rank
    assert stats["trees"] == len(trees) < len(lines)


def test_the_full_sample_counts_match_its_readme():
    """The data README: 551 lines, 520 distinct trees, 1,552 messages of which 52 repeat."""
    full = full_data("oasst2_sample.trees.jsonl")
    _, _, stats = build_pairs(full, languages=["all"])
    assert stats["trees"] == 520
    assert stats["duplicate_messages"] == 1552 - 1500


# ---------------------------------------------------------------- every depth, tree states, sources

NO_LIMITS = {
    "languages": ["all"],
    "min_prompt_chars": 0,
    "max_prompt_chars": 10**9,
    "min_reply_chars": 0,
    "max_reply_chars": 10**9,
}


def test_every_depth_gives_the_conversation_as_the_prompt(tmp_path):
    train, _, stats = build_pairs(MINI_TREES_FILE, depth="all", **ALL_IN_TRAIN)
    deep = [p for p in train if p["depth"] > 0]
    assert len(deep) == 1 and len(train) == 12  # the 11 first-turn pairs and t01's follow-up
    (pair,) = deep
    assert pair["prompt"] == [
        {"role": "user", "content": "How do rainbows form?"},
        {"role": "assistant", "content": "Answer 0 to t01, written with care."},
        {"role": "user", "content": "Why seven colours?"},
    ]
    assert (pair["chosen_id"], pair["rejected_id"], pair["parent_id"], pair["prompt_id"], pair["depth"]) == (
        "t01-f-a0",
        "t01-f-a1",
        "t01-f",
        "t01",
        2,
    )
    first = [p for p in train if p["depth"] == 0]
    assert all(p["prompt"] == [{"role": "user", "content": p["prompt"][0]["content"]}] for p in first)
    assert stats["train"]["depths"] == {"0": 11, "2": 1}
    assert stats["trees_skipped"] == build_pairs(MINI_TREES_FILE, **ALL_IN_TRAIN)[2]["trees_skipped"]
    write_pairs(tmp_path, train, [], stats)
    assert load_pairs(tmp_path / "train.jsonl") == train  # list prompts read back as written


def test_a_removed_message_on_the_path_drops_the_deeper_group(tmp_path):
    follow_up = message(
        "f",
        "And then?",
        "prompter",
        replies=[message("f-a0", "Then this, ranked best.", rank=0), message("f-a1", "Or that.", rank=1)],
    )
    removed = tree("r1", "Tell me a story.", [a("r1", 0, rank=0, deleted=True, replies=[follow_up])])
    path = write_jsonl([removed], tmp_path / "x.trees.jsonl")
    with pytest.raises(DataError, match="no training pairs"):
        build_pairs(path, depth="all", **ALL_IN_TRAIN)
    _, stats = data.pairs_from_messages(data.read_messages(path)[0], depth="all", **NO_LIMITS)
    assert stats["groups_skipped"] == {"conversation_removed": 1, "fewer_than_two_replies": 1}


def test_only_exported_trees_by_default_and_the_others_counted(tmp_path):
    trees = [
        tree(f"s{i}", f"Question number {i}?", [a(f"s{i}", 0, rank=0), a(f"s{i}", 1, rank=1)])
        for i in range(3)
    ]
    trees[1]["tree_state"] = "growing"
    trees[2]["tree_state"] = "halted_by_moderator"
    path = write_jsonl(trees, tmp_path / "x.trees.jsonl")
    train, _, stats = build_pairs(path, **ALL_IN_TRAIN)
    assert [p["tree_id"] for p in train] == ["s0"]
    assert stats["trees_by_state"] == {"growing": 1, "halted_by_moderator": 1, "ready_for_export": 1}
    assert stats["trees_skipped"] == {"tree_state": 2}
    every, _, _ = build_pairs(path, tree_states=["all"], **ALL_IN_TRAIN)
    assert len(every) == 3
    growing, _, _ = build_pairs(path, tree_states=["growing", "ready_for_export"], **ALL_IN_TRAIN)
    assert sorted(p["tree_id"] for p in growing) == ["s0", "s1"]
    flat = write_jsonl(trees_to_flat(trees), tmp_path / "flat.jsonl")
    assert build_pairs(flat, **ALL_IN_TRAIN)[0] == train


def test_two_sources_count_a_shared_tree_once(tmp_path):
    shared = tree("x1", "A question both sources hold?", [a("x1", 0, rank=0), a("x1", 1, rank=1)])
    changed = json.loads(json.dumps(shared))
    changed["prompt"]["replies"][0]["emojis"] = {"+1": 3}  # the later export counted more likes
    own = tree("x2", "A question only one holds?", [a("x2", 0, rank=0), a("x2", 1, rank=1)])
    first = write_jsonl([shared], tmp_path / "one.trees.jsonl")
    second = write_jsonl(trees_to_flat([changed, own]), tmp_path / "two.jsonl")
    train, _, stats = build_pairs([first, second], **ALL_IN_TRAIN)
    assert sorted(p["tree_id"] for p in train) == ["x1", "x2"]
    assert stats["trees_in_earlier_source"] == 1
    assert stats["trees"] == 2 and stats["sources"] == [str(first), str(second)]
    assert next(p for p in train if p["tree_id"] == "x1")["chosen_likes"] == 0  # the first source's copy


def test_cli_takes_several_sources_and_depth(tmp_path, capsys):
    out = tmp_path / "pairs"
    assert main(["--source", str(MINI_TREES_FILE), str(MINI_FLAT_FILE), "--depth", "all",
                 "--eval_fraction", "0", "--output-dir", str(out)]) == 0  # fmt: skip
    stats = json.loads((out / "stats.json").read_text())
    assert stats["trees_in_earlier_source"] == 20 and stats["train"]["depths"] == {"0": 11, "2": 1}
    with pytest.raises(SystemExit) as exit_:  # argparse's own message names the choices
        main(["--source", str(MINI_TREES_FILE), "--depth", "deepest", "--output-dir", str(out)])
    assert exit_.value.code == 2


@pytest.fixture(scope="module")
def oasst1_forms(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("oasst1")
    rows = [json.loads(line) for line in gzip.decompress(OASST1_EN.read_bytes()).decode("utf-8").splitlines()]
    return {
        "flat": OASST1_EN,
        "flat_parquet": write_parquet(rows, tmp / "oasst1.parquet"),
        "trees": write_jsonl(flat_to_trees(rows), tmp / "oasst1.trees.jsonl"),
    }


def test_real_oasst1_counts_match_its_readme(oasst1_forms):
    """The data README: 2,022 messages, 191 trees (3 fragments), 186 first-turn ranked groups, 416 in all."""
    full = full_data("oasst1-validation-en.jsonl")
    _, _, first = build_pairs(full, tree_states=["all"], **NO_LIMITS)
    _, _, every = build_pairs(full, depth="all", tree_states=["all"], **NO_LIMITS)
    assert first["messages"] == 2022 and first["trees"] == 191
    assert first["trees_skipped"]["no_initial_prompt"] == 3
    assert first["candidates"]["rank"] == 186
    assert every["candidates"]["rank"] == 416
    assert first["trees_by_state"] == {"ready_for_export": 188}


@pytest.mark.parametrize("depth", ["first", "all"])
def test_real_oasst1_flat_and_trees_give_identical_pairs(oasst1_forms, depth):
    results = {form: build_pairs(path, depth=depth) for form, path in oasst1_forms.items()}
    train, evaluation, stats = results["flat"]
    assert len(train) + len(evaluation) == (31 if depth == "first" else 69)  # the committed 32 trees
    for form in ("flat_parquet", "trees"):
        assert results[form][0] == train, form
        assert results[form][1] == evaluation, form
        assert results[form][2]["groups_skipped"] == stats["groups_skipped"], form
    assert not {p["tree_id"] for p in train} & {p["tree_id"] for p in evaluation}


def test_real_oasst1_and_the_sample_share_two_trees(sample_path):
    _, _, stats = build_pairs([OASST1_EN, sample_path], depth="all", tree_states=["all"], **NO_LIMITS)
    assert stats["trees_in_earlier_source"] == 2  # both subsets keep the two trees the full files share
    oasst1 = {json.loads(line)["message_tree_id"] for line in gzip.open(OASST1_EN, "rt", encoding="utf-8")}
    sample = {t["message_tree_id"] for t in read_trees(sample_path)}
    assert stats["trees"] == len(oasst1) + len(sample) - 2
