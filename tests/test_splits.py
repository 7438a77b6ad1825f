"""Three splits by tree (train, dev, a sealed test) on the real English Open Assistant data."""

import json

import pytest
import yaml

from study import run as study
from tests._helpers_data import full_data
from train.data import DataError, build_pairs, load_pairs, main
from train.data.splits import build_splits
from train.evaluate.inputs import prompt_key

SOURCES = [str(s) for s in study.SOURCES]


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    for (
        source
    ) in study.SOURCES:  # the split's promises (100 test prompts, old trees in dev) are the full data's
        full_data(source.name)
    out = tmp_path_factory.mktemp("splits") / "study-splits"
    args = ["--source", *SOURCES, "--depth", "all", "--eval_fraction", str(study.EVAL_FRACTION)]
    args += ["--test_fraction", str(study.TEST_FRACTION), "--output-dir", str(out)]
    assert main(args) == 0
    return out, args


def trees(pairs):
    return {p["tree_id"] for p in pairs}


def test_the_three_splits_share_no_tree_and_the_test_holds_100_prompts(splits):
    out, _ = splits
    assert sorted(p.name for p in out.iterdir()) == ["dev.jsonl", "stats.json", "test.jsonl", "train.jsonl"]
    train, dev, test = (load_pairs(out / f"{n}.jsonl") for n in ("train", "dev", "test"))
    assert not trees(train) & trees(dev) and not trees(train) & trees(test) and not trees(dev) & trees(test)
    assert len({prompt_key(p) for p in test}) >= 100  # what train.evaluate answers: one per prompt
    stats = json.loads((out / "stats.json").read_text())
    for name, pairs in (("train", train), ("dev", dev), ("test", test)):
        assert (stats[name]["pairs"], stats[name]["trees"]) == (len(pairs), len(trees(pairs)))
    assert stats["held_out"] == {"method": "tree_id_sha1", "dev": [0.0, 0.25], "test": [0.25, 0.5]}


def test_the_old_held_out_trees_are_dev_never_test(splits):
    """The study's old split (25% held out) was read many times: all of it is dev, none of it is sealed."""
    out, _ = splits
    old_train, old_eval, _ = build_pairs(SOURCES, depth="all", eval_fraction=0.25)
    dev, test = load_pairs(out / "dev.jsonl"), load_pairs(out / "test.jsonl")
    assert dev == old_eval  # the same pairs, in the same order
    assert not trees(old_eval) & trees(test)
    assert trees(test) <= trees(old_train)  # the test's trees were training trees, never evaluated


def test_the_splits_are_deterministic(splits):
    out, args = splits
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(args) == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first


def test_bad_split_options_are_refused():
    with pytest.raises(DataError, match="test_fraction must be in"):
        build_splits(SOURCES, eval_fraction=0.5, test_fraction=0.5)
    with pytest.raises(DataError, match="eval_limit cannot be combined with test_fraction"):
        build_splits(SOURCES, eval_fraction=0.25, test_fraction=0.25, eval_limit=10)


def test_the_study_recipes_train_on_the_three_splits():
    """A recipe that builds its pairs itself builds exactly what study.run builds (never the old split,
    whose training pairs hold the sealed test's trees)."""
    for recipe in sorted((study.ROOT / "recipes/study").glob("*.yaml")):
        keys = yaml.safe_load(recipe.read_text())
        assert keys["pairs_file"] == str(study.DATA / "train.jsonl"), recipe.name
        assert keys["dataset_eval_fraction"] == study.EVAL_FRACTION, recipe.name
        assert keys["dataset_test_fraction"] == study.TEST_FRACTION, recipe.name


def test_a_recipe_missing_its_pairs_builds_the_three_splits(tmp_path, splits):
    """train.train builds the pairs a study recipe names exactly as study.run does."""
    from train.config import TrainArguments
    from train.dataset import load_train_pairs

    out, _ = splits
    args = TrainArguments(
        pairs_file=str(tmp_path / "built" / "train.jsonl"), dataset_source=SOURCES, dataset_depth="all",
        dataset_eval_fraction=0.25, dataset_test_fraction=0.25, max_prompt_tokens=None,
    )  # fmt: skip
    pairs, counts = load_train_pairs(args, tokenizer=None)
    assert pairs == load_pairs(out / "train.jsonl") and counts["used"] == len(pairs)
    for name in ("dev.jsonl", "test.jsonl", "stats.json"):
        assert (tmp_path / "built" / name).read_bytes() == (out / name).read_bytes()


def test_an_adapter_trained_before_the_splits_is_stale():
    """study.run retrains (and sealed refuses) an adapter whose training pairs held sealed-test trees."""
    recipe = study.ROOT / "recipes/study/dpo.yaml"
    assert study.stale({"pairs_file": "data/study/train.jsonl"}, recipe)
    assert not study.stale({"pairs_file": "data/study-splits/train.jsonl"}, recipe)


def test_a_run_trains_first_only_the_folders_its_recipe_reads_from_outputs():
    """A warm start or reward model in outputs/ is trained first (or earlier in the study); a committed one
    (study/adapters/) is read as it is, never retrained."""
    for recipe in sorted((study.ROOT / "recipes/study").glob("*.yaml")):
        keys = yaml.safe_load(recipe.read_text())
        for key in ("init_adapter", "implicit_reward_adapter", "reward_model_name_or_path"):
            folder = keys.get(key)
            if not folder or not folder.startswith(("outputs/", "study/")):
                continue  # a Hub id, or none
            if folder.startswith(str(study.KEPT)):
                assert (study.ROOT / folder / "adapter_config.json").exists(), (recipe.name, key)
            else:  # trained first for this run, or earlier in the whole study's order
                run, order = folder.removeprefix(f"{study.RUNS}/"), list(study.CANDIDATES)
                earlier = (
                    run in order and recipe.stem in order and order.index(run) < order.index(recipe.stem)
                )
                assert run == study.needs(recipe.stem) or earlier, (recipe.name, key)
    assert study.needs("grpo-from-sft") == "sft" and study.needs("grpo-anchored-whole") is None
