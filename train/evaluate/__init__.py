"""Base vs tuned, on held-out preference pairs: what the adapter changed, with sample sizes and CIs.

    python -m train.evaluate --adapter PATH_OR_ID --pairs data/pairs/eval.jsonl --output-dir OUT/eval
    python -m train.evaluate --votes votes.jsonl --output-dir OUT/votes      # the compare tab's votes only

Three measurements, all from one copy of the weights with the adapter switched per row:
  * preference accuracy: does the model give the chosen reply a higher mean per-token log-likelihood
    than the rejected one, given the prompt rendered by the tokenizer's chat template (the one prompt
    format of training and serving)? Base and tuned, with the margin distribution;
  * generation quality: every held-out prompt answered by base and tuned under the same seed and
    settings (``assistant.generation``'s side-by-side generation), both scored with the training
    rewards (``train.rewards``, weighted as in the adapter's recipe.yaml, else equally);
  * votes: the compare tab's votes file (``--votes``), tuned win / tie / loss.
Every figure carries its sample size and a bootstrap 95% interval (numpy, fixed seed). Pairs, and the
prompts shown as samples, are taken in the order of sha256(prompt_id): a fixed rule, never a choice.

Outputs (written to a temporary folder beside OUTPUT_DIR, then moved into place): report.json,
report.md (a Markdown section the model card embeds), margins.png, rewards.png, samples.md,
sample_<k>.png and generations.jsonl (every answer with its rewards).
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import os
import shutil
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
SMALL_SAMPLE = 30  # below this many pairs the report says its intervals are not to be trusted
TIE_TOLERANCE = 1e-6  # total rewards closer than this are a tie (float noise, not a preference)


class EvalError(ValueError):
    """Bad input; the message names what is wrong and what to do."""


@dataclass
class EvalArguments:
    """Options of `python -m train.evaluate` (also readable from a YAML file with --config)."""

    output_dir: str = field(metadata={"help": "Folder for the report (replaced as a whole, atomically)."})
    adapter: str | None = field(default=None, metadata={"help": "Adapter folder or Hub id to evaluate."})
    pairs: str | None = field(
        default=None, metadata={"help": "Held-out pairs (eval.jsonl of python -m train.data)."}
    )
    base: str | None = field(
        default=None, metadata={"help": "Base model (default: the one the adapter names)."}
    )
    votes: str | None = field(
        default=None, metadata={"help": "The compare tab's votes file (JSONL) to summarise."}
    )
    limit: int | None = field(
        default=None, metadata={"help": "Evaluate only the first N pairs (sha256 order)."}
    )
    max_new_tokens: int = field(default=128, metadata={"help": "Answer length cap for generation."})
    temperature: float = field(
        default=0.7, metadata={"help": "Sampling temperature (0 = greedy), as in the apps."}
    )
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling threshold, as in the apps."})
    batch_size: int = field(
        default=8, metadata={"help": "Sequences per forward pass / prompts per generate call."}
    )
    max_length: int = field(
        default=1024, metadata={"help": "Cap on prompt + reply tokens when scoring pairs."}
    )
    seed: int = field(default=42, metadata={"help": "Seed for generation and the bootstrap."})
    samples: int = field(
        default=4, metadata={"help": "Side-by-side samples to show (first N prompts, sha256 order)."}
    )
    device: str | None = field(
        default=None, metadata={"help": "cuda, mps or cpu (default: the best at hand)."}
    )
    revision: str | None = field(default=None, metadata={"help": "Adapter revision on the Hub."})


# ----------------------------------------------------------------------------------------------
# Statistics


def bootstrap(values, seed: int, resamples: int = BOOTSTRAP_RESAMPLES) -> dict:
    """Mean of ``values`` (NaN = missing) with a percentile-bootstrap 95% interval and the sample size."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    n = int(x.size)
    if n == 0:
        return {"mean": None, "ci95": [None, None], "n": 0}
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": float(x.mean()), "ci95": [float(low), float(high)], "n": n}


# ----------------------------------------------------------------------------------------------
# Inputs


def stable_key(pair: dict) -> str:
    """The fixed order of pairs and samples: sha256 of the prompt id (of the prompt text if it has none)."""
    return hashlib.sha256(str(pair.get("prompt_id") or pair["prompt"]).encode()).hexdigest()


def order_pairs(pairs: list[dict]) -> list[dict]:
    """Pairs in sha256(prompt_id) order; ties (one prompt, several pairs) by reply ids, then texts."""
    return sorted(
        pairs,
        key=lambda p: (
            stable_key(p),
            str(p.get("chosen_id")),
            str(p.get("rejected_id")),
            p["chosen"],
            p["rejected"],
        ),
    )


def unique_prompts(pairs: list[dict]) -> list[dict]:
    """One pair per prompt (the first in the given order): generation answers each prompt once."""
    seen, out = set(), []
    for pair in pairs:
        key = pair.get("prompt_id") or pair["prompt"]
        if key not in seen:
            seen.add(key)
            out.append(pair)
    return out


def pick_samples(pairs: list[dict], n: int) -> list[dict]:
    """The prompts shown side by side: the first ``n`` distinct prompts in sha256(prompt_id) order."""
    return unique_prompts(order_pairs(pairs))[: max(n, 0)]


