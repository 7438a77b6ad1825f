"""Fixtures for tests/test_data.py: a small hand-made oasst trees export, and a converter from the trees
form to the Hub's flat table written independently of train/data.py (so the tests compare two codes).

    python tests/_helpers_data.py   # regenerates tests/fixtures/data_mini.{trees,flat}.jsonl
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from train.data.schemas import OASST1_HUB_SCHEMA

FIXTURES = Path(__file__).parent / "fixtures"
MINI_TREES_FILE = FIXTURES / "data_mini.trees.jsonl"
MINI_FLAT_FILE = FIXTURES / "data_mini.flat.jsonl"
# Real data committed with the tests (tests/data/README.md: what, from where, licence), and the full
# files they were cut from, which only the tests of the published counts need.
SUBSETS = Path(__file__).resolve().parent / "data"
SAMPLE = SUBSETS / "oasst2_sample.subset.trees.jsonl.gz"
OASST1_EN = SUBSETS / "oasst1-validation-en.subset.jsonl.gz"  # whole trees of oasst1 validation, English
HH = SUBSETS / "hh-rlhf-helpful"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def full_data(name: str) -> Path:
    """A full file of ../shared/data, or the test is skipped with one line saying what to put where."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"needs the full {name} in {SHARED_DATA} (tests/data/README.md says where it comes from)")
    return path


def message(
    mid,
    text,
    role="assistant",
    *,
    lang="en",
    rank=None,
    likes=0,
    emojis=None,
    deleted=False,
    review_result=True,
    replies=(),
    **extra,
):
    if emojis is None and likes:
        emojis = {"+1": likes}
    return {
        "message_id": mid,
        "parent_id": None,
        "user_id": f"user-{mid}",
        "created_date": "2023-02-05T10:00:00.000000+00:00",
        "text": text,
        "role": role,
        "lang": lang,
        "review_count": 3,
        "review_result": review_result,
        "deleted": deleted,
        "rank": rank,
        "synthetic": False,
        "model_name": None,
        "emojis": emojis,
        "replies": list(replies),
        "labels": {"quality": {"value": 0.5, "count": 3}},
        "events": None,
        "detoxify": None,
        "message_tree_id": None,
        "tree_state": None,
        **extra,
    }


def tree(tid, prompt_text, replies, *, lang="en", **prompt_kw):
    """One tree; reply i gets id f"{tid}-a{i}" unless it has one. Inner message_tree_id stays null, as
    in real exports."""
    prompt = message(tid, prompt_text, "prompter", lang=lang, replies=replies, **prompt_kw)

    def link(m):
        for r in m["replies"]:
            r["parent_id"] = m["message_id"]
            link(r)

    link(prompt)
    return {"message_tree_id": tid, "tree_state": "ready_for_export", "prompt": prompt}


def a(tid, i, text=None, **kw):
    return message(f"{tid}-a{i}", text or f"Answer {i} to {tid}, written with care.", **kw)


def mini_trees() -> list[dict]:
    """Each tree exercises one rule; comments give the expected outcome for languages=["en"]."""
    long_reply = "A long and careful answer. " * 12  # 324 chars: over a max_reply_chars of 200
    return [
        # rank decides even against likes: a0 (rank 0) over a2 (rank 2, most liked); deeper turns unused
        tree(
            "t01",
            "How do rainbows form?",
            [
                a(
                    "t01",
                    0,
                    rank=0,
                    likes=0,
                    replies=[
                        message(
                            "t01-f",
                            "Why seven colours?",
                            "prompter",
                            replies=[
                                message("t01-f-a0", "Deep answer, ranked best.", rank=0),
                                message("t01-f-a1", "Deep answer, ranked worst.", rank=1),
                            ],
                        )
                    ],
                ),
                a("t01", 1, rank=1, likes=1),
                a("t01", 2, rank=2, likes=9),
            ],
            CRITERIA={"Relevance": 0.4},
        ),  # a field no oasst release has: ignored
        # no ranks: likes decide (5 > 1)
        tree("t02", "Name a prime number.", [a("t02", 0, likes=1), a("t02", 1, likes=5)]),
        # no ranks, equal likes: no preference
        tree("t03", "Tell me a joke.", [a("t03", 0, likes=2), a("t03", 1, likes=2)]),
        # no ranks, no emojis at all: no preference
        tree("t04", "What is a tree?", [a("t04", 0), a("t04", 1)]),
        # two ranked + one unranked with many likes: rank decides among ranked only (a0 over a1)
        tree("t05", "Explain gravity.", [a("t05", 0, rank=0), a("t05", 1, rank=1), a("t05", 2, likes=50)]),
        # only one ranked reply left (a1 deleted): likes decide among all eligible: a2 (3) over a0 (1)
        tree(
            "t06",
            "What is rust?",
            [a("t06", 0, rank=0, likes=1), a("t06", 1, rank=1, deleted=True), a("t06", 2, likes=3)],
        ),
        # best-ranked reply deleted: a1 over a2 (gap 1)
        tree(
            "t07",
            "Why is the sky blue?",
            [a("t07", 0, rank=0, deleted=True), a("t07", 1, rank=1), a("t07", 2, rank=2)],
        ),
        # best-ranked reply failed review; review_result null (not reviewed yet) is kept: a1 over a2
        tree(
            "t08",
            "How do magnets work?",
            [
                a("t08", 0, rank=0, review_result=False),
                a("t08", 1, rank=1, review_result=None),
                a("t08", 2, rank=2),
            ],
        ),
        # one live reply: fewer_than_two_replies
        tree("t09", "What is a cat?", [a("t09", 0, rank=0), a("t09", 1, rank=1, deleted=True)]),
        # prompt deleted / failed review
        tree("t10", "Deleted prompt here.", [a("t10", 0, rank=0), a("t10", 1, rank=1)], deleted=True),
        tree("t11", "Spammy prompt here.", [a("t11", 0, rank=0), a("t11", 1, rank=1)], review_result=False),
        # German and Brazilian Portuguese: skipped for "en", kept for "all" / "de" / "pt"
        tree(
            "t12",
            "Wie spät ist es?",
            [a("t12", 0, rank=0, lang="de"), a("t12", 1, rank=1, lang="de")],
            lang="de",
        ),
        tree("t13", "Que horas são?", [a("t13", i, rank=i, lang="pt-BR") for i in range(4)], lang="pt-BR"),
        # prompt shorter than 5 characters
        tree("t14", "Hi", [a("t14", 0, rank=0), a("t14", 1, rank=1)]),
        # likes with other emojis around: only "+1" counts (10 vs 0, although a1 has 7 "-1")
        tree(
            "t15",
            "Is water wet?",
            [
                a("t15", 0, emojis={"+1": 10, "_skip_labeling": 4}),
                a("t15", 1, emojis={"-1": 7, "red_flag": 1}),
            ],
        ),
        # a tie at the top of likes: the lower message id wins, deterministically (a0 over a2)
        tree("t16", "Best pet?", [a("t16", 1, likes=3), a("t16", 0, likes=3), a("t16", 2, likes=1)]),
        # lengths: a2 is too short ("No"); a0 (rank 0) is long: with max_reply_chars=200 the tree drops
        tree(
            "t17",
            "Describe the sea.",
            [a("t17", 0, long_reply, rank=0), a("t17", 1, "Okay, sure.", rank=1), a("t17", 2, "No", rank=2)],
        ),
        # five ranked replies: the largest rank gap (4), so the best pair of all
        tree("t18", "Plan a trip to Rome.", [a("t18", i, rank=i) for i in range(5)]),
        # a prompt nobody answered yet
        tree("t19", "Anyone there?", []),
        # a malformed reply with the prompter role is not an assistant reply: a0 over a1
        tree(
            "t20",
            "What is light?",
            [
                a("t20", 0, rank=0),
                a("t20", 1, rank=1),
                message("t20-x", "I am the prompter again.", "prompter", rank=2),
            ],
        ),
    ]


