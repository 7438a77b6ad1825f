"""The tables the reader works with: the one message table every input form becomes, and the columns
of the Hub's OpenAssistant/oasst1 table (what the tests and benchmarks write their stand-ins with)."""

from __future__ import annotations

import pyarrow as pa

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
DETOXIFY = [
    "toxicity",
    "severe_toxicity",
    "obscene",
    "identity_attack",
    "insult",
    "threat",
    "sexual_explicit",
]
# The columns of the Hub's OpenAssistant/oasst1 table, with the types its dataset card declares: what the
# tests and benchmarks write their stand-ins of the Hub's parquet files with.
OASST1_HUB_SCHEMA = pa.schema(
    [
        ("message_id", pa.string()),
        ("parent_id", pa.string()),
        ("user_id", pa.string()),
        ("created_date", pa.string()),
        ("text", pa.string()),
        ("role", pa.string()),
        ("lang", pa.string()),
        ("review_count", pa.int32()),
        ("review_result", pa.bool_()),
        ("deleted", pa.bool_()),
        ("rank", pa.int32()),
        ("synthetic", pa.bool_()),
        ("model_name", pa.string()),
        ("detoxify", pa.struct([(k, pa.float64()) for k in DETOXIFY])),
        ("message_tree_id", pa.string()),
        ("tree_state", pa.string()),
        ("emojis", pa.struct([("name", pa.list_(pa.string())), ("count", pa.list_(pa.int32()))])),
        (
            "labels",
            pa.struct(
                [
                    ("name", pa.list_(pa.string())),
                    ("value", pa.list_(pa.float64())),
                    ("count", pa.list_(pa.int32())),
                ]
            ),
        ),
    ]
)
# Flat (Hub schema) columns we need; the rest (user_id, labels, detoxify, ...) is ignored.
FLAT_REQUIRED = ("message_id", "parent_id", "message_tree_id", "text", "role")
FLAT_OPTIONAL = ("lang", "deleted", "review_result", "rank", "emojis", "tree_state")
TREE_REQUIRED = ("message_id", "text", "role")
