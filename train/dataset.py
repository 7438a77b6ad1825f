"""The training rows of a run: the pairs file (built first from dataset_source when it is missing), the
pairs whose templated prompt fits, as TRL's conversational rows for the recipe's method.
"""

from __future__ import annotations

from pathlib import Path

from train.config import ConfigError
from train.recipe import check_pairs


def load_train_pairs(train_args, tokenizer) -> tuple[list[dict], dict]:
    """The pairs to train on and their counts (in the file, prompts too long, used)."""
    from train.data import load_pairs, prompt_messages

    path = Path(train_args.pairs_file)
    if not path.exists():
        check_pairs(train_args)  # says what is missing when nothing can build it
        build_pairs_file(train_args, path)
    pairs = load_pairs(path)
    counts = {"in_file": len(pairs)}
    if train_args.max_prompt_tokens:

        def prompt_tokens(pair):
            ids = tokenizer.apply_chat_template(
                prompt_messages(pair["prompt"]), tokenize=True, add_generation_prompt=True
            )
            return len(ids["input_ids"] if hasattr(ids, "keys") else ids)

        pairs = [p for p in pairs if prompt_tokens(p) <= train_args.max_prompt_tokens]
        counts["prompt_too_long"] = counts["in_file"] - len(pairs)
    if train_args.max_pairs:
        pairs = pairs[: train_args.max_pairs]
    counts["used"] = len(pairs)
    if not pairs:
        raise ConfigError(f"no pairs left from {path} (counts: {counts}); raise max_prompt_tokens?")
    return pairs, counts


def build_pairs_file(train_args, path: Path) -> None:
    """The pairs file from dataset_source, as train.data, train.hh_rlhf or study.run build it."""
    from train import hh_rlhf
    from train.data import build_pairs, write_pairs

    sources = train_args.dataset_source
    sources = [sources] if isinstance(sources, str) else list(sources)  # a YAML string or a list
    print(f"building pairs from {' + '.join(sources)} into {path.parent}")
    if hh_rlhf.is_hh_rlhf(sources[0]):  # the judge's data
        write_pairs(path.parent, *hh_rlhf.build_pairs(sources[0], limit=train_args.dataset_limit))
    elif train_args.dataset_test_fraction:  # train, dev and a sealed test, as study.run builds them
        from train.data.splits import write_splits

        write_splits(
            path.parent, sources, languages=train_args.dataset_languages, depth=train_args.dataset_depth,
            eval_fraction=train_args.dataset_eval_fraction, test_fraction=train_args.dataset_test_fraction,
            limit=train_args.dataset_limit,
        )  # fmt: skip
    else:
        built = build_pairs(
            sources,
            languages=train_args.dataset_languages,
            depth=train_args.dataset_depth,
            eval_fraction=train_args.dataset_eval_fraction,
            limit=train_args.dataset_limit,
        )
        write_pairs(path.parent, *built)


def to_dataset(pairs: list[dict], method: str):
    """Conversational rows, so the tokenizer's chat template renders every prompt (and DPO's replies)."""
    from datasets import Dataset

    from train.data import prompt_messages

    if method == "sft":  # the top-ranked reply of each prompt, as Open Assistant's own oasst_top1 SFT set
        best = {}
        for p in sorted(pairs, key=lambda p: p.get("chosen_rank") or 0, reverse=True):
            best[p.get("prompt_id") or str(p["prompt"])] = p
        best = best.values()
        return Dataset.from_dict(
            {
                "prompt": [prompt_messages(p["prompt"]) for p in best],
                "completion": [[{"role": "assistant", "content": p["chosen"]}] for p in best],
            }
        )
    rows = {"prompt": [prompt_messages(p["prompt"]) for p in pairs]}
    if method in ("dpo", "reward"):
        rows["chosen"] = [[{"role": "assistant", "content": p["chosen"]}] for p in pairs]
        rows["rejected"] = [[{"role": "assistant", "content": p["rejected"]}] for p in pairs]
    else:  # GRPO: the replies reach the rewards as plain text columns
        rows["chosen"] = [p["chosen"] for p in pairs]
        rows["rejected"] = [p["rejected"] for p in pairs]
    return Dataset.from_dict(rows)
