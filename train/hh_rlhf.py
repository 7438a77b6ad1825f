"""Anthropic HH-RLHF dialogues -> preference pairs in the project's pair format, for the judge.

    python -m train.hh_rlhf --source ../shared/data/hh-rlhf-helpful --output-dir data/hh-rlhf

HH-RLHF shares nothing with Open Assistant, which is the point: a judge trained on it was never trained
on the data the policy learns from. Each line holds two whole dialogues, ``"\\n\\nHuman: ...\\n\\nAssistant:
..."``, that differ only in the last assistant turn: the shared turns become the prompt (a list of
messages, as multi-turn Open Assistant pairs are), the two last turns become chosen and rejected.
Lines where the dialogues differ before the last turn, or where a last turn is empty, are counted
and skipped. The held-out slice is chosen by a hash of the chosen dialogue, so it never moves.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from train.data import DataError, write_pairs

_TURN = re.compile(r"\n\n(Human|Assistant): ")
ROLES = {"Human": "user", "Assistant": "assistant"}


@dataclass
class HHArguments:
    output_dir: str = field(metadata={"help": "Folder for train.jsonl, eval.jsonl and stats.json."})
    source: str = field(
        default="../shared/data/hh-rlhf-helpful",
        metadata={"help": "An HH-RLHF *.jsonl[.gz] file, or a folder of them."},
    )
    limit: int | None = field(default=None, metadata={"help": "Training pairs to keep (hash order)."})
    eval_limit: int | None = field(default=None, metadata={"help": "Held-out pairs to keep."})
    eval_fraction: float = field(default=0.1, metadata={"help": "Share of pairs held out."})


def is_hh_rlhf(source: str | Path) -> bool:
    """A file or folder of HH-RLHF dialogues (rather than an Open Assistant export)."""
    files = _files(Path(source)) if Path(source).exists() else []
    if not files:
        return False
    with _open(files[0]) as f:
        first = json.loads(f.readline() or "{}")
    return isinstance(first.get("chosen"), str) and first["chosen"].startswith("\n\nHuman: ")


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.glob("*.jsonl*") if p.name.endswith((".jsonl", ".jsonl.gz")))


def _open(path: Path):
    return (
        gzip.open(path, "rt", encoding="utf-8") if path.name.endswith(".gz") else open(path, encoding="utf-8")
    )


def split_dialogue(text: str) -> list[dict]:
    parts = _TURN.split(text)
    if parts[0].strip():
        raise ValueError("text before the first turn")
    return [
        {"role": ROLES[role], "content": content.strip()}
        for role, content in zip(parts[1::2], parts[2::2], strict=True)
    ]


def pair_from_line(obj: dict) -> tuple[dict | None, str | None]:
    """(pair, None), or (None, the reason it was skipped)."""
    try:
        chosen, rejected = split_dialogue(obj["chosen"]), split_dialogue(obj["rejected"])
    except (KeyError, TypeError, ValueError):
        return None, "malformed"
    if not chosen or chosen[-1]["role"] != "assistant" or not rejected or rejected[-1]["role"] != "assistant":
        return None, "no_final_answer"
    if chosen[:-1] != rejected[:-1] or not chosen[:-1]:
        return None, "different_prompts"
    if not chosen[-1]["content"] or not rejected[-1]["content"]:
        return None, "empty_answer"
    if chosen[-1]["content"] == rejected[-1]["content"]:
        return None, "identical_answers"
    key = hashlib.sha1(obj["chosen"].encode()).hexdigest()
    return {
        "prompt": chosen[:-1],
        "chosen": chosen[-1]["content"],
        "rejected": rejected[-1]["content"],
        "tree_id": f"hh-{key[:16]}",  # the pair's own id: HH-RLHF has no trees
        "depth": len(chosen) - 2,
        "rule": "hh-rlhf",
    }, None


def build_pairs(
    source: str | Path, limit: int | None = None, eval_limit: int | None = None, eval_fraction: float = 0.1
) -> tuple[list[dict], list[dict], dict]:
    files = _files(Path(source))
    if not files:
        raise DataError(f"{source}: no HH-RLHF *.jsonl or *.jsonl.gz files here")
    pairs, skipped, inputs = [], Counter(), []
    for path in files:
        with _open(path) as f:
            count = 0
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(
                        f"{path}:{lineno}: malformed JSON ({e.msg}); fix or remove that line"
                    ) from None
                pair, why = pair_from_line(obj)
                if pair is None:
                    skipped[why] += 1
                else:
                    pair["source_file"] = path.name
                    pairs.append(pair)
                    count += 1
        inputs.append({"input": path.name, "pairs": count})
    pairs.sort(key=lambda p: p["tree_id"])  # a hash order: files interleave, nothing is picked by hand
    # the held-out slice by hash, so it never moves when limits change
    is_held_out = lambda p: int(p["tree_id"][3:], 16) / 16**16 < eval_fraction  # noqa: E731
    train = [p for p in pairs if not is_held_out(p)][:limit]
    evaluation = [p for p in pairs if is_held_out(p)][:eval_limit]
    stats = {
        "source": str(source),
        "inputs": inputs,
        "parameters": {"limit": limit, "eval_limit": eval_limit, "eval_fraction": eval_fraction},
        "skipped": dict(sorted(skipped.items())),
        "train": {"pairs": len(train)},
        "eval": {"pairs": len(evaluation)},
    }
    return train, evaluation, stats


def main(argv: list[str] | None = None) -> int:
    from train.cli import require_train_extra

    require_train_extra("python -m train.hh_rlhf")
    from trl import TrlParser

    (args,) = TrlParser(HHArguments, prog="python -m train.hh_rlhf").parse_args_and_config(argv)
    try:
        train, evaluation, stats = build_pairs(args.source, args.limit, args.eval_limit, args.eval_fraction)
        write_pairs(args.output_dir, train, evaluation, stats)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(train)} train and {len(evaluation)} held-out HH-RLHF pairs to {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
