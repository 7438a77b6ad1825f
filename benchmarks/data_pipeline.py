"""Time the whole data pipeline (read parquet -> pairs -> write JSONL) on an oasst1-sized flat table.

    python -m benchmarks.data_pipeline [--messages 88800] [--trees 10400] [--repeats 5]

Generates, with a fixed seed, a Hub-shaped folder (data/train-*.parquet + data/validation-*.parquet,
all the Hub's columns) with oasst1's size and shape: about 8.5 messages a tree, 0-5 direct replies,
ranks on most sibling sets, emoji counts, ~2% deleted, ~3% failed review, a language mix led by en/es,
prompt and reply lengths like the real sample (median ~100 and ~700 characters). Then times, in one run:
  baseline  pyarrow.parquet.read_table of the two files (all columns): merely reading the data;
  pipeline  train.data.run(): read + normalise + pair + select + write train/eval/stats, in process
            (first-turn pairs, and again with --depth all);
  cli       `python -m train.data ...` in a fresh interpreter (adds Python start-up and imports).
Medians of --repeats runs after one warm-up run (its time is kept too); writes
benchmarks/results/data_pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from assistant.atomic import write_text
from train.data import DataArguments, run
from train.data.schemas import DETOXIFY, OASST1_HUB_SCHEMA

ROOT = Path(__file__).resolve().parents[1]

RESULTS = ROOT / "benchmarks" / "results" / "data_pipeline.json"
LANGS = ["en", "es", "ru", "de", "zh", "fr", "pt-BR", "ca", "uk", "it", "ja", "pl"]
LANG_P = [0.45, 0.25, 0.07, 0.06, 0.04, 0.04, 0.03, 0.02, 0.015, 0.01, 0.01, 0.005]
LABELS = ["spam", "lang_mismatch", "pii", "not_appropriate", "hate_speech", "sexual_content", "quality"]
WORDS = (
    "the of and to in is that for it as with was on be by this are or from at an which have not "
    "model answer question people water energy language example because however would could "
    "light history system function value between different important python children music"
).split()


def generate(n_messages: int, n_trees: int, seed: int = 0) -> tuple[list[dict], set[str]]:
    """Rows of a flat oasst table with exactly n_messages in n_trees trees; also the validation tree ids."""
    rng = np.random.default_rng(seed)
    corpus = " ".join(rng.choice(WORDS, size=400_000))
    sizes = np.maximum(1, rng.poisson(n_messages / n_trees - 1, size=n_trees) + 1)
    sizes[-1] += n_messages - sizes.sum()  # exact total; the last tree absorbs the rounding
    while sizes[-1] < 1:
        sizes[np.argmax(sizes)] -= 1
        sizes[-1] += 1

    def text(median):
        length = int(min(8000, max(2, rng.lognormal(np.log(median), 0.9))))
        start = int(rng.integers(0, len(corpus) - length))
        return corpus[start : start + length]

    rows, validation = [], set()
    counter = 0
    for t, size in enumerate(sizes):
        tree_id = f"{t:08x}-0000-4000-8000-{rng.integers(16**12):012x}"
        if rng.random() < 0.05:
            validation.add(tree_id)
        lang = str(rng.choice(LANGS, p=LANG_P))
        nodes = [(tree_id, None, "prompter")]
        queue = [0]
        while queue and len(nodes) < size:  # breadth first: direct replies come first, like real trees
            parent = queue.pop(0)
            parent_id, _, parent_role = nodes[parent]
            role = "assistant" if parent_role == "prompter" else "prompter"
            want = (
                int(rng.choice([1, 2, 3, 4, 5], p=[0.15, 0.25, 0.4, 0.15, 0.05]))
                if role == "assistant"
                else int(rng.choice([0, 1, 2], p=[0.3, 0.5, 0.2]))
            )
            for _ in range(min(want, size - len(nodes))):
                counter += 1
                nodes.append((f"{counter:08x}-1111-4000-8000-{rng.integers(16**12):012x}", parent_id, role))
                queue.append(len(nodes) - 1)
            if not queue and len(nodes) < size:
                queue.append(len(nodes) - 1)
        siblings: dict[str, list[int]] = {}
        for i, (_, parent_id, role) in enumerate(nodes):
            if role == "assistant":
                siblings.setdefault(parent_id, []).append(i)
        ranks = {}
        for group in siblings.values():
            if len(group) >= 2 and rng.random() < 0.8:
                ranks.update(zip(group, rng.permutation(len(group)).tolist(), strict=True))
        for i, (message_id, parent_id, role) in enumerate(nodes):
            names = ["+1", "-1", "_skip_labeling"]
            counts = [int(rng.poisson(1.2)), int(rng.poisson(0.3)), int(rng.poisson(0.5))]
            keep = [k for k, c in enumerate(counts) if c]
            review = rng.random()
            rows.append(
                {
                    "message_id": message_id,
                    "parent_id": parent_id,
                    "user_id": f"user-{rng.integers(5000)}",
                    "created_date": f"2023-02-{1 + t % 28:02d}T12:00:00.000000+00:00",
                    "text": text(100 if role == "prompter" else 700),
                    "role": role,
                    "lang": lang,
                    "review_count": 3,
                    "review_result": False if review < 0.03 else (None if review < 0.04 else True),
                    "deleted": bool(rng.random() < 0.02),
                    "rank": ranks.get(i),
                    "synthetic": False,
                    "model_name": None,
                    "detoxify": dict(zip(DETOXIFY, rng.random(len(DETOXIFY)).round(6).tolist(), strict=True)),
                    "message_tree_id": tree_id,
                    "tree_state": "ready_for_export",
                    "emojis": {"name": [names[k] for k in keep], "count": [counts[k] for k in keep]},
                    "labels": {
                        "name": LABELS,
                        "value": rng.random(len(LABELS)).round(3).tolist(),
                        "count": [3] * len(LABELS),
                    },
                }
            )
    return rows, validation


def write_hub_folder(rows: list[dict], validation: set[str], folder: Path) -> list[Path]:
    paths = []
    for split, keep in (("train", False), ("validation", True)):
        part = [r for r in rows if (r["message_tree_id"] in validation) == keep]
        path = folder / "data" / f"{split}-00000-of-00001.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(part, schema=OASST1_HUB_SCHEMA), path)
        paths.append(path)
    return paths


def timed(fn, repeats: int) -> tuple[float, float]:
    """(first run: cold file cache and lazy imports, median of the `repeats` runs after it)."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times[0], statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=88_800)
    parser.add_argument("--trees", type=int, default=10_400)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS)
    opts = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        rows, validation = generate(opts.messages, opts.trees)
        paths = write_hub_folder(rows, validation, tmp / "oasst")
        generate_s = time.perf_counter() - start
        del rows

        load_before = os.getloadavg()[0]
        _, baseline = timed(lambda: [pq.read_table(p) for p in paths], opts.repeats)
        args = DataArguments(source=[str(tmp / "oasst")], output_dir=str(tmp / "pairs"))
        stats = {}
        pipeline_first, pipeline = timed(lambda: stats.update(run(args)), opts.repeats)
        # ranked groups at every depth: the conversation so far is rebuilt for each deeper group
        deep = DataArguments(source=[str(tmp / "oasst")], output_dir=str(tmp / "pairs_all"), depth="all")
        deep_stats = {}
        _, pipeline_all = timed(lambda: deep_stats.update(run(deep)), opts.repeats)
        command = [
            sys.executable,
            "-m",
            "train.data",
            "--source",
            str(tmp / "oasst"),
            "--output-dir",
            str(tmp / "pairs_cli"),
        ]
        _, cli = timed(
            lambda: subprocess.run(command, cwd=ROOT, check=True, capture_output=True),
            max(1, opts.repeats // 2),
        )

        result = {
            "benchmark": "data pipeline on an oasst1-sized synthetic flat table (Hub layout, parquet)",
            "command": "python -m benchmarks.data_pipeline"
            + (
                f" --messages {opts.messages} --trees {opts.trees}"
                if (opts.messages, opts.trees) != (88_800, 10_400)
                else ""
            ),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "pyarrow": pa.__version__,
                "loadavg_1m_before": round(load_before, 2),  # the machine is shared: > 0.5 means noisy
            },
            "data": {
                "messages": stats["messages"],
                "trees": stats["trees"],
                "parquet_bytes": sum(p.stat().st_size for p in paths),
                "generate_s": round(generate_s, 2),
            },
            "repeats": opts.repeats,
            "baseline_read_parquet_s": round(baseline, 4),
            "pipeline_s": round(pipeline, 4),
            "pipeline_first_run_s": round(pipeline_first, 4),
            "ratio_pipeline_to_read": round(pipeline / baseline, 2),
            "pipeline_all_depths_s": round(pipeline_all, 4),
            "ratio_all_depths_to_read": round(pipeline_all / baseline, 2),
            "cli_wall_s": round(cli, 4),
            "goal_s": 2.0,
            "goal_met": pipeline < 2.0 and pipeline_all < 2.0,
            "pairs": {
                "train": stats["train"]["pairs"],
                "eval": stats["eval"]["pairs"],
                "candidates": stats["candidates"]["total"],
                "candidates_all_depths": deep_stats["candidates"]["total"],
            },
        }
    write_text(opts.output, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