def walk(tree_obj: dict):
    """(message, parent_id) for every message of a trees-export object, depth first."""

    def rec(m, parent):
        yield m, parent
        for r in m.get("replies") or []:
            yield from rec(r, m["message_id"])

    yield from rec(tree_obj["prompt"], None)


def trees_to_flat(trees: list[dict], shuffle_seed: int | None = 0) -> list[dict]:
    """Trees export -> rows of the Hub's flat table (emojis/labels as struct-of-lists, message_tree_id
    on every row, parent_id from the nesting); extra fields are kept. Rows are shuffled (seeded), since
    a flat table has no reason to list a tree's messages together."""
    rows = []
    for t in trees:
        for m, parent in walk(t):
            row = {k: v for k, v in m.items() if k not in ("replies", "events")}
            row["parent_id"] = parent
            row["message_tree_id"] = t["message_tree_id"]
            row["tree_state"] = t.get("tree_state")
            emojis = m.get("emojis") or {}
            row["emojis"] = {"name": list(emojis), "count": list(emojis.values())}
            labels = m.get("labels") or {}
            row["labels"] = {
                "name": list(labels),
                "value": [v["value"] for v in labels.values()],
                "count": [v["count"] for v in labels.values()],
            }
            rows.append(row)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(rows)
    return rows


def flat_to_trees(rows: list[dict]) -> list[dict]:
    """The Hub's flat rows -> trees-export objects (nested replies, emojis as {name: count}, inner
    message_tree_id null), the inverse of trees_to_flat; a message whose parent is absent is dropped,
    as the official exports have no place for it."""
    children: dict = {}
    for row in rows:
        children.setdefault(row["parent_id"], []).append(row)

    def nest(row):
        m = {k: v for k, v in row.items() if k not in ("parent_id", "message_tree_id", "tree_state")}
        emojis = row.get("emojis") or {"name": [], "count": []}
        m["emojis"] = dict(zip(emojis["name"], emojis["count"], strict=True)) or None
        m["message_tree_id"] = None
        m["replies"] = [
            nest(r) for r in sorted(children.get(row["message_id"], []), key=lambda r: r["message_id"])
        ]
        return m

    return [
        {"message_tree_id": r["message_tree_id"], "tree_state": r["tree_state"], "prompt": nest(r)}
        for r in sorted(children.get(None, []), key=lambda r: r["message_id"])
    ]


def write_jsonl(objects, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for obj in objects:
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
    return path


def write_parquet(rows: list[dict], path: Path, extra_columns: bool = True) -> Path:
    """Flat rows -> parquet in the Hub's schema; fields outside it become JSON-string columns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(
        [{k: r.get(k) for k in OASST1_HUB_SCHEMA.names} for r in rows], schema=OASST1_HUB_SCHEMA
    )
    if extra_columns:
        for name in sorted({k for r in rows for k in r} - set(OASST1_HUB_SCHEMA.names)):
            table = table.append_column(name, pa.array([json.dumps(r.get(name)) for r in rows], pa.string()))
    pq.write_table(table, path)
    return path


def read_trees(path: Path) -> list[dict]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


if __name__ == "__main__":
    write_jsonl(mini_trees(), MINI_TREES_FILE)
    write_jsonl(trees_to_flat(mini_trees()), MINI_FLAT_FILE)
    print(f"wrote {MINI_TREES_FILE} and {MINI_FLAT_FILE}")
