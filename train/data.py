"""Open Assistant conversations -> preference pairs (prompt, chosen, rejected).

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
``eval.jsonl`` (one pair a line: ``PAIR_KEYS``) and ``stats.json``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import sys
import time
import zlib
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

DEFAULT_SOURCE = "OpenAssistant/oasst1"
PAIR_KEYS = (
    "prompt",
    "chosen",
    "rejected",
    "tree_id",
    "prompt_id",
    "parent_id",
    "depth",
    "chosen_id",
    "rejected_id",
    "lang",
    "chosen_rank",
    "rejected_rank",
    "chosen_likes",
    "rejected_likes",
    "rule",
)
DEPTHS = ("first", "all")  # the initial prompt's replies only, or ranked groups at every depth
DEFAULT_TREE_STATES = ("ready_for_export",)  # trees the Open Assistant team exported as finished
ROLES = {"prompter": "user", "assistant": "assistant"}
HELD_OUT_SPLITS = ("validation", "valid", "val", "test", "eval")
_SPLIT_NAME = re.compile(r"^(train|validation|valid|val|test|eval)(?:[-_.]|$)", re.IGNORECASE)
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_DATA_SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz")
PROGRESS_TREES = 5_000  # below this many trees (or 8 MB of JSONL) a progress bar is noise

# The one internal form every source is normalised into.
MESSAGE_SCHEMA = pa.schema(
    [
        ("message_id", pa.string()),
        ("parent_id", pa.string()),
        ("tree_id", pa.string()),
        ("text", pa.string()),
        ("role", pa.string()),
        ("lang", pa.string()),
        ("deleted", pa.bool_()),
        ("review_result", pa.bool_()),
        ("rank", pa.int64()),
        ("likes", pa.int64()),
        ("split", pa.string()),
        ("tree_state", pa.string()),
    ]
)
# Flat (Hub schema) columns we need; the rest (user_id, labels, detoxify, ...) is ignored.
FLAT_REQUIRED = ("message_id", "parent_id", "message_tree_id", "text", "role")
FLAT_OPTIONAL = ("lang", "deleted", "review_result", "rank", "emojis", "tree_state")
TREE_REQUIRED = ("message_id", "text", "role")


class DataError(ValueError):
    """Bad input or an empty result; the message names the file (and line) and what is wrong."""


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
    min_prompt_chars: int = field(default=5, metadata={"help": "Shortest prompt kept (characters)."})
    max_prompt_chars: int = field(default=2000, metadata={"help": "Longest prompt kept (characters)."})
    min_reply_chars: int = field(default=5, metadata={"help": "Shortest reply kept (characters)."})
    max_reply_chars: int = field(default=4000, metadata={"help": "Longest reply kept (characters)."})


# ----------------------------------------------------------------------------------------------
# Reading: every source -> one pyarrow table with MESSAGE_SCHEMA


def read_messages(source: str | os.PathLike) -> tuple[pa.Table, dict]:
    """Load `source` into the normalised message table (MESSAGE_SCHEMA), repeated messages dropped.

    Also returns {"inputs": [one dict per file or split read], "duplicate_messages": copies dropped}.
    """
    path = Path(source)
    if path.exists():
        if path.is_dir():
            files = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.name.endswith(_DATA_SUFFIXES)
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not files:
                raise DataError(f"{path}: no .parquet, .jsonl or .jsonl.gz files in this folder")
            parts = [_read_file(f, _split_of(f.relative_to(path))) for f in files]
        else:
            parts = [_read_file(path, None)]
    elif _HUB_ID.match(str(source)) and not str(source).endswith(_DATA_SUFFIXES + (".json", ".gz")):
        parts = _read_hub(str(source))
    else:
        raise DataError(f"{source}: no such file or folder (and not a Hub dataset id like 'owner/name')")
    table = pa.concat_tables([t for t, _ in parts])
    table, duplicates = _drop_duplicates(table, str(source))
    return table, {"inputs": [info for _, info in parts], "duplicate_messages": duplicates}


def _drop_duplicates(table: pa.Table, source: str) -> tuple[pa.Table, int]:
    """Keep the first copy of a message given twice identically (real exports repeat trees); a
    message id whose copies differ is an error, since we could not tell which one is right."""
    ids = table["message_id"]
    if pc.count_distinct(ids).as_py() == len(ids):
        return table, 0
    first: dict[str, int] = {}
    keep, repeats = [], []
    for i, message_id in enumerate(ids.to_pylist()):
        if message_id in first:
            repeats.append((first[message_id], i))
        else:
            first[message_id] = i
            keep.append(i)
    originals = table.take([a for a, _ in repeats]).to_pylist()
    copies = table.take([b for _, b in repeats]).to_pylist()
    for original, copy in zip(originals, copies, strict=True):
        if original != copy:
            field_ = next(k for k in original if original[k] != copy[k])
            raise DataError(
                f"{source}: message_id {original['message_id']} appears twice with different "
                f"{field_!r}; remove one copy"
            )
    return table.take(keep), len(repeats)


def _split_of(relative: Path) -> str | None:
    for part in reversed(relative.parts):  # the file's own name first, then its folders
        match = _SPLIT_NAME.match(part)
        if match:
            return match.group(1).lower()
    return None


def _read_file(path: Path, split: str | None) -> tuple[pa.Table, dict]:
    if path.name.endswith(".parquet"):
        table = _read_parquet(path, split)
        fmt = "flat"
    else:
        fmt, table = _read_jsonl(path, split)
    return table, {"input": str(path), "format": fmt, "split": split, "messages": table.num_rows}


def _read_parquet(path: Path, split: str | None) -> pa.Table:
    try:
        parquet = pq.ParquetFile(path)  # not pq.read_table: that imports pyarrow.dataset (+0.3 s)
        names = parquet.schema_arrow.names
        table = parquet.read(columns=[c for c in FLAT_REQUIRED + FLAT_OPTIONAL if c in names])
    except (pa.ArrowException, OSError) as e:
        raise DataError(
            f"{path}: not a readable parquet file ({_first_line(e)}); is it truncated? write it again"
        ) from None
    return _normalise_flat(table, str(path), split)


def _read_hub(name: str) -> list[tuple[pa.Table, dict]]:
    try:
        import datasets

        dataset = datasets.load_dataset(name)
    except Exception as e:  # the Hub raises many kinds; the user needs one line either way
        raise DataError(
            f"{name}: not a local path, and loading it from the Hugging Face Hub failed "
            f"({type(e).__name__}: {_first_line(e)}); check the id, or pass a local file or folder"
        ) from None
    parts = []
    for split in sorted(dataset):
        table = dataset[split].with_format("arrow")[:]
        where = f"{name}[{split}]"
        normalised = _normalise_flat(table, where, split)
        parts.append(
            (normalised, {"input": where, "format": "hub", "split": split, "messages": normalised.num_rows})
        )
    return parts


def _normalise_flat(table: pa.Table, where: str, split: str | None) -> pa.Table:
    """A flat table in the Hub's schema (arrow) -> MESSAGE_SCHEMA, column by column (no per-row pandas)."""
    missing = [c for c in FLAT_REQUIRED if c not in table.column_names]
    if missing:
        raise DataError(
            f"{where}: missing required column(s) {', '.join(missing)} "
            f"(a flat oasst table needs {', '.join(FLAT_REQUIRED)})"
        )
    n = table.num_rows

    def column(name, type_, fill=None):
        if name not in table.column_names:
            return pa.nulls(n, type_) if fill is None else pa.array([fill] * n, type_)
        try:
            values = pc.cast(table[name], type_)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            raise DataError(
                f"{where}: column {name!r} has type {table[name].type}, expected {type_}"
            ) from None
        return values if fill is None else pc.fill_null(values, fill)

    for name in ("message_id", "text", "role"):
        if table[name].null_count:
            raise DataError(f"{where}: column {name!r} has null values")
    columns = {
        "message_id": column("message_id", pa.string()),
        "parent_id": column("parent_id", pa.string()),
        "tree_id": column("message_tree_id", pa.string()),
        "text": column("text", pa.string()),
        "role": column("role", pa.string()),
        "lang": column("lang", pa.string()),
        "deleted": column("deleted", pa.bool_(), False),
        "review_result": column("review_result", pa.bool_()),
        "rank": column("rank", pa.int64()),
        "likes": _likes_column(table, where),
        "split": pa.array([split] * n, pa.string()),
        "tree_state": column("tree_state", pa.string()),
    }
    return pa.table(columns, schema=MESSAGE_SCHEMA)