def read_pairs(path: str) -> list[dict]:
    from train.data import DataError, load_pairs

    if not Path(path).is_file():
        raise EvalError(
            f"{path}: no such pair file; write one with python -m train.data (it gives eval.jsonl)"
        )
    try:
        pairs = load_pairs(path)
    except DataError as error:
        raise EvalError(str(error)) from None
    if not pairs:
        raise EvalError(f"{path}: no pairs in this file; raise --eval_fraction of python -m train.data")
    return pairs


VOTE_CHOICES = ("left", "right", "tie")
SIDES = ("base", "tuned")


def read_votes(path: str) -> list[dict]:
    """The compare tab's votes: one JSON object a line with "vote" and "left_is" (blank lines skipped)."""
    votes = []
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    vote = json.loads(line)
                except json.JSONDecodeError as error:
                    raise EvalError(
                        f"{where}: malformed JSON ({error.msg}); fix or remove the line"
                    ) from None
                if not isinstance(vote, dict):
                    raise EvalError(f"{where}: a vote must be a JSON object")
                if vote.get("vote") not in VOTE_CHOICES:
                    raise EvalError(
                        f"{where}: 'vote' must be one of {', '.join(VOTE_CHOICES)}, got {vote.get('vote')!r}"
                    )
                if vote.get("left_is") not in SIDES:
                    raise EvalError(
                        f"{where}: 'left_is' must be 'base' or 'tuned', got {vote.get('left_is')!r}"
                    )
                votes.append(vote)
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or type(error).__name__
        raise EvalError(
            f"{path}: cannot read the votes file ({reason}); give the JSONL file the compare tab writes"
        ) from None
    if not votes:
        raise EvalError(f"{path}: no votes in this file")
    return votes


def check_output_dir(path: str) -> Path:
    """OUTPUT_DIR is replaced whole: refuse a folder that holds anything but an earlier report."""
    out = Path(path)
    if out.exists():
        if not out.is_dir():
            raise EvalError(f"{out}: exists and is not a folder; give a folder for the report")
        if any(out.iterdir()) and not (out / "report.json").is_file():
            raise EvalError(
                f"{out}: exists and is not an evaluation folder (no report.json); "
                "give a new folder, e.g. ADAPTER/eval"
            )
    parent = out.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise EvalError(f"{out}: cannot write there (no permission on {parent})")
    return out


def check_args(args: EvalArguments) -> None:
    if (args.adapter is None) != (args.pairs is None):
        raise EvalError("--adapter and --pairs go together: the pairs are what the adapter is evaluated on")
    if args.votes is None and args.adapter is None:
        raise EvalError(
            "give --adapter and --pairs to evaluate a model, or --votes to summarise votes (or both)"
        )
    for name in ("max_new_tokens", "batch_size", "max_length"):
        if getattr(args, name) < 1:
            raise EvalError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.limit is not None and args.limit < 1:
        raise EvalError(f"--limit must be at least 1, got {args.limit}")
    if not 0 <= args.temperature <= 2:
        raise EvalError(f"--temperature must be between 0 and 2, got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise EvalError(f"--top-p must be above 0 and at most 1, got {args.top_p}")
    if args.device not in (None, "cpu", "cuda", "mps") and not str(args.device).startswith("cuda:"):
        raise EvalError(f"--device must be cpu, cuda, cuda:N or mps, got {args.device!r}")
    if args.device and args.device != "cpu":
        import torch

        if not (torch.backends.mps.is_available() if args.device == "mps" else torch.cuda.is_available()):
            raise EvalError(
                f"--device {args.device}: no such device here; leave --device out to use the best at hand"
            )
    if args.samples < 0:
        raise EvalError(f"--samples must be 0 or more, got {args.samples}")
    if args.adapter is not None:
        adapter = Path(args.adapter)
        looks_local = (
            adapter.exists() or args.adapter.startswith((".", "/", "~")) or args.adapter.count("/") != 1
        )
        config = adapter / "adapter_config.json"
        if looks_local and not config.is_file():
            raise EvalError(
                f"{args.adapter}: no adapter there (no adapter_config.json); "
                "give an adapter folder written by python -m train, or a Hub repo id"
            )
        if config.is_file() and args.base is None:
            try:
                named = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
            except (OSError, ValueError, AttributeError):
                raise EvalError(f"{config}: not a readable adapter config (JSON object expected)") from None
            if not named:
                raise EvalError(f"{config} names no base model; give one with --base")


# ----------------------------------------------------------------------------------------------
# Preference accuracy


def prompt_messages(prompt: str) -> list[dict]:
    """A pair's prompt as the conversation training and serving render: one user turn."""
    return [{"role": "user", "content": prompt}]


def reply_tokens(tokenizer, prompt: str, reply: str) -> tuple[list[int], list[int]]:
    """(prompt ids, reply ids): the prompt with the generation prompt, then the reply as the template
    closes it (with its end-of-turn token), tokenized apart the way generation sees them."""
    messages = prompt_messages(prompt)
    prefix = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": reply}], tokenize=False)
    if full.startswith(prefix):
        tail = full[len(prefix) :].rstrip()  # drop only the newline a template puts between turns
    else:  # a template that rewrites earlier turns: fall back to the reply and the end of sequence
        tail = reply + (tokenizer.eos_token or "")
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    return encode(prefix), encode(tail)


def fit(prompt_ids: list[int], reply_ids: list[int], max_length: int) -> tuple[list[int], list[int], bool]:
    """Cut a sequence to ``max_length``: the reply's tail first (to half), then the prompt's head."""
    if len(prompt_ids) + len(reply_ids) <= max_length:
        return prompt_ids, reply_ids, False
    reply_ids = reply_ids[: max(max_length - len(prompt_ids), max_length // 2)]
    prompt_ids = prompt_ids[-(max_length - len(reply_ids)) :]
    return prompt_ids, reply_ids, True


def mean_logprobs(
    model,
    rows: list[tuple[list[int], list[int], str]],
    pad_id: int,
    batch_size: int,
    device,
    desc: str = "scoring",
) -> list[float]:
    """Mean log-probability of each row's reply tokens given its prompt, with its adapter.

    ``rows`` are (prompt ids, reply ids, adapter name), the adapter being "__base__" or the adapter's
    name: one batch can mix both (PEFT's ``adapter_names``). Rows are batched by length, left-padded so
    every reply ends at the last position, and only the reply positions get logits (``logits_to_keep``).
    """
    import torch
    from tqdm.auto import tqdm

    scores = [math.nan] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]) + len(rows[i][1]))
    with torch.no_grad(), tqdm(total=len(rows), desc=desc, unit=" seq") as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            width = max(len(rows[i][0]) + len(rows[i][1]) for i in chunk)
            keep = max(len(rows[i][1]) for i in chunk)
            input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, i in enumerate(chunk):
                sequence = rows[i][0] + rows[i][1]
                input_ids[j, width - len(sequence) :] = torch.tensor(sequence)
                mask[j, width - len(sequence) :] = 1
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                position_ids=position_ids.to(device),
                adapter_names=[rows[i][2] for i in chunk],
                logits_to_keep=keep + 1,
            ).logits[:, -keep - 1 : -1]
            targets = input_ids[:, -keep:].to(logits.device)
            for j, i in enumerate(
                chunk
            ):  # row by row: a [reply, vocab] float copy at a time, not the batch's
                n = len(rows[i][1])
                row = logits[j, keep - n :].float()
                token_logprobs = row.gather(-1, targets[j, keep - n :, None]).squeeze(-1) - row.logsumexp(-1)
                scores[i] = token_logprobs.mean().item()
            bar.update(len(chunk))
    return scores


