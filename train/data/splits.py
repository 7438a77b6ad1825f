"""Three splits by tree: train, dev and a sealed test.

    python -m train.data --source A B --depth all --eval_fraction 0.25 --test_fraction 0.25 --output-dir DIR

Each tree goes to one split by the sha1 of its id (the fraction ``h`` in [0, 1) that `build_pairs`
already uses), so a tree never moves when data is added and no tree is in two splits:
  * dev: ``h < eval_fraction``. With the study's 0.25 these are exactly the trees of its old held-out
    split, which earlier rounds read many times: they can inform choices but can never be sealed again;
  * test: ``eval_fraction <= h < eval_fraction + test_fraction``, trees that were training trees before
    and that no evaluation has read. Only ``python -m study.sealed`` reads test.jsonl;
  * train: the rest.
Outputs (one folder swapped in whole): train.jsonl, dev.jsonl, test.jsonl and stats.json, whose
``held_out`` names the hash ranges and whose ``train``, ``dev`` and ``test`` count pairs, trees and depths.
"""

from __future__ import annotations

import os

from train.data.pair_files import DataError, write_files


def build_splits(
    source, *, eval_fraction: float, test_fraction: float, eval_limit: int | None = None, **options
) -> tuple[dict[str, list[dict]], dict]:
    """({"train.jsonl": ..., "dev.jsonl": ..., "test.jsonl": ...}, stats) for `source`; the other
    options are `build_pairs`'s."""
    from train.data import _hash_fraction, _summary, build_pairs

    if not 0 < test_fraction < 1 or eval_fraction + test_fraction >= 1:
        raise DataError(
            f"test_fraction must be in (0, 1) and leave trees for training with eval_fraction "
            f"{eval_fraction}, got {test_fraction}"
        )
    if eval_limit is not None:
        raise DataError("eval_limit cannot be combined with test_fraction: a cut split is not sealed whole")
    train, held_out, stats = build_pairs(source, eval_fraction=eval_fraction + test_fraction, **options)
    if stats["held_out"]["method"] != "tree_id_sha1":
        raise DataError(
            f"{stats['source']}: a source brings its own held-out split ({', '.join(stats['held_out']['splits'])}); "
            "three splits are chosen by tree-id hash only: give the sources without their split folders"
        )
    dev = [p for p in held_out if _hash_fraction(p["tree_id"]) < eval_fraction]
    test = [p for p in held_out if _hash_fraction(p["tree_id"]) >= eval_fraction]
    del stats["eval"]
    stats["parameters"].update(eval_fraction=eval_fraction, test_fraction=test_fraction)
    stats["held_out"] = {
        "method": "tree_id_sha1",
        "dev": [0.0, eval_fraction],
        "test": [eval_fraction, eval_fraction + test_fraction],
    }
    stats.update(dev=_summary(dev), test=_summary(test))
    return {"train.jsonl": train, "dev.jsonl": dev, "test.jsonl": test}, stats


def write_splits(output_dir: str | os.PathLike, source, **options) -> dict:
    """Build the three splits of `source` and write them (with stats.json) together; return the stats."""
    files, stats = build_splits(source, **options)
    write_files(output_dir, files, stats)
    return stats