def _likes_column(table: pa.Table, where: str) -> pa.Array:
    n = table.num_rows
    if "emojis" not in table.column_names:
        return pa.array([0] * n, pa.int64())
    emojis = table["emojis"].combine_chunks()
    if pa.types.is_struct(emojis.type) and {"name", "count"} <= {f.name for f in emojis.type}:
        # {"name": [...], "count": [...]}: sum the counts named "+1", vectorised.
        names, counts = emojis.field("name"), emojis.field("count")
        if pc.all(pc.equal(pc.list_value_length(names), pc.list_value_length(counts))).as_py() is False:
            raise DataError(f"{where}: column 'emojis' has name and count lists of different lengths")
        is_like = pc.fill_null(pc.equal(pc.list_flatten(names), "+1"), False)
        owners = pc.filter(pc.list_parent_indices(names), is_like).to_numpy()
        likes_of = pc.fill_null(pc.filter(pc.list_flatten(counts), is_like), 0).to_numpy()
        import numpy as np

        likes = np.bincount(owners, weights=likes_of, minlength=n).astype("int64")
        return pc.if_else(emojis.is_valid(), pa.array(likes), 0)
    try:
        return pa.array([_likes(v) for v in emojis.to_pylist()], pa.int64())
    except (TypeError, ValueError):
        raise DataError(f"{where}: column 'emojis' has type {emojis.type}, expected emoji counts") from None