def preference_accuracy(loaded, pairs: list[dict], batch_size: int, max_length: int, seed: int) -> dict:
    """Chosen vs rejected mean log-likelihood, base and tuned, one entry per pair and the summary."""
    tokenizer = loaded.tokenizer
    adapter = loaded.model.active_adapter
    rows, truncated = [], 0
    for pair in pairs:
        for reply in (pair["chosen"], pair["rejected"]):
            prompt_ids, reply_ids, cut = fit(*reply_tokens(tokenizer, pair["prompt"], reply), max_length)
            truncated += cut
            rows += [(prompt_ids, reply_ids, "__base__"), (prompt_ids, reply_ids, adapter)]
    scores = mean_logprobs(
        loaded.model, rows, tokenizer.pad_token_id, batch_size, loaded.device, desc="preference accuracy"
    )
    per_pair = []
    for k, pair in enumerate(pairs):
        base_chosen, tuned_chosen, base_rejected, tuned_rejected = scores[4 * k : 4 * k + 4]
        per_pair.append(
            {
                "prompt_id": pair.get("prompt_id"),
                "chosen_id": pair.get("chosen_id"),
                "rejected_id": pair.get("rejected_id"),
                "base": {
                    "chosen": base_chosen,
                    "rejected": base_rejected,
                    "margin": base_chosen - base_rejected,
                },
                "tuned": {
                    "chosen": tuned_chosen,
                    "rejected": tuned_rejected,
                    "margin": tuned_chosen - tuned_rejected,
                },
            }
        )
    margins = {side: [p[side]["margin"] for p in per_pair] for side in SIDES}
    correct = {side: [float(m > 0) for m in margins[side]] for side in SIDES}
    return {
        "n": len(pairs),
        "truncated_replies": truncated,
        "max_length": max_length,
        "base": {"accuracy": bootstrap(correct["base"], seed), "margin": bootstrap(margins["base"], seed)},
        "tuned": {"accuracy": bootstrap(correct["tuned"], seed), "margin": bootstrap(margins["tuned"], seed)},
        "tuned_minus_base": {
            "accuracy": bootstrap(np.subtract(correct["tuned"], correct["base"]), seed),
            "margin": bootstrap(np.subtract(margins["tuned"], margins["base"]), seed),
        },
        "pairs": per_pair,
    }


# ----------------------------------------------------------------------------------------------
# Generation quality


def adapter_file(adapter: str, name: str, revision: str | None = None) -> Path | None:
    """A file saved beside the adapter (in its folder, or its Hub repo), or None when it has none."""
    from assistant.models import hub_file

    path = Path(adapter) / name
    if path.is_file():
        return path
    return None if Path(adapter).exists() else hub_file(adapter, name, revision)


