"""The pairing rules (rules 1-4 of ``train.data``): ranked sibling groups -> candidate pairs, best first,
with every skipped tree, group and message counted by its reason."""

from __future__ import annotations

from collections import Counter, defaultdict

import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

DEPTHS = ("first", "all")  # the initial prompt's replies only, or ranked groups at every depth
DEFAULT_TREE_STATES = ("ready_for_export",)  # trees the Open Assistant team exported as finished
ROLES = {"prompter": "user", "assistant": "assistant"}
PROGRESS_TREES = 5_000  # below this many groups a progress bar is noise


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


def _unusable(message: dict, role: str, prefix: str = "") -> str | None:
    """Why a message cannot serve as a ``role`` message: another role, deleted, or failed review."""
    if message["role"] != role:
        return f"{prefix}not_{role}"
    if message["deleted"]:
        return f"{prefix}deleted"
    if message["review_result"] is False:
        return f"{prefix}failed_review"
    return None


def _length_skip(text: str, min_chars: int, max_chars: int, what: str) -> str | None:
    chars = len(text.strip())
    if chars < min_chars:
        return f"{what}_too_short"
    if chars > max_chars:
        return f"{what}_too_long"
    return None


def _tree_skip(prompt: dict, wanted: tuple | None, states: set | None) -> str | None:
    lang = (prompt["lang"] or "").lower()
    if states is not None and prompt["tree_state"] is not None and prompt["tree_state"] not in states:
        return "tree_state"
    if reason := _unusable(prompt, "prompter", "prompt_"):
        return reason
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
    return _length_skip(head["text"], min_chars, max_chars, "prompt")


def _reply_skip(reply: dict, min_chars: int, max_chars: int) -> str | None:
    return _unusable(reply, "assistant") or _length_skip(reply["text"], min_chars, max_chars, "reply")


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
