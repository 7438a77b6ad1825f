"""Open Assistant conversations -> preference pairs (prompt, chosen, rejected).

Modules: ``read`` (every source into one message table), ``rules`` (groups -> pairs), ``pair_files``
(the pair format, written and read); this one builds, splits and writes them, and is the CLI.

    python -m train.data --source OpenAssistant/oasst1 --output-dir data/pairs [--languages en] [--limit 1000]
    python -m train.data --source A B --depth all --output-dir data/pairs   # several sources, every turn

Sources, detected automatically (`read_messages`):
  * an existing path is local: a file, or a folder searched recursively for ``*.parquet``, ``*.jsonl``
    and ``*.jsonl.gz`` (hidden folders skipped). A file is an official *trees* export when its name ends
    in ``.trees.jsonl[.gz]`` or its first object has a nested ``prompt``; otherwise it is a *flat* message
    table in the Hub's schema (parquet or JSONL). Inside a folder, a file or folder named like a Hub
    split (``train-*``, ``validation-*``, ``test-*``, ...) gives its messages that split;
  * otherwise an ``owner/name`` string is a Hub dataset id, loaded with ``datasets.load_dataset``.
Every source is normalised into one flat table of messages (`MESSAGE_SCHEMA`) and trees are rebuilt
from ``parent_id`` links, so the flat and the trees form of the same data give the same pairs by
construction. In trees exports ``message_tree_id`` and ``tree_state`` are set on the tree, not on its
messages: they are taken from the tree. Several sources are read as one; a tree in more than one is
taken whole from the first (oasst2 contains oasst1), so no tree is counted twice.

Rules, per conversation tree (one initial prompt) and per group (a prompter message and its replies):
  1. The tree must be in one of ``tree_states`` (default ``ready_for_export``; "all" keeps every tree; a
     source without the field is kept) and its initial prompt a live ``prompter`` message: not deleted,
     not failed review (``review_result`` false; null means "not reviewed yet" and is kept), in one of
     ``languages`` ("en" also matches "en-GB"; "all" turns the filter off).
  2. Groups: with ``depth`` "first", the initial prompt's replies only, the prompt being its text; with
     "all", every prompter message's replies at any depth, the prompt being the conversation from the
     initial prompt down to that message as ``[{"role": "user"|"assistant", "content"}]``. Every message
     on that path must be live ("conversation_removed" otherwise), and the last one must satisfy
     ``min_prompt_chars <= len(text.strip()) <= max_prompt_chars``. Replies are eligible when they are
     ``assistant`` messages, not deleted, not failed review, and within the reply length limits.
  3. Preference, mixing rank and likes in one defensible way:
       - if at least two eligible replies carry an explicit ``rank`` (0 = best), rank decides, among the
         ranked replies only: rankers compared those and nothing else, so an unranked reply has no
         place in their order and its likes are not comparable to a rank (rule "rank");
       - otherwise likes (the "+1" emoji count) decide among all eligible replies, if the most liked
         has strictly more likes than the least liked (rule "likes");
       - otherwise no preference can be determined and the group is skipped ("no_preference").
     Dropping a reply (deleted, failed review, length) keeps the order of the others intact, so the
     rank rule still holds on what remains. Chosen = the best, rejected = the worst; ties inside one
     side are broken by likes (rank rule) and then by message id, so input order never matters.
  4. Quality order, used to keep the top ``limit`` pairs (deterministic, total):
       rank pairs before likes pairs (an explicit comparison by a ranker beats counted reactions),
       then the larger gap first (worst rank - best rank, or best likes - worst likes: a clearer
       preference), then more compared replies, then tree id, depth and message ids.
  5. Held out for evaluation: every tree of the source's held-out split (``validation``, ``valid``,
     ``val``, ``test``, ``eval``) when it has one; else the trees whose id hashes (sha1) below
     ``eval_fraction``. A tree's assignment depends on its id only, so it never moves when data is
     added, and held-out trees never give training pairs. Held-out pairs are sorted by the same
     quality order and cut to ``eval_limit`` if given.
``stats.json`` counts every tree by state (``trees_by_state``), every tree that gives no pair once by
its reason (``trees_skipped``: the reason of its first turn), every group that gives no pair
(``groups_skipped``) and every reply of a considered group that was dropped (``messages_skipped``).

Outputs, replaced together or not at all (the output folder is swapped in whole): ``train.jsonl``,
``eval.jsonl`` (one pair a line: ``PAIR_KEYS``) and ``stats.json``; with ``--test_fraction`` three splits
by tree instead, ``train.jsonl``, ``dev.jsonl`` and a sealed ``test.jsonl`` (``train.data.splits``).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from train.data.pair_files import (
    PAIR_FILES,
    PAIR_KEYS,
    DataError,
    _first_line,
    load_pairs,
    prompt_messages,
    write_pairs,
)
from train.data.read import _HUB_ID, HELD_OUT_SPLITS, _read_hub, _split_of, read_messages, read_sources
from train.data.rules import DEFAULT_TREE_STATES, DEPTHS, pairs_from_messages

__all__ = [
    "PAIR_FILES",
    "PAIR_KEYS",
    "DataArguments",
    "DataError",
    "build_pairs",
    "load_pairs",
    "main",
    "pairs_from_messages",
    "prompt_messages",
    "read_messages",
    "run",
    "write_pairs",
    "_HUB_ID",
    "_read_hub",
    "_split_of",
]

DEFAULT_SOURCE = "OpenAssistant/oasst1"


@dataclass
class DataArguments:
    """Options of `python -m train.data` (also readable from a YAML file with --config)."""

    output_dir: str = field(metadata={"help": "Folder for train.jsonl, eval.jsonl and stats.json."})
    source: list[str] = field(
        default_factory=lambda: [DEFAULT_SOURCE],
        metadata={
            "help": "Hub dataset id, or a local flat table (parquet/JSONL, file or folder) or trees export; "
            "several are read as one (a tree in more than one is taken from the first)."
        },
    )
    depth: str = field(
        default="first",
        metadata={
            "help": "first: the initial prompt's replies only; all: ranked replies at every depth, the "
            "conversation so far as the prompt (a list of messages).",
            "choices": list(DEPTHS),
        },
    )
    tree_states: list[str] = field(
        default_factory=lambda: list(DEFAULT_TREE_STATES),
        metadata={"help": "Tree states to keep ('all' keeps every tree); the others are counted by state."},
    )
    languages: list[str] = field(
        default_factory=lambda: ["en"],
        metadata={
            "help": "Prompt languages to keep ('en' also matches 'en-GB'); 'all' keeps every language."
        },
    )
    limit: int = field(default=1000, metadata={"help": "Number of training pairs to keep (top by quality)."})
    eval_limit: int | None = field(
        default=None, metadata={"help": "Cap on held-out pairs; unset keeps them all."}
    )
    eval_fraction: float = field(
        default=0.05,
        metadata={"help": "Share of trees held out by tree-id hash when the source has no validation split."},
    )
    test_fraction: float = field(
        default=0.0,
        metadata={
            "help": "When above 0, three splits by tree-id hash (train.data.splits): dev = the eval_fraction "
            "trees (dev.jsonl), a sealed test = the next test_fraction (test.jsonl), train = the rest."
        },
    )
    min_prompt_chars: int = field(default=5, metadata={"help": "Shortest prompt kept (characters)."})
    max_prompt_chars: int = field(default=2000, metadata={"help": "Longest prompt kept (characters)."})
    min_reply_chars: int = field(default=5, metadata={"help": "Shortest reply kept (characters)."})
    max_reply_chars: int = field(default=4000, metadata={"help": "Longest reply kept (characters)."})


def build_pairs(
    source: str | os.PathLike | list = DEFAULT_SOURCE,
    *,
    languages: list[str] | tuple[str, ...] = ("en",),
    depth: str = "first",
    tree_states: list[str] | tuple[str, ...] = DEFAULT_TREE_STATES,
    limit: int = 1000,
    eval_limit: int | None = None,
    eval_fraction: float = 0.05,
    min_prompt_chars: int = 5,
    max_prompt_chars: int = 2000,
    min_reply_chars: int = 5,
    max_reply_chars: int = 4000,
) -> tuple[list[dict], list[dict], dict]:
    """Read `source` (one or several) and return (train_pairs, eval_pairs, stats); see the module
    docstring for the rules.

    Raises DataError on bad input or when no training pair is left.
    """
    sources = [str(s) for s in ([source] if isinstance(source, (str, os.PathLike)) else source)]
    params = {
        "languages": _languages(languages),
        "depth": depth,
        "tree_states": _languages(tree_states, what="tree_states"),
        "limit": limit,
        "eval_limit": eval_limit,
        "eval_fraction": eval_fraction,
        "min_prompt_chars": min_prompt_chars,
        "max_prompt_chars": max_prompt_chars,
        "min_reply_chars": min_reply_chars,
        "max_reply_chars": max_reply_chars,
    }
    _check_params(params, sources)
    messages, read_info = read_sources(sources)
    filters = {k: v for k, v in params.items() if k in ("languages", "depth", "tree_states") or "_chars" in k}
    candidates, stats = pairs_from_messages(messages, **filters)

    held_out_splits = sorted({s for s in messages["split"].unique().to_pylist() if s in HELD_OUT_SPLITS})
    if held_out_splits:
        roots = messages.filter(
            pc.and_(pc.is_null(messages["parent_id"]), pc.is_in(messages["split"], pa.array(held_out_splits)))
        )
        held_out = set(roots["message_id"].to_pylist())
        is_held_out = lambda pair: pair["prompt_id"] in held_out  # noqa: E731
        method = {"method": "split", "splits": held_out_splits}
    else:
        is_held_out = lambda pair: _hash_fraction(pair["tree_id"]) < eval_fraction  # noqa: E731
        method = {"method": "tree_id_sha1", "fraction": eval_fraction}
    train = [p for p in candidates if not is_held_out(p)][:limit]
    evaluation = [p for p in candidates if is_held_out(p)][:eval_limit]
    if not train:
        reasons = ", ".join(f"{k} {v}" for k, v in stats["trees_skipped"].items()) or "none"
        raise DataError(
            f"{' + '.join(sources)}: no training pairs left ({len(candidates)} candidate pairs, "
            f"{len(evaluation)} held out; "
            f"trees skipped: {reasons}); check --languages, --tree_states and the length limits"
        )
    stats = {
        "source": " + ".join(sources),
        "sources": sources,
        "inputs": read_info["inputs"],
        "parameters": params,
        "duplicate_messages": read_info["duplicate_messages"],
        "trees_in_earlier_source": read_info["trees_in_earlier_source"],
        **stats,
        "held_out": method,
        "train": _summary(train),
        "eval": _summary(evaluation),
    }
    return train, evaluation, stats


def _hash_fraction(tree_id: str) -> float:
    return int.from_bytes(hashlib.sha1(tree_id.encode()).digest()[:8], "big") / 2**64


def _languages(languages, what: str = "languages") -> list[str]:
    """A list option given as a list, a string or comma-separated values, normalised and sorted."""
    if isinstance(languages, str):
        languages = [languages]
    out = sorted({w.strip().lower() for item in languages for w in item.split(",") if w.strip()})
    if not out:
        raise DataError(f"{what}: give at least one value, or 'all'")
    return out


def _check_params(p: dict, sources: list[str]) -> None:
    if not sources:
        raise DataError("source: give at least one Hub dataset id, file or folder")
    if p["depth"] not in DEPTHS:
        raise DataError(f"depth must be one of {', '.join(DEPTHS)}, got {p['depth']!r}")
    if p["limit"] < 1:
        raise DataError(f"limit must be at least 1, got {p['limit']}")
    if p["eval_limit"] is not None and p["eval_limit"] < 0:
        raise DataError(f"eval_limit must be 0 or more, got {p['eval_limit']}")
    if not 0 <= p["eval_fraction"] < 1:
        raise DataError(f"eval_fraction must be in [0, 1), got {p['eval_fraction']}")
    for side in ("prompt", "reply"):
        low, high = p[f"min_{side}_chars"], p[f"max_{side}_chars"]
        if low < 0 or high < low:
            raise DataError(
                f"min_{side}_chars/max_{side}_chars must satisfy 0 <= min <= max, got {low}/{high}"
            )


def _summary(pairs: list[dict]) -> dict:
    return {
        "pairs": len(pairs),
        "rank": sum(p["rule"] == "rank" for p in pairs),
        "likes": sum(p["rule"] == "likes" for p in pairs),
        "trees": len({p["tree_id"] for p in pairs}),
        "languages": dict(sorted(Counter(p["lang"] for p in pairs).items(), key=lambda kv: (-kv[1], kv[0]))),
        "depths": {str(k): v for k, v in sorted(Counter(p.get("depth", 0) for p in pairs).items())},
    }


def run(args: DataArguments) -> dict:
    """Build and write the pairs for `args`; return the stats."""
    options = {k: v for k, v in asdict(args).items() if k not in ("source", "output_dir", "test_fraction")}
    if args.test_fraction:
        from train.data.splits import write_splits

        return write_splits(args.output_dir, args.source, test_fraction=args.test_fraction, **options)
    train, evaluation, stats = build_pairs(args.source, **options)
    write_pairs(args.output_dir, train, evaluation, stats)
    return stats


def _report(stats: dict, output_dir: str, seconds: float) -> str:
    if "test" in stats:
        t, d, s = stats["train"], stats["dev"], stats["test"]
        return (
            f"read {stats['messages']:,} messages in {stats['trees']:,} trees from {stats['source']}\n"
            f"wrote {t['pairs']} train pairs ({t['trees']} trees), {d['pairs']} dev pairs ({d['trees']} trees) "
            f"and {s['pairs']} sealed-test pairs ({s['trees']} trees) to {output_dir} in {seconds:.1f}s"
        )
    t, e = stats["train"], stats["eval"]
    skipped = ", ".join(f"{k} {v}" for k, v in stats["trees_skipped"].items()) or "none"
    method = stats["held_out"]
    held_out = (
        f"{'/'.join(method['splits'])} split"
        if method["method"] == "split"
        else f"{method['fraction']:.0%} of trees by id hash"
    )
    lines = [
        f"read {stats['messages']:,} messages in {stats['trees']:,} trees from {stats['source']}",
        f"trees skipped: {skipped}",
        f"wrote {t['pairs']} train pairs ({t['rank']} by rank, {t['likes']} by likes) and "
        f"{e['pairs']} held-out pairs ({held_out}) to {output_dir} in {seconds:.1f}s",
    ]
    if t["pairs"] < stats["parameters"]["limit"]:
        lines.append(f"note: fewer training pairs than --limit {stats['parameters']['limit']}")
    if not e["pairs"]:
        lines.append("note: no held-out pairs; raise --eval_fraction for evaluation data")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import yaml

    from train.cli import require_train_extra

    require_train_extra("python -m train.data")
    from trl import TrlParser  # here, not at import: readers of pair files need no trl

    try:
        (args,) = TrlParser(DataArguments, prog="python -m train.data").parse_args_and_config(argv)
    except (OSError, ValueError, yaml.YAMLError) as e:  # --config: missing, not YAML, unknown keys
        print(f"error: {_first_line(e)}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        stats = run(args)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; no half-written file was left", file=sys.stderr)
        return 130
    print(_report(stats, args.output_dir, time.perf_counter() - start))
    return 0