def read_recipe(adapter: str, revision: str | None = None) -> dict:
    """The adapter's recipe.yaml, or {} when it has none."""
    import yaml

    path = adapter_file(adapter, "recipe.yaml", revision)
    if path is None:
        return {}
    try:
        recipe = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise EvalError(
            f"{path}: unreadable recipe ({str(error).splitlines()[0]}); fix or remove it"
        ) from None
    return recipe if isinstance(recipe, dict) else {}


def trained_trees(adapter: str, revision: str | None = None) -> set[str]:
    """The conversation trees the adapter was trained on (training_info.json's train_tree_ids)."""
    path = adapter_file(adapter, "training_info.json", revision)
    if path is None:
        return set()
    try:
        return set(json.loads(Path(path).read_text(encoding="utf-8")).get("train_tree_ids") or [])
    except (OSError, ValueError, AttributeError) as error:
        raise EvalError(f"{path}: unreadable training info ({error}); fix or remove it") from None


def reward_setup(recipe: dict) -> tuple[list[str], list[float], str]:
    """Reward names and weights as training used them: the recipe's reward_funcs and TRL's reward_weights
    (equal when it sets none); without reward_funcs in the recipe, the training default, equally weighted."""
    names = recipe.get("reward_funcs")
    if names:
        names = [names] if isinstance(names, str) else list(names)
        weights = recipe.get("reward_weights")
        if weights is None:
            return names, [1.0] * len(names), "recipe.yaml, equal weights"
        if len(weights) != len(names):
            raise EvalError(f"recipe.yaml: {len(weights)} reward_weights for {len(names)} reward_funcs")
        return names, [float(w) for w in weights], "recipe.yaml"
    from train.config import TrainArguments

    names = list(TrainArguments().reward_funcs)
    return (
        names,
        [1.0] * len(names),
        "training's default rewards, equal weights (no reward_funcs in a recipe.yaml)",
    )


def score_rewards(
    funcs,
    names: list[str],
    weights: list[float],
    pairs: list[dict],
    answers: list[str],
    completion_ids: list[list[int]],
) -> dict:
    """Each reward over all answers, called as TRL calls it (every pair column as a keyword)."""
    columns = {key: [pair.get(key) for pair in pairs] for key in pairs[0]}
    columns.pop("prompt", None)
    kwargs = {
        **columns,
        "prompts": [prompt_messages(pair["prompt"]) for pair in pairs],
        "completions": [[{"role": "assistant", "content": text}] for text in answers],
        "completion_ids": completion_ids,
        "trainer_state": None,
    }
    scores = {}
    for name, func in zip(names, funcs, strict=True):
        values = func(**kwargs)
        scores[name] = [math.nan if v is None else float(v) for v in values]
    # TRL's total: the weighted sum, missing (None) rewards left out.
    stacked = np.array([scores[name] for name in names], dtype=float)
    scores["total"] = list(np.nansum(stacked * np.asarray(weights)[:, None], axis=0))
    return scores


def as_completion(answer) -> str:
    """The completion the training rewards see for an answer of ``assistant.generation``.

    Generation stops a row where it starts a new user turn and returns the text before it; training
    sees that turn, and ``no_user_turn`` penalises it, so the marker goes back on (every other reward
    cuts there again, as ``train.rewards.answer`` does).
    """
    from assistant.prompt import USER_TURN_MARKERS

    return f"{answer.text}\n{USER_TURN_MARKERS[0]}" if answer.cut else answer.text


