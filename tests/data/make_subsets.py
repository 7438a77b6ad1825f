"""Regenerates the committed subsets in tests/data/ from the full files in ../shared/data (README.md
here says what each holds and why those trees and lines).

    python -m tests.data.make_subsets
"""

import gzip
import json
from collections import Counter
from pathlib import Path

from train.data import _hash_fraction

HERE = Path(__file__).resolve().parent
FULL = HERE.parents[2] / "shared" / "data"
OASST1_TREES = 30  # whole trees of the oasst1 English validation split, by tree id
PER_STATE = 3  # oasst2 trees of each tree state, in file order
OASST2_EN_READY = 20  # English ready_for_export oasst2 trees, in file order
HELD_OUT = 5  # English ready_for_export oasst2 trees that the default split holds out
HH_LINES = 60  # the first lines of each HH-RLHF helpfulness test file


def write_gz(path: Path, lines: list[str]) -> None:
    with gzip.GzipFile(path, "wb", mtime=0) as f:  # mtime 0: the same bytes on every run
        f.write("".join(line + "\n" for line in lines).encode("utf-8"))


def oasst2_lines(lines: list[str], shared: set[str]) -> list[str]:
    trees = [json.loads(line) for line in lines]
    ids = [t["message_tree_id"] for t in trees]
    keep = {i for i, tree_id in enumerate(ids) if tree_id in shared}
    per_state = Counter()
    english_ready, held_out = 0, 0
    repeated = next(tree_id for tree_id, n in Counter(ids).items() if n > 1)
    for i, tree in enumerate(trees):
        state, prompt = tree["tree_state"], tree["prompt"]
        if per_state[state] < PER_STATE:
            per_state[state] += 1
            keep.add(i)
        if state == "ready_for_export" and prompt.get("lang") == "en":
            if english_ready < OASST2_EN_READY:
                english_ready += 1
                keep.add(i)
            elif _hash_fraction(ids[i]) < 0.05 and held_out < HELD_OUT:
                held_out += 1
                keep.add(i)
        if prompt.get("deleted") or ids[i] == repeated:
            keep.add(i)  # quirks a loader must take: a deleted prompt, a tree repeated (every line has
            # CRITERIA, a field no Open Assistant release has)
    return [lines[i] for i in sorted(keep)]


def main() -> None:
    flat = (FULL / "oasst1-validation-en.jsonl").read_text(encoding="utf-8").splitlines()
    sample = (FULL / "oasst2_sample.trees.jsonl").read_text(encoding="utf-8").splitlines()
    tree_of = [json.loads(line)["message_tree_id"] for line in flat]
    shared = set(tree_of) & {json.loads(line)["message_tree_id"] for line in sample}
    chosen = set(sorted(set(tree_of))[:OASST1_TREES]) | shared
    write_gz(
        HERE / "oasst1-validation-en.subset.jsonl.gz",
        [x for x, t in zip(flat, tree_of, strict=True) if t in chosen],
    )
    write_gz(HERE / "oasst2_sample.subset.trees.jsonl.gz", oasst2_lines(sample, shared))
    (HERE / "hh-rlhf-helpful").mkdir(exist_ok=True)
    for path in sorted((FULL / "hh-rlhf-helpful").glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = [next(f).rstrip("\n") for _ in range(HH_LINES)]
        write_gz(HERE / "hh-rlhf-helpful" / path.name, lines)


if __name__ == "__main__":
    main()
