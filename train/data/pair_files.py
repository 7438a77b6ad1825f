"""Pair files: the one format every step reads (train.jsonl / eval.jsonl), and its errors.

A pair is one JSON object a line: ``prompt`` (a string, or a conversation as a list of
``{"role", "content"}`` messages), ``chosen``, ``rejected``, and where it came from (``PAIR_KEYS``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

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


class DataError(ValueError):
    """Bad input or an empty result; the message names the file (and line) and what is wrong."""


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


PAIR_FILES = ("train.jsonl", "eval.jsonl", "stats.json")
SPLIT_FILES = ("train.jsonl", "dev.jsonl", "test.jsonl", "stats.json")  # three splits (train.data.splits)


def write_pairs(
    output_dir: str | os.PathLike, train: list[dict], evaluation: list[dict], stats: dict
) -> None:
    """Write train.jsonl, eval.jsonl and stats.json together or not at all (see `write_files`)."""
    write_files(output_dir, {"train.jsonl": train, "eval.jsonl": evaluation}, stats)


def write_files(output_dir: str | os.PathLike, files: dict[str, list[dict]], stats: dict) -> None:
    """Write each pair file of `files` and stats.json together or not at all: the folder is replaced whole,
    so it must hold nothing else (a reader never sees new pairs beside old stats)."""
    from assistant.atomic import replace_folder

    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: cannot create the output folder (a file is in the way)")
    known = {*PAIR_FILES, *SPLIT_FILES}
    others = sorted(p.name for p in out.iterdir() if p.name not in known) if out.is_dir() else []
    if others:
        raise DataError(f"{out}: holds other files ({', '.join(others[:3])}); give a new or empty folder")
    try:
        with replace_folder(out) as tmp:
            for name, rows in files.items():
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