def generation_quality(loaded, prompts: list[dict], args: EvalArguments, recipe: dict) -> dict:
    """Base and tuned answers to every prompt (same seed and settings, side by side), both scored with
    the training rewards; per-prompt results in ``rows``."""
    from tqdm.auto import tqdm

    from assistant.generation import GenerationSettings, eos_ids, generate_side_by_side
    from train.rewards import DEFAULT_EMBEDDER, get_reward_funcs

    names, weights, weights_from = reward_setup(recipe)
    try:
        funcs = get_reward_funcs(
            names,
            eos_token_ids=sorted(eos_ids(loaded)),
            embedding_model=recipe.get("embedding_model") or DEFAULT_EMBEDDER,
            reward_model_name_or_path=recipe.get("reward_model_name_or_path"),
        )
    except ValueError as error:
        raise EvalError(f"recipe.yaml: {error}") from None
    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed
    )
    answers = []
    with tqdm(total=len(prompts), desc="generating base and tuned", unit=" prompt") as bar:
        for start in range(0, len(prompts), args.batch_size):
            chunk = prompts[start : start + args.batch_size]
            answers += generate_side_by_side(
                loaded, [prompt_messages(p["prompt"]) for p in chunk], settings, batch_size=args.batch_size
            )
            bar.update(len(chunk))
    eos = sorted(eos_ids(loaded))
    scores = {}
    for k, side in enumerate(SIDES):
        side_answers = [pair[k] for pair in answers]
        completion_ids = [
            loaded.tokenizer(as_completion(a), add_special_tokens=False)["input_ids"]
            + (eos[:1] if a.ended else [])
            for a in side_answers
        ]
        scores[side] = score_rewards(
            funcs, names, weights, prompts, [as_completion(a) for a in side_answers], completion_ids
        )
    seed = args.seed
    total = {side: np.asarray(scores[side]["total"]) for side in SIDES}
    difference = total["tuned"] - total["base"]
    outcome = np.where(difference > TIE_TOLERANCE, 1, np.where(difference < -TIE_TOLERANCE, -1, 0))
    rows = []
    for i, pair in enumerate(prompts):
        rows.append(
            {
                "prompt_id": pair.get("prompt_id"),
                "prompt": pair["prompt"],
                **{
                    side: {
                        "answer": answers[i][k].text,
                        "tokens": answers[i][k].tokens,
                        "ended": answers[i][k].ended,
                        "cut_at_user_turn": answers[i][k].cut,
                        "rewards": {name: scores[side][name][i] for name in names + ["total"]},
                    }
                    for k, side in enumerate(SIDES)
                },
                "outcome": {1: "win", 0: "tie", -1: "loss"}[int(outcome[i])],
            }
        )

    def summary(k: int, side: str) -> dict:
        return {
            "reward": {name: bootstrap(scores[side][name], seed) for name in names},
            "total_reward": bootstrap(scores[side]["total"], seed),
            "answer_tokens": bootstrap([pair[k].tokens for pair in answers], seed),
            "ended_properly": bootstrap([float(pair[k].ended) for pair in answers], seed),
        }

    return {
        "n": len(prompts),
        "settings": asdict(settings),
        "reward_funcs": names,
        "reward_weights": weights,
        "weights_from": weights_from,
        "base": summary(0, "base"),
        "tuned": summary(1, "tuned"),
        "tuned_vs_base": {
            "win": bootstrap(outcome == 1, seed),
            "tie": bootstrap(outcome == 0, seed),
            "loss": bootstrap(outcome == -1, seed),
            "total_reward_gain": bootstrap(difference, seed),
        },
        "rows": rows,
    }


# ----------------------------------------------------------------------------------------------
# Votes


def summarize_votes(votes: list[dict], seed: int, source: str | None = None) -> dict:
    """Tuned win / tie / loss over the votes, each share with its bootstrap interval."""
    outcomes = []
    for vote in votes:
        if vote["vote"] == "tie":
            outcomes.append("tie")
        else:
            picked = (
                vote["left_is"]
                if vote["vote"] == "left"
                else ("tuned" if vote["left_is"] == "base" else "base")
            )
            outcomes.append("win" if picked == "tuned" else "loss")
    models = sorted(
        {
            str(side.get("model"))
            for vote in votes
            for side in (vote.get("left"), vote.get("right"))
            if isinstance(side, dict) and side.get("model")
        }
    )
    return {
        "file": source,
        "n": len(votes),
        **{o: bootstrap([float(x == o) for x in outcomes], seed) for o in ("win", "tie", "loss")},
        "counts": {o: outcomes.count(o) for o in ("win", "tie", "loss")},
        "models": models,
    }


# ----------------------------------------------------------------------------------------------
# Report: Markdown, plots, sample images