def _likes(emojis) -> int:
    """The "+1" count from either emoji form: {"name": [...], "count": [...]} or {name: count} or null."""
    if emojis is None:
        return 0
    if isinstance(emojis, list):  # a pyarrow map column
        emojis = dict(emojis)
    if not isinstance(emojis, dict):
        raise TypeError("emojis must be an object or null")
    if isinstance(emojis.get("name"), list) and isinstance(emojis.get("count"), list):
        return int(sum(c or 0 for n, c in zip(emojis["name"], emojis["count"], strict=True) if n == "+1"))
    value = emojis.get("+1") or 0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("emoji counts must be numbers")
    return int(value)


def _read_jsonl(path: Path, split: str | None) -> tuple[str, pa.Table]:
    """JSONL (optionally gzipped), trees or flat, parsed line by line with line numbers in errors."""
    columns: dict[str, list] = {name: [] for name in MESSAGE_SCHEMA.names}
    fmt = "trees" if path.name.endswith((".trees.jsonl", ".trees.jsonl.gz")) else None
    opener = gzip.open if path.name.endswith(".gz") else open
    lineno = 0
    size = path.stat().st_size
    bar = tqdm(
        total=size,  # bytes on disk; for .gz the compressed bytes read so far
        unit="B",
        unit_scale=True,
        desc=path.name,
        disable=True if size < 8_000_000 else None,
        leave=False,
    )
    try:
        with opener(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if lineno % 1024 == 0:
                    bar.update((f.fileobj if opener is gzip.open else f).tell() - bar.n)
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise DataError(
                        f"{path}:{lineno}: malformed JSON ({_first_line(e)}); fix or remove that line"
                    ) from None
                if not isinstance(obj, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
                if fmt is None:
                    fmt = "trees" if isinstance(obj.get("prompt"), dict) else "flat"
                where = f"{path}:{lineno}"
                if fmt == "trees":
                    _add_tree(obj, where, split, columns)
                else:
                    _add_message(obj, where, split, columns, FLAT_REQUIRED, None, None)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(
            f"{path}: truncated or corrupt gzip data after line {lineno} ({_first_line(e)}); "
            "download or compress it again"
        ) from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({_first_line(e)})") from None
    finally:
        bar.close()
    if not columns["message_id"]:
        raise DataError(f"{path}: empty file, no messages")
    return fmt, pa.table(columns, schema=MESSAGE_SCHEMA)


def _add_tree(tree: dict, where: str, split: str | None, columns: dict) -> None:
    prompt = tree.get("prompt")
    if not isinstance(prompt, dict):
        raise DataError(f"{where}: a trees export line needs a 'prompt' object")
    tree_id = tree.get("message_tree_id") or prompt.get("message_id")
    state = tree.get("tree_state")
    if state is not None and not isinstance(state, str):
        raise DataError(f"{where}: field 'tree_state' must be a string or null, got {state!r:.60}")
    stack = [(prompt, None)]
    while stack:  # iterative: real trees can be deep
        message, parent_id = stack.pop()
        _add_message(message, where, split, columns, TREE_REQUIRED, tree_id, parent_id, state)
        replies = message.get("replies") or []
        if not isinstance(replies, list):
            raise DataError(f"{where}: 'replies' of message {message['message_id']} must be a list")
        for reply in reversed(replies):
            if not isinstance(reply, dict):
                raise DataError(f"{where}: a reply of message {message['message_id']} is not an object")
            stack.append((reply, message["message_id"]))


def _add_message(
    m: dict, where: str, split, columns: dict, required, tree_id, parent_id, tree_state=None
) -> None:
    """Validate one message object and append its normalised fields; tree_id/parent_id/tree_state come
    from the tree in trees exports (tree_id None = take them from the message, as in flat tables)."""
    missing = [k for k in required if k not in m]
    if missing:
        raise DataError(f"{where}: message is missing required field(s) {', '.join(missing)}")

    def typed(key, types, what, nullable=True):
        value = m.get(key)
        if (value is None and nullable) or (isinstance(value, types) and not isinstance(value, bool)):
            return value
        if bool in types and isinstance(value, bool):
            return value
        raise DataError(f"{where}: field {key!r} must be {what}, got {value!r:.60}")

    message_id = typed("message_id", (str,), "a string", nullable=False)
    columns["message_id"].append(message_id)
    if tree_id is None:
        columns["parent_id"].append(typed("parent_id", (str,), "a string or null"))
        columns["tree_id"].append(typed("message_tree_id", (str,), "a string or null"))
        columns["tree_state"].append(typed("tree_state", (str,), "a string or null"))
    else:
        columns["parent_id"].append(parent_id)
        columns["tree_id"].append(tree_id)
        columns["tree_state"].append(tree_state)
    columns["text"].append(typed("text", (str,), "a string", nullable=False))
    columns["role"].append(typed("role", (str,), "a string", nullable=False))
    columns["lang"].append(typed("lang", (str,), "a string or null"))
    columns["deleted"].append(bool(typed("deleted", (bool,), "true, false or null")))
    columns["review_result"].append(typed("review_result", (bool,), "true, false or null"))
    rank = typed("rank", (int, float), "an integer or null")
    if isinstance(rank, float):
        if not rank.is_integer():
            raise DataError(f"{where}: field 'rank' must be an integer or null, got {rank!r}")
        rank = int(rank)
    columns["rank"].append(rank)
    try:
        columns["likes"].append(_likes(m.get("emojis")))
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: field 'emojis' is malformed ({e})") from None
    columns["split"].append(split)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


# ----------------------------------------------------------------------------------------------
# Pairing


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


def read_sources(sources: list[str]) -> tuple[pa.Table, dict]:
    """Several sources as one table: a tree given by more than one source (oasst2 contains oasst1)
    is taken whole from the first source that has it, so no tree is counted twice."""
    tables, info = [], {"inputs": [], "duplicate_messages": 0, "trees_in_earlier_source": 0}
    seen = pa.array([], pa.string())
    for source in sources:
        table, read = read_messages(source)
        repeated = pc.is_in(table["tree_id"], seen)
        info["trees_in_earlier_source"] += pc.count_distinct(pc.filter(table["tree_id"], repeated)).as_py()
        table = table.filter(pc.invert(pc.fill_null(repeated, False)))
        seen = pa.concat_arrays([seen, pc.unique(table["tree_id"]).drop_null()])
        tables.append(table)
        info["inputs"] += read["inputs"]
        info["duplicate_messages"] += read["duplicate_messages"]
    return pa.concat_tables(tables), info


def pairs_from_messages(
    messages: pa.Table,
    *,
    languages: list[str],
    depth: str = "first",
    tree_states: list[str] | tuple[str, ...] = DEFAULT_TREE_STATES,
    min_prompt_chars: int,
    max_prompt_chars: int,
    min_reply_chars: int,
    max_reply_chars: int,
) -> tuple[list[dict], dict]:
    """All candidate pairs of a normalised message table (rules 1-4), best first, and the counting stats."""
    roots = messages.filter(pc.is_null(messages["parent_id"]))
    # The groups: the initial prompts, or (depth "all") every prompter message someone answered.
    if depth == "first":
        heads = roots
    else:
        answered = pc.unique(messages["parent_id"]).drop_null()
        is_head = pc.and_(pc.equal(messages["role"], "prompter"), pc.is_in(messages["message_id"], answered))
        heads = messages.filter(pc.or_(is_head, pc.is_null(messages["parent_id"])))
    reply_columns = ["message_id", "parent_id", "text", "role", "deleted", "review_result", "rank", "likes"]
    replies_of = defaultdict(list)
    for reply in _rows(messages.filter(pc.is_in(messages["parent_id"], heads["message_id"])), reply_columns):
        replies_of[reply["parent_id"]].append(reply)
    # A deeper group's prompt is its conversation: every message from the initial prompt down.
    context_columns = ["message_id", "parent_id", "text", "role", "deleted", "review_result"]
    by_id = {} if depth == "first" else {m["message_id"]: m for m in _rows(messages, context_columns)}

    trees_skipped: Counter = Counter()
    groups_skipped: Counter = Counter()
    messages_skipped: Counter = Counter()
    tree_ids = set(pc.unique(messages["tree_id"]).to_pylist())
    rooted = set(roots["tree_id"].to_pylist()) | set(roots["message_id"].to_pylist())
    trees_skipped["no_initial_prompt"] = len(tree_ids - rooted - {None})
    wanted = None if "all" in languages else tuple(languages)
    states = None if "all" in tree_states else set(tree_states)

    live_roots = {}
    root_rows = roots.select(
        [
            "message_id",
            "parent_id",
            "tree_id",
            "text",
            "role",
            "lang",
            "deleted",
            "review_result",
            "tree_state",
        ]
    ).to_pylist()
    for prompt in root_rows:
        reason = _tree_skip(prompt, wanted, states)
        if reason:
            trees_skipped[reason] += 1
        else:
            live_roots[prompt["message_id"]] = prompt

    candidates, root_reason, paired_roots = [], {}, set()
    head_rows = root_rows if depth == "first" else [by_id[i] for i in heads["message_id"].to_pylist()]
    for head in tqdm(
        head_rows,
        desc="groups",
        unit=" groups",
        leave=False,
        disable=True if len(head_rows) < PROGRESS_TREES else None,  # None: only on a terminal
    ):
        is_root = head["parent_id"] is None
        path = [head] if is_root else _conversation(head, by_id)
        root = live_roots.get(path[0]["message_id"]) if path else None
        if root is None:
            continue  # its tree was skipped (and counted) above, or the path is broken
        reason = _group_skip(path, min_prompt_chars, max_prompt_chars)
        if not reason:
            eligible = []
            for reply in replies_of.get(head["message_id"], ()):
                why = _reply_skip(reply, min_reply_chars, max_reply_chars)
                if why:
                    messages_skipped[why] += 1
                else:
                    eligible.append(reply)
            pair = _pair(root, path, eligible, depth) if len(eligible) >= 2 else None
            if pair is not None:
                candidates.append(pair)
                paired_roots.add(root["message_id"])
                continue
            reason = "fewer_than_two_replies" if len(eligible) < 2 else "no_preference"
        groups_skipped[reason] += 1
        if is_root:
            root_reason[head["message_id"]] = reason
    for root_id in live_roots.keys() - paired_roots:  # a tree that gave no pair, by its first turn
        trees_skipped[root_reason.get(root_id, "fewer_than_two_replies")] += 1

    candidates.sort(key=_quality_key)
    for pair in candidates:
        del pair["_gap"], pair["_compared"]
    stats = {
        "messages": messages.num_rows,
        "trees": roots.num_rows + trees_skipped["no_initial_prompt"],
        "trees_by_state": dict(sorted(Counter(r["tree_state"] or "unknown" for r in root_rows).items())),
        "candidates": {
            "total": len(candidates),
            "trees": len(paired_roots),
            "rank": sum(p["rule"] == "rank" for p in candidates),
            "likes": sum(p["rule"] == "likes" for p in candidates),
        },
        "trees_skipped": dict(sorted((k, v) for k, v in trees_skipped.items() if v)),
        "groups_skipped": dict(sorted(groups_skipped.items())),
        "messages_skipped": dict(sorted(messages_skipped.items())),
    }
    return candidates, stats


def _rows(table: pa.Table, columns: list[str]) -> list[dict]:
    """Rows as dicts, built column by column (several times faster than ``Table.to_pylist``)."""
    return [
        dict(zip(columns, values, strict=True))
        for values in zip(*(table[c].to_pylist() for c in columns), strict=True)
    ]


def _tree_skip(prompt: dict, wanted: tuple | None, states: set | None) -> str | None:
    lang = (prompt["lang"] or "").lower()
    if states is not None and prompt["tree_state"] is not None and prompt["tree_state"] not in states:
        return "tree_state"
    if prompt["role"] != "prompter":
        return "prompt_not_prompter"
    if prompt["deleted"]:
        return "prompt_deleted"
    if prompt["review_result"] is False:
        return "prompt_failed_review"
    if wanted is not None and not any(lang == w or lang.startswith(w + "-") for w in wanted):
        return "language"
    return None


def _conversation(head: dict, by_id: dict) -> list[dict]:
    """The messages from the initial prompt down to ``head``; empty when a link is missing (a fragment)."""
    path = [head]
    while path[-1]["parent_id"] is not None:
        parent = by_id.get(path[-1]["parent_id"])
        if parent is None:
            return []
        path.append(parent)
    return path[::-1]


def _group_skip(path: list[dict], min_chars: int, max_chars: int) -> str | None:
    head = path[-1]
    if head["role"] != "prompter":
        return "prompt_not_prompter"
    if any(m["deleted"] or m["review_result"] is False for m in path):
        return "conversation_removed"  # a removed message cannot be part of a prompt
    chars = len(head["text"].strip())
    if chars < min_chars:
        return "prompt_too_short"
    if chars > max_chars:
        return "prompt_too_long"
    return None


def _reply_skip(reply: dict, min_chars: int, max_chars: int) -> str | None:
    if reply["role"] != "assistant":
        return "not_assistant"
    if reply["deleted"]:
        return "deleted"
    if reply["review_result"] is False:
        return "failed_review"
    chars = len(reply["text"].strip())
    if chars < min_chars:
        return "reply_too_short"
    if chars > max_chars:
        return "reply_too_long"
    return None


def _pair(root: dict, path: list[dict], eligible: list[dict], depth: str) -> dict | None:
    ranked = sorted(
        (r for r in eligible if r["rank"] is not None),
        key=lambda r: (r["rank"], -r["likes"], r["message_id"]),
    )
    if len(ranked) >= 2 and ranked[0]["rank"] < ranked[-1]["rank"]:
        best, worst, rule = ranked[0], ranked[-1], "rank"
        gap, compared = worst["rank"] - best["rank"], len(ranked)
    else:
        by_likes = sorted(eligible, key=lambda r: (-r["likes"], r["message_id"]))
        best, worst, rule = by_likes[0], by_likes[-1], "likes"
        gap, compared = best["likes"] - worst["likes"], len(by_likes)
        if gap <= 0:
            return None
    if depth == "first":
        prompt = root["text"].strip()
    else:  # TRL's conversational form, rendered by the one chat template everywhere
        prompt = [{"role": ROLES[m["role"]], "content": m["text"].strip()} for m in path]
    return {
        "prompt": prompt,
        "chosen": best["text"].strip(),
        "rejected": worst["text"].strip(),
        "tree_id": root["tree_id"] or root["message_id"],
        "prompt_id": root["message_id"],
        "parent_id": path[-1]["message_id"],
        "depth": len(path) - 1,
        "chosen_id": best["message_id"],
        "rejected_id": worst["message_id"],
        "lang": root["lang"],
        "chosen_rank": best["rank"],
        "rejected_rank": worst["rank"],
        "chosen_likes": best["likes"],
        "rejected_likes": worst["likes"],
        "rule": rule,
        "_gap": gap,
        "_compared": compared,
    }


def _quality_key(pair: dict):
    return (
        pair["rule"] != "rank",
        -pair["_gap"],
        -pair["_compared"],
        pair["tree_id"],
        pair["depth"],
        pair["prompt_id"],
        pair["parent_id"],
    )


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


# ----------------------------------------------------------------------------------------------
# Writing and reading pair files


PAIR_FILES = ("train.jsonl", "eval.jsonl", "stats.json")


def write_pairs(
    output_dir: str | os.PathLike, train: list[dict], evaluation: list[dict], stats: dict
) -> None:
    """Write train.jsonl, eval.jsonl and stats.json together or not at all: the folder is replaced whole,
    so it must hold nothing else (a reader never sees new pairs beside old stats)."""
    from assistant.atomic import replace_folder

    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: cannot create the output folder (a file is in the way)")
    others = sorted(p.name for p in out.iterdir() if p.name not in PAIR_FILES) if out.is_dir() else []
    if others:
        raise DataError(f"{out}: holds other files ({', '.join(others[:3])}); give a new or empty folder")
    try:
        with replace_folder(out) as tmp:
            for name, rows in (("train.jsonl", train), ("eval.jsonl", evaluation)):
                with open(tmp / name, "w", encoding="utf-8") as f:
                    f.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in rows)
            (tmp / "stats.json").write_text(
                json.dumps(stats, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
            )
    except OSError as e:
        raise DataError(f"{out}: cannot write ({_first_line(e)})") from None


def _is_prompt(prompt) -> bool:
    if isinstance(prompt, str):
        return True
    return (
        isinstance(prompt, list)
        and bool(prompt)
        and all(isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") for m in prompt)
    )


def prompt_messages(prompt: str | list[dict]) -> list[dict]:
    """A pair's prompt as chat messages: a first-turn prompt is one user message."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def load_pairs(path: str | os.PathLike) -> list[dict]:
    """Read a pair file written by this module (train.jsonl or eval.jsonl) into a list of dicts."""
    path = Path(path)
    pairs = []
    try:
        with open(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    pair = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise DataError(f"{path}:{lineno}: malformed JSON ({_first_line(e)})") from None
                if not (
                    isinstance(pair, dict)
                    and all(isinstance(pair.get(k), str) for k in ("chosen", "rejected"))
                    and _is_prompt(pair.get("prompt"))
                ):
                    raise DataError(
                        f"{path}:{lineno}: a pair needs string fields chosen and rejected, and a prompt "
                        "that is a string or a list of {role, content} messages"
                    )
                pairs.append(pair)
    except OSError as e:
        raise DataError(
            f"{path}: cannot read pair file ({_first_line(e)}); run python -m train.data first"
        ) from None
    return pairs


# ----------------------------------------------------------------------------------------------
# CLI


def run(args: DataArguments) -> dict:
    """Build and write the pairs for `args`; return the stats."""
    options = {k: v for k, v in asdict(args).items() if k not in ("source", "output_dir")}
    train, evaluation, stats = build_pairs(args.source, **options)
    write_pairs(args.output_dir, train, evaluation, stats)
    return stats


def _report(stats: dict, output_dir: str, seconds: float) -> str:
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
    from trl import TrlParser  # here, not at import: readers of pair files need no trl

    try:
        (args,) = TrlParser(DataArguments).parse_args_and_config(argv)
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


if __name__ == "__main__":
    sys.exit(main())
