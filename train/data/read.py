"""Reading Open Assistant data: every source (Hub id, flat parquet/JSONL table, trees export) into
one pyarrow table of messages, ``MESSAGE_SCHEMA``; several sources with each tree taken once."""

from __future__ import annotations

import gzip
import json
import os
import re
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from train.data.pair_files import DataError, _first_line
from train.data.schemas import FLAT_OPTIONAL, FLAT_REQUIRED, MESSAGE_SCHEMA, TREE_REQUIRED

HELD_OUT_SPLITS = ("validation", "valid", "val", "test", "eval")
_SPLIT_NAME = re.compile(r"^(train|validation|valid|val|test|eval)(?:[-_.]|$)", re.IGNORECASE)
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_DATA_SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz")


# The one internal form every source is normalised into.
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