def fmt(estimate: dict | None, digits: int = 2, percent: bool = False) -> str:
    """``0.62 [0.41, 0.80]``: the mean and its 95% interval (percentages for shares)."""
    if not estimate or estimate["mean"] is None:
        return "n/a"
    scale, digits = (100, 0) if percent else (1, digits)
    # + 0.0 turns -0.0 into 0.0, so a tiny negative value does not print as "-0.00"
    mean, low, high = (round(scale * v, digits) + 0.0 for v in [estimate["mean"], *estimate["ci95"]])
    return f"{mean:.{digits}f}{'%' if percent else ''} [{low:.{digits}f}, {high:.{digits}f}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def render_markdown(report: dict) -> str:
    """report.md: a self-contained section (headings from ### down) with links to the PNGs beside it."""
    lines = ["### Base vs tuned on held-out pairs", ""]
    model = report.get("model")
    if model:
        lines += [
            f"Base `{model['base']}` against base + adapter `{model['adapter']}` ({model['device']}, "
            f"{model['precision']}), on {report['pairs']['n']} held-out pairs from "
            f"`{report['pairs']['file']}`"
            + (
                f" (left out: {report['pairs']['left_out_trained_trees']} pairs from trees the adapter "
                "was trained on)"
                if report["pairs"].get("left_out_trained_trees")
                else ""
            )
            + ". "
            f"Each figure: mean [bootstrap 95% interval] over n items (seed {report['seed']}).",
            "",
        ]
        if report["pairs"]["n"] < SMALL_SAMPLE:
            lines += [
                f"**Small sample (n = {report['pairs']['n']}):** a bootstrap over so few items understates "
                "the uncertainty, and the differences shown may be chance; read these figures as a check "
                "that the pipeline runs, not as a measurement of the adapter.",
                "",
            ]
    preference = report.get("preference")
    if preference:
        base, tuned, gain = preference["base"], preference["tuned"], preference["tuned_minus_base"]
        lines += [
            "#### Preference accuracy",
            "",
            "Share of held-out pairs where the model gives the chosen reply a higher mean per-token "
            "log-likelihood than the rejected one (prompt rendered with the chat template).",
            "",
            *_table(
                ["", "n", "Base", "Tuned", "Tuned − base"],
                [
                    [
                        "Accuracy",
                        str(preference["n"]),
                        fmt(base["accuracy"], percent=True),
                        fmt(tuned["accuracy"], percent=True),
                        fmt(gain["accuracy"], percent=True),
                    ],
                    [
                        "Margin (nats/token)",
                        str(preference["n"]),
                        fmt(base["margin"], 3),
                        fmt(tuned["margin"], 3),
                        fmt(gain["margin"], 3),
                    ],
                ],
            ),
            "",
        ]
        if preference["truncated_replies"]:
            lines += [
                f"{preference['truncated_replies']} replies were cut to {preference['max_length']} tokens "
                "with their prompt.",
                "",
            ]
        lines += ["![Margin distribution](margins.png)", ""]
    generation = report.get("generation")
    if generation:
        base, tuned, versus = generation["base"], generation["tuned"], generation["tuned_vs_base"]
        n = str(generation["n"])
        settings = generation["settings"]
        weights = ", ".join(
            f"{name} × {w:g}"
            for name, w in zip(generation["reward_funcs"], generation["reward_weights"], strict=True)
        )
        lines += [
            "#### Generation quality",
            "",
            f"Every held-out prompt answered by base and tuned in one batch with the same seed and settings "
            f"(temperature {settings['temperature']}, top-p {settings['top_p']}, at most "
            f"{settings['max_new_tokens']} new tokens), both scored with the training rewards. "
            f"Total = {weights} (weights: {generation['weights_from']}).",
            "",
        ]
        rows = [
            [
                f"Reward `{name}`",
                str(base["reward"][name]["n"]),
                fmt(base["reward"][name]),
                fmt(tuned["reward"][name]),
            ]
            for name in generation["reward_funcs"]
        ]
        rows += [
            ["**Total reward**", n, fmt(base["total_reward"]), fmt(tuned["total_reward"])],
            ["Answer length (tokens)", n, fmt(base["answer_tokens"], 1), fmt(tuned["answer_tokens"], 1)],
            [
                "Ended properly (EOS)",
                n,
                fmt(base["ended_properly"], percent=True),
                fmt(tuned["ended_properly"], percent=True),
            ],
        ]
        lines += [*_table(["", "n", "Base", "Tuned"], rows), ""]
        lines += [
            *_table(
                ["Tuned against base (total reward)", "n", "Win", "Tie", "Loss", "Mean gain"],
                [
                    [
                        "per prompt",
                        n,
                        fmt(versus["win"], percent=True),
                        fmt(versus["tie"], percent=True),
                        fmt(versus["loss"], percent=True),
                        fmt(versus["total_reward_gain"]),
                    ]
                ],
            ),
            "",
            "![Reward distributions](rewards.png)",
            "",
        ]
        samples = report.get("samples") or []
        if samples:
            lines += [
                "#### Samples",
                "",
                f"The first {len(samples)} held-out prompts in sha256(prompt id) order (a fixed rule, not a "
                "choice), answered side by side; the full texts are in [samples.md](samples.md).",
                "",
            ]
            lines += [f"![Sample {s['index']}]({s['image']})" for s in samples] + [""]
    votes = report.get("votes")
    if votes:
        lines += [
            "#### Votes from the compare tab",
            "",
            f"{votes['n']} votes from `{votes['file']}`, tuned against base.",
            "",
            *_table(
                ["Votes", "n", "Tuned wins", "Tie", "Tuned loses"],
                [
                    [
                        "share",
                        str(votes["n"]),
                        fmt(votes["win"], percent=True),
                        fmt(votes["tie"], percent=True),
                        fmt(votes["loss"], percent=True),
                    ]
                ],
            ),
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"


def render_samples(report: dict) -> str:
    """samples.md: each sample's prompt, then base and tuned answers side by side (an HTML table)."""
    model = report["model"]
    lines = [
        "### Side-by-side samples",
        "",
        f"Base `{model['base']}` and tuned (+ `{model['adapter']}`), same seed and settings; the first "
        "held-out prompts in sha256(prompt id) order.",
        "",
    ]
    cell = lambda text: html.escape(text or "(empty)").replace("\n", "<br>")  # noqa: E731
    for sample in report["samples"]:
        lines += [
            f"#### Sample {sample['index']} (prompt {sample['prompt_id']})",
            "",
            "> " + "\n> ".join(sample["prompt"].splitlines() or [""]),
            "",
            "<table><tr><th>Base (total reward {:.2f})</th><th>Tuned (total reward {:.2f})</th></tr>".format(
                sample["base_total"], sample["tuned_total"]
            ),
            f'<tr><td valign="top">{cell(sample["base"])}</td>'
            f'<td valign="top">{cell(sample["tuned"])}</td></tr></table>',
            "",
        ]
    return "\n".join(lines)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


COLORS = {"base": "#7f7f7f", "tuned": "#d62728"}


def plot_margins(preference: dict, path: Path) -> None:
    """The margin distributions (histograms) and each pair's base margin against its tuned margin."""
    plt = _plt()
    margins = {side: np.array([p[side]["margin"] for p in preference["pairs"]]) for side in SIDES}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    values = np.concatenate([margins["base"], margins["tuned"], [0.0]])
    bins = np.linspace(values.min(), values.max(), 21) if np.ptp(values) > 0 else 10
    for side in SIDES:
        accuracy = preference[side]["accuracy"]["mean"]
        left.hist(
            margins[side],
            bins=bins,
            alpha=0.55,
            color=COLORS[side],
            label=f"{side}: accuracy {100 * accuracy:.0f}%, mean {margins[side].mean():+.3f}",
        )
    left.axvline(0, color="black", linewidth=1)
    left.set_xlabel("margin: chosen − rejected (mean log-prob per token)")
    left.set_ylabel("pairs")
    left.legend(fontsize=8)
    right.scatter(margins["base"], margins["tuned"], s=18, color=COLORS["tuned"], alpha=0.7)
    low, high = values.min(), values.max()
    pad = 0.05 * (high - low or 1)
    right.plot(
        [low - pad, high + pad], [low - pad, high + pad], color="#999999", linewidth=1, label="tuned = base"
    )
    right.axhline(0, color="black", linewidth=0.6)
    right.axvline(0, color="black", linewidth=0.6)
    right.set_xlabel("base margin")
    right.set_ylabel("tuned margin")
    right.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"Preference margins on held-out pairs (n = {preference['n']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_rewards(generation: dict, path: Path) -> None:
    """Every answer's reward per function (points), with the mean and its 95% interval, base and tuned."""
    plt = _plt()
    names = generation["reward_funcs"] + ["total"]
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.8 * columns, 3.2 * rows), squeeze=False)
    jitter = np.random.default_rng(0).uniform(-0.12, 0.12, size=len(generation["rows"]))
    for ax, name in zip(axes.flat, names, strict=False):
        labels = []
        for x, side in enumerate(SIDES):
            values = np.array([r[side]["rewards"][name] for r in generation["rows"]], dtype=float)
            ax.scatter(x + jitter, values, s=10, alpha=0.45, color=COLORS[side])
            summary = generation[side]["total_reward" if name == "total" else "reward"]
            summary = summary if name == "total" else summary[name]
            labels.append(f"{side}\n{fmt(summary)}")
            if summary["mean"] is not None:
                mean, (low, high) = summary["mean"], summary["ci95"]
                ax.errorbar(
                    x + 0.3,
                    mean,
                    yerr=[[mean - low], [high - mean]],
                    fmt="o",
                    color="black",
                    capsize=4,
                    markersize=5,
                )
        ax.set_xticks([0, 1], labels, fontsize=8)
        ax.set_xlim(-0.5, 1.6)
        ax.set_title("total (weighted)" if name == "total" else name, fontsize=10)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    n = generation["n"]
    fig.suptitle(
        f"Rewards of base and tuned answers: points, and mean with 95% interval (n = {n} prompts)",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _wrap(text: str, width: int, max_lines: int) -> list[str]:
    lines = []
    for paragraph in (text or "(empty)").splitlines() or [""]:
        lines += textwrap.wrap(paragraph, width) or [""]
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + ["[…]"]
    return lines


def plot_sample(sample: dict, base_name: str, tuned_name: str, path: Path) -> None:
    """A picture of one comparison: the prompt across the top, base and tuned answers in two columns."""
    plt = _plt()
    prompt = _wrap(sample["prompt"], 140, 8)
    base, tuned = _wrap(sample["base"], 68, 40), _wrap(sample["tuned"], 68, 40)
    line = 0.17  # inches per line at 9.5 pt
    height = 1.1 + line * (len(prompt) + max(len(base), len(tuned)) + 4)
    fig = plt.figure(figsize=(12, height))
    y = lambda inches: 1 - inches / height  # noqa: E731
    text = dict(fontsize=9.5, va="top", parse_math=False, linespacing=1.25)
    fig.text(0.02, y(0.25), f"Sample {sample['index']}: prompt", fontsize=11, weight="bold", va="top")
    fig.text(0.02, y(0.55), "\n".join(prompt), **text)
    top = 0.75 + line * len(prompt) + 0.2
    for x, title, body, side in ((0.02, base_name, base, "base"), (0.51, tuned_name, tuned, "tuned")):
        total = sample[f"{side}_total"]
        fig.text(
            x,
            y(top),
            f"{title}  (total reward {total:.2f})",
            fontsize=10,
            weight="bold",
            color=COLORS[side],
            va="top",
            parse_math=False,
        )
        fig.text(x, y(top + 0.3), "\n".join(body), **text)
    fig.add_artist(plt.Line2D([0.495, 0.495], [y(top), 0.02], color="#cccccc", linewidth=1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def sample_entries(generation: dict, sampled: list[dict]) -> list[dict]:
    rows = {row["prompt_id"] or row["prompt"]: row for row in generation["rows"]}
    entries = []
    for index, pair in enumerate(sampled, 1):
        row = rows[pair.get("prompt_id") or pair["prompt"]]
        entries.append(
            {
                "index": index,
                "prompt_id": row["prompt_id"],
                "prompt": row["prompt"],
                "image": f"sample_{index}.png",
                "base": row["base"]["answer"],
                "tuned": row["tuned"]["answer"],
                "base_total": row["base"]["rewards"]["total"],
                "tuned_total": row["tuned"]["rewards"]["total"],
            }
        )
    return entries


def write_outputs(out: Path, report: dict, generation_rows: list[dict] | None) -> None:
    """Everything into a temporary folder beside ``out``, then swapped into place: a reader sees the old
    report or the new one, never a mix, and a failed run leaves the old one untouched."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        if report.get("preference"):
            plot_margins(report["preference"], tmp / "margins.png")
        if report.get("generation"):
            plot_rewards({**report["generation"], "rows": generation_rows}, tmp / "rewards.png")
            with open(tmp / "generations.jsonl", "w", encoding="utf-8") as f:
                for row in generation_rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
        if report.get("samples"):
            model = report["model"]
            for sample in report["samples"]:
                plot_sample(sample, "Base", f"Tuned (+ {Path(model['adapter']).name})", tmp / sample["image"])
            (tmp / "samples.md").write_text(render_samples(report), encoding="utf-8")
        (tmp / "report.md").write_text(render_markdown(report), encoding="utf-8")
        (tmp / "report.json").write_text(
            json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
        os.chmod(tmp, 0o755)
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------------------
# CLI


def run(args: EvalArguments) -> dict:
    """Check the inputs (before anything is loaded), measure, and write the report; return report.json."""
    check_args(args)
    out = check_output_dir(args.output_dir)
    pairs = order_pairs(read_pairs(args.pairs)) if args.pairs else None
    excluded = 0
    if pairs is not None:
        # A pair from a tree the adapter was trained on would measure memory, not preference.
        trained = trained_trees(args.adapter, args.revision)
        kept = [pair for pair in pairs if pair["tree_id"] not in trained]
        excluded = len(pairs) - len(kept)
        if not kept:
            raise EvalError(
                f"{args.pairs}: all {len(pairs)} pairs come from trees the adapter was trained on; "
                "give held-out pairs (eval.jsonl)"
            )
        if excluded:
            print(f"note: left out {excluded} pairs from trees the adapter was trained on", file=sys.stderr)
        pairs = kept[: args.limit]
    votes = read_votes(args.votes) if args.votes else None
    start = time.perf_counter()
    report: dict = {"schema_version": 1, "seed": args.seed, "options": asdict(args)}
    generation_rows = None
    if pairs is not None:
        from assistant.models import load_model

        loaded = load_model(base=args.base, adapter=args.adapter, revision=args.revision, device=args.device)
        recipe = read_recipe(args.adapter, args.revision)
        report["model"] = {
            "base": loaded.base,
            "adapter": loaded.adapter,
            "device": loaded.device,
            "precision": loaded.precision,
        }
        report["pairs"] = {
            "file": str(args.pairs),
            "n": len(pairs),
            "order": "sha256(prompt_id)",
            "limit": args.limit,
            "left_out_trained_trees": excluded,
        }
        report["preference"] = preference_accuracy(loaded, pairs, args.batch_size, args.max_length, args.seed)
        generation = generation_quality(loaded, unique_prompts(pairs), args, recipe)
        generation_rows = generation.pop("rows")
        report["generation"] = generation
        report["samples"] = sample_entries({"rows": generation_rows}, pick_samples(pairs, args.samples))
    if votes is not None:
        report["votes"] = summarize_votes(votes, args.seed, str(args.votes))
    report["runtime_s"] = round(time.perf_counter() - start, 1)
    write_outputs(out, report, generation_rows)
    return report


def summary_lines(report: dict, out: str) -> list[str]:
    lines = []
    if report.get("preference"):
        p = report["preference"]
        lines.append(
            f"preference accuracy (n={p['n']}): base {fmt(p['base']['accuracy'], percent=True)}, "
            f"tuned {fmt(p['tuned']['accuracy'], percent=True)}"
        )
    if report.get("generation"):
        g = report["generation"]
        v = g["tuned_vs_base"]
        lines.append(
            f"total reward (n={g['n']}): base {fmt(g['base']['total_reward'])}, "
            f"tuned {fmt(g['tuned']['total_reward'])}; tuned win/tie/loss "
            f"{fmt(v['win'], percent=True)} / {fmt(v['tie'], percent=True)} / {fmt(v['loss'], percent=True)}"
        )
    if report.get("votes"):
        v = report["votes"]
        lines.append(
            f"votes (n={v['n']}): tuned win/tie/loss {fmt(v['win'], percent=True)} / "
            f"{fmt(v['tie'], percent=True)} / {fmt(v['loss'], percent=True)}"
        )
    lines.append(f"wrote {out}/report.md and report.json in {report['runtime_s']:.0f}s")
    return lines


def main(argv: list[str] | None = None) -> int:
    from trl import TrlParser

    (args,) = TrlParser(EvalArguments).parse_args_and_config(argv)
    from assistant.generation import RequestError
    from assistant.models import ModelLoadError

    try:
        report = run(args)
    except (EvalError, ModelLoadError, RequestError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130
    print("\n".join(summary_lines(report, args.output_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
