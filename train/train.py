"""Fine-tune a causal LM with LoRA on Open Assistant preference pairs, with GRPO or DPO (TRL).

    python -m train --config recipes/cpu-demo.yaml [--key value ...]
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml -m train --config recipes/phi2-grpo-qlora.yaml

Reads top to bottom: parse the recipe, adapt it to the machine, load pairs, tokenizer and model, check
the LoRA targets, build TRL's trainer, train (resuming from the last checkpoint in output_dir), then
write the output folder (adapter, tokenizer + chat template, resolved recipe, training_info.json,
metrics.jsonl, plots) and our model card, and push when asked.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import fields
from enum import Enum
from pathlib import Path
from typing import NamedTuple

from train.config import MethodArguments, TrainArguments


class ConfigError(ValueError):
    """The recipe or the command line asks for something that cannot work; the message says what."""


# ----------------------------------------------------------------------------------------------
# Parsing


class Parsed(NamedTuple):
    train: TrainArguments
    training: object  # trl.GRPOConfig or trl.DPOConfig
    model: object  # trl.ModelConfig
    keys: list[str]  # keys set by the recipe file and the command line, in order
    mixed_precision: str | None  # "bf16"/"fp16" as asked for, before a CPU switched it off


def parse_args(argv: list[str] | None = None) -> Parsed:
    """Our arguments and TRL's from a recipe file and ``--key value`` overrides.

    The method decides which TRL config class the recipe's keys belong to, so a first TrlParser pass
    reads only ``method`` (and the mixed precision asked for); the second parses everything and
    rejects keys no class knows. Without CUDA, bf16/fp16 are overridden to false before the second
    pass: TrainingArguments refuses them there, and bf16 autocast on a CPU is ~5x slower anyway.
    """
    import torch
    from trl import DPOConfig, GRPOConfig, ModelConfig, RewardConfig, TrlParser

    argv = list(sys.argv[1:] if argv is None else argv)
    first, _ = TrlParser(MethodArguments, add_help=False, prog="python -m train").parse_args_and_config(
        argv, return_remaining_strings=True
    )
    config_class = {"grpo": GRPOConfig, "dpo": DPOConfig, "reward": RewardConfig}[first.method]
    # TRL turns bf16 on when neither is set.
    asked = (
        "fp16" if first.fp16 else "bf16" if first.bf16 or (first.bf16 is None and not first.fp16) else None
    )
    keys = _explicit_keys(argv)
    if not torch.cuda.is_available():
        argv += ["--bf16", "false", "--fp16", "false"]
    parser = TrlParser((TrainArguments, config_class, ModelConfig), prog="python -m train")
    train_args, training_args, model_args = parser.parse_args_and_config(argv)
    return Parsed(train_args, training_args, model_args, keys, asked)


def _explicit_keys(argv: list[str]) -> list[str]:
    """Keys the recipe file and the command line set, in that order (for the resolved recipe)."""
    import yaml

    keys = []
    if "--config" in argv:
        with open(argv[argv.index("--config") + 1]) as f:
            keys += [k for k in yaml.safe_load(f) if k != "env"]
    for token in argv:
        if token.startswith("--") and token != "--config":
            key = token[2:].split("=", 1)[0].replace("-", "_")
            key = key[3:] if key.startswith("no_") and key not in keys else key
            keys.append(key)
    return list(dict.fromkeys(keys))


# ----------------------------------------------------------------------------------------------
# Adapting one recipe to the machine


def adapt_to_device(
    train_args, training_args, model_args, mixed_precision=None
) -> tuple[str, str, list[str]]:
    """GPU: the recipe as written. CPU: fp32 (bf16 autocast is ~5x slower there), 4-bit only if asked."""
    import torch

    notes = []
    if torch.cuda.is_available():
        device = "cuda"
    else:
        device = "cpu"
        training_args.bf16 = training_args.fp16 = False  # parse_args has done it already
        if mixed_precision:
            notes.append(f"no GPU: {mixed_precision} mixed precision off")
        if model_args.dtype not in (None, "float32", "auto"):
            notes.append(f"no GPU: weights in float32 instead of {model_args.dtype}")
        model_args.dtype = "float32"
        if (model_args.load_in_4bit or model_args.load_in_8bit) and not train_args.quantize_on_cpu:
            model_args.load_in_4bit = model_args.load_in_8bit = False
            notes.append("no GPU: base loaded in fp32, not quantized (set quantize_on_cpu to keep 4-bit)")
    if model_args.load_in_4bit:
        compute = model_args.dtype if model_args.dtype not in (None, "auto") else "float32"
        precision = f"4-bit {model_args.bnb_4bit_quant_type.upper()} base, {compute} compute"
    elif model_args.load_in_8bit:
        precision = "8-bit base"
    elif training_args.bf16:
        precision = f"{model_args.dtype or 'auto'} weights, bf16 mixed precision"
    else:
        precision = model_args.dtype or "auto"
    return device, precision, notes


# ----------------------------------------------------------------------------------------------
# Data


def load_train_pairs(train_args, tokenizer) -> tuple[list[dict], dict]:
    from train.data import build_pairs, load_pairs, prompt_messages, write_pairs

    path = Path(train_args.pairs_file)
    if not path.exists():
        if not train_args.dataset_source:
            raise ConfigError(
                f"pairs_file {path} does not exist: run `python -m train.data --source SOURCE "
                f"--output-dir {path.parent}` first, or set dataset_source in the recipe"
            )
        if path.name != "train.jsonl":
            raise ConfigError(
                f"pairs_file must end in train.jsonl to be built from dataset_source, got {path}"
            )
        from train import hh_rlhf

        sources = train_args.dataset_source
        sources = [sources] if isinstance(sources, str) else list(sources)  # a YAML string or a list
        print(f"building pairs from {' + '.join(sources)} into {path.parent}")
        if hh_rlhf.is_hh_rlhf(sources[0]):  # the judge's data
            train, evaluation, stats = hh_rlhf.build_pairs(sources[0], limit=train_args.dataset_limit)
        else:
            train, evaluation, stats = build_pairs(
                sources,
                languages=train_args.dataset_languages,
                depth=train_args.dataset_depth,
                limit=train_args.dataset_limit,
            )
        write_pairs(path.parent, train, evaluation, stats)
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


def to_dataset(pairs: list[dict], method: str):
    """Conversational rows, so the tokenizer's chat template renders every prompt (and DPO's replies)."""
    from datasets import Dataset

    from train.data import prompt_messages

    rows = {"prompt": [prompt_messages(p["prompt"]) for p in pairs]}
    if method in ("dpo", "reward"):
        rows["chosen"] = [[{"role": "assistant", "content": p["chosen"]}] for p in pairs]
        rows["rejected"] = [[{"role": "assistant", "content": p["rejected"]}] for p in pairs]
    else:  # GRPO: the replies reach the rewards as plain text columns
        rows["chosen"] = [p["chosen"] for p in pairs]
        rows["rejected"] = [p["rejected"] for p in pairs]
    return Dataset.from_dict(rows)


# ----------------------------------------------------------------------------------------------
# Model


def load_tokenizer_and_model(
    model_args, device: str, trust_remote_code: bool = False, load: bool = True, method: str = "grpo"
):
    """The tokenizer (with the shared chat template) and the base model, quantized when the recipe says;
    for a reward model, the base with a one-score head."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl import get_quantization_config

    from assistant.models import ModelLoadError, resolve_base
    from assistant.prompt import ensure_chat_template

    name = model_args.model_name_or_path
    if not name:
        raise ConfigError("model_name_or_path is not set: name a Hub model id or a local folder")
    path = resolve_base(name, model_args.model_revision)
    local = Path(path).is_dir()
    revision = None if local else model_args.model_revision
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, revision=revision, trust_remote_code=trust_remote_code
        )
    except OSError as error:
        raise ModelLoadError(f"cannot load the tokenizer of {name!r}: {str(error).splitlines()[0]}") from None
    ensure_chat_template(tokenizer)
    tokenizer.padding_side = "left"  # generation pads prompts on the left
    if not load:
        return tokenizer, None

    kwargs = {
        "revision": revision,
        "dtype": model_args.dtype,
        "attn_implementation": model_args.attn_implementation,
        "trust_remote_code": trust_remote_code,
    }
    quantization = get_quantization_config(model_args)
    if quantization is not None:
        from accelerate import PartialState

        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = {"": PartialState().local_process_index if device == "cuda" else "cpu"}
    if method == "reward":
        model_class, kwargs["num_labels"] = AutoModelForSequenceClassification, 1
    else:
        model_class = AutoModelForCausalLM
    try:
        model = model_class.from_pretrained(path, **kwargs)
    except OSError as error:
        raise ModelLoadError(f"cannot load base model {name!r}: {str(error).splitlines()[0]}") from None
    if model.config.pad_token_id is None:  # a score head reads the last non-pad token
        model.config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
    # The adapter must name the base by the id the recipe gave, never a local cache path.
    model.config._name_or_path = name
    model.name_or_path = name
    return tokenizer, model


def check_target_modules(model, targets) -> list[str] | str | None:
    """Every configured LoRA target must match a module of the model: a typo or another architecture's
    name (o_proj on Phi-2) would otherwise be silently left untrained."""
    if targets is None or targets == "all-linear":
        return targets
    if isinstance(targets, str) and not re.fullmatch(r"[\w.]+", targets):
        # A regular expression (PEFT's meaning of a string): it must match at least one module.
        if not any(re.fullmatch(targets, n) for n, _ in model.named_modules()):
            raise ConfigError(f"lora_target_modules regex {targets!r} matches no module of the model")
        return targets
    targets = [targets] if isinstance(targets, str) else list(targets)
    names = [n for n, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        import torch

        linear = sorted(
            {
                n.rsplit(".", 1)[-1]
                for n, m in model.named_modules()
                if isinstance(m, torch.nn.Linear) or "Linear" in type(m).__name__
            }
        )
        raise ConfigError(
            f"lora_target_modules {', '.join(missing)} match no module of {model.config._name_or_path} "
            f"({type(model).__name__}); its linear layers are: {', '.join(linear)}"
        )
    return targets


# ----------------------------------------------------------------------------------------------
# Outputs


def _yaml_value(value):
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (list, tuple, set)):
        return [_yaml_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _yaml_value(v) for k, v in value.items()}
    return value


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; these files are meant to be shared
    os.replace(tmp, path)


def resolved_recipe(keys, requested: dict, *configs) -> str:
    """The recipe as run: the file's keys and the overrides, with the values used; the rest is default."""
    import peft
    import transformers
    import trl
    import yaml

    values = {}
    for config in configs:
        for f in fields(config):
            if f.name in keys or f.name in requested:
                values[f.name] = _yaml_value(requested.get(f.name, getattr(config, f.name)))
    ordered = {k: values[k] for k in keys if k in values} | values
    header = (
        "# The recipe this run used: the recipe file's keys and command-line overrides, with the values\n"
        "# actually used on this machine. Every other option is the default of "
        f"trl {trl.__version__}, transformers {transformers.__version__}, peft {peft.__version__}.\n"
        "# Re-run with: python -m train --config recipe.yaml\n"
    )
    return header + yaml.safe_dump(ordered, sort_keys=False, allow_unicode=True)


TREND_KEYS = (
    "reward",
    "reward_std",
    "kl",
    "loss",
    "completions/mean_length",
    "completions/clipped_ratio",
    "rewards/margins",
    "rewards/accuracies",
)


def metric_trends(metrics: list[dict]) -> dict:
    """Means over the first and the last tenth of the logged steps, and over each pass through the pairs.

    One logged GRPO step is one or two prompts, so single first/last values mostly say which prompt
    came up; each pass sees the same prompts, so pass means compare like with like.
    """
    steps = [r for r in metrics if "train_runtime" not in r]
    keys = [k for k in TREND_KEYS if any(k in r for r in steps)]
    keys += sorted({k for r in steps for k in r if k.startswith("rewards/") and k.endswith("/mean")})
    tenth = max(1, len(steps) // 10)
    trends = {}
    for key in keys:
        rows = [r for r in steps if isinstance(r.get(key), (int, float))]
        if not rows:
            continue
        passes: dict[int, list[float]] = {}
        for r in rows:
            passes.setdefault(math.ceil((r.get("epoch") or 0) - 1e-9), []).append(r[key])
        trends[key] = {
            "first_tenth_mean": sum(r[key] for r in rows[:tenth]) / len(rows[:tenth]),
            "last_tenth_mean": sum(r[key] for r in rows[-tenth:]) / len(rows[-tenth:]),
            "pass_means": [sum(v) / len(v) for v in passes.values()],
            "steps_per_tenth": tenth,
        }
    return trends


def final_metrics(metrics: list[dict]) -> dict:
    steps = [r for r in metrics if "train_runtime" not in r]
    summary = next((r for r in reversed(metrics) if "train_runtime" in r), {})
    last = {k: v for k, v in (steps[-1] if steps else {}).items() if k not in ("step", "epoch")}
    return {**last, **{k: v for k, v in summary.items() if k not in ("step", "epoch")}}


# ----------------------------------------------------------------------------------------------
# The run


class Built(NamedTuple):
    trainer: object  # trl.GRPOTrainer or trl.DPOTrainer
    tokenizer: object
    device: str
    precision: str
    notes: list[str]
    pair_counts: dict
    train_tree_ids: list[str]  # recorded so that evaluation can leave these trees out
    reward_weights: dict | None
    trainable: int
    total: int
    targets: list[str]


def build_trainer(parsed: Parsed, callbacks=(), model=None) -> Built:
    """TRL's trainer for ``parsed``, adapted to this machine, with the LoRA targets checked.

    ``model`` replaces loading ``model_name_or_path`` (the benchmark passes a random Phi-2-sized one).
    """
    from trl import get_peft_config

    train_args, training_args, model_args = parsed.train, parsed.training, parsed.model
    device, precision, notes = adapt_to_device(train_args, training_args, model_args, parsed.mixed_precision)
    for note in notes:
        print(f"note: {note}")
    if not model_args.use_peft:
        raise ConfigError("use_peft is false: this project trains LoRA adapters; set use_peft: true")
    if train_args.method == "reward":
        model_args.lora_task_type = "SEQ_CLS"  # PEFT then trains the new score head too
    tokenizer, loaded = load_tokenizer_and_model(
        model_args, device, training_args.trust_remote_code, load=model is None, method=train_args.method
    )
    model = model if model is not None else loaded
    pairs, pair_counts = load_train_pairs(train_args, tokenizer)
    print(f"pairs: {pair_counts['used']} used of {pair_counts['in_file']} in {train_args.pairs_file}")
    model_args.lora_target_modules = check_target_modules(model, model_args.lora_target_modules)
    peft_config = get_peft_config(model_args)
    dataset = to_dataset(pairs, train_args.method)

    reward_weights = None
    if train_args.method == "grpo":
        from trl import GRPOTrainer

        from train.rewards import get_reward_funcs

        if training_args.reward_weights and len(training_args.reward_weights) != len(train_args.reward_funcs):
            raise ConfigError(
                f"reward_weights has {len(training_args.reward_weights)} values for "
                f"{len(train_args.reward_funcs)} reward_funcs ({', '.join(train_args.reward_funcs)})"
            )
        eos_ids = model.generation_config.eos_token_id
        eos_ids = [eos_ids] if isinstance(eos_ids, int) else list(eos_ids or [])
        reward_funcs = get_reward_funcs(
            train_args.reward_funcs,
            eos_token_ids=sorted({tokenizer.eos_token_id, *eos_ids}),
            embedding_model=train_args.embedding_model,
            reward_model_name_or_path=train_args.reward_model_name_or_path,
        )
        weights = training_args.reward_weights or [1.0] * len(reward_funcs)
        reward_weights = dict(zip(train_args.reward_funcs, weights, strict=False))
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=reward_funcs,
            args=training_args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=list(callbacks),
        )
    else:
        from trl import DPOTrainer, RewardTrainer

        trainer = (DPOTrainer if train_args.method == "dpo" else RewardTrainer)(
            model=model,
            args=training_args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=list(callbacks),
        )

    # Counted on the model as built, never a constant (PEFT counts 4-bit weights at their real size).
    trainable, total = trainer.model.get_nb_trainable_parameters()
    targets = trainer.model.peft_config["default"].target_modules
    targets = [targets] if isinstance(targets, str) else sorted(targets)  # a regex stays whole
    print(
        f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.3f}%), "
        f"LoRA r={model_args.lora_r} on {', '.join(targets)}; {precision} on {device}"
    )
    return Built(
        trainer,
        tokenizer,
        device,
        precision,
        notes,
        pair_counts,
        sorted({pair["tree_id"] for pair in pairs}),
        reward_weights,
        trainable,
        total,
        targets,
    )


def run(parsed: Parsed):
    """Train as ``parsed`` says and write the output folder; return the trainer."""
    import torch
    from transformers.trainer_utils import get_last_checkpoint

    from train.callbacks import MetricsJsonlCallback, read_metrics
    from train.identity import base_identity
    from train.plots import plot_metrics

    train_args, training_args, model_args = parsed.train, parsed.training, parsed.model
    started = time.time()
    output_dir = Path(training_args.output_dir)
    requested = {"push_to_hub": training_args.push_to_hub}
    # Our card and our push replace TRL's: TRL would push its own README at every save.
    push, repo_id, private = (
        training_args.push_to_hub,
        training_args.hub_model_id,
        training_args.hub_private_repo,
    )
    training_args.push_to_hub = False
    if push and not repo_id:
        raise ConfigError("push_to_hub is set but hub_model_id is not: name the Hub repo (owner/name)")

    built = build_trainer(parsed, callbacks=[MetricsJsonlCallback(output_dir / "metrics.jsonl")])
    trainer, tokenizer = built.trainer, built.tokenizer
    checkpoint = training_args.resume_from_checkpoint
    if checkpoint is None and train_args.resume and output_dir.is_dir():
        checkpoint = get_last_checkpoint(str(output_dir))
    if checkpoint:
        print(f"resuming from {checkpoint}")
    result = trainer.train(resume_from_checkpoint=checkpoint)

    if trainer.accelerator.is_main_process:
        trainer.save_model(str(output_dir))
        tokenizer.save_pretrained(str(output_dir))
        config_class = type(training_args)
        write_atomic(
            output_dir / "recipe.yaml",
            resolved_recipe(parsed.keys, requested, train_args, training_args, model_args),
        )
        stats = Path(train_args.pairs_file).parent / "stats.json"
        if stats.exists():
            shutil.copyfile(stats, output_dir / "data_stats.json")
        info = {
            "method": train_args.method,
            "description": train_args.description,
            "base_model": model_args.model_name_or_path,
            "base_weights": base_identity(model_args.model_name_or_path, model_args.model_revision),
            "trainable_params": built.trainable,
            "total_params": built.total,
            "target_modules": built.targets,
            "lora": {
                "r": model_args.lora_r,
                "alpha": model_args.lora_alpha,
                "dropout": model_args.lora_dropout,
            },
            "global_step": trainer.state.global_step,
            "train_runtime_s": round(time.time() - started, 1),
            "resumed_from": str(checkpoint) if checkpoint else None,
            "device": built.device
            if built.device == "cpu"
            else f"{built.device} x{trainer.accelerator.num_processes}",
            "precision": built.precision,
            "notes": built.notes,
            "train_pairs": built.pair_counts["used"],
            "pair_counts": built.pair_counts,
            "pairs_file": str(train_args.pairs_file),
            "train_tree_ids": built.train_tree_ids,
            "reward_weights": built.reward_weights,
            "final_metrics": final_metrics(read_metrics(output_dir / "metrics.jsonl")) | dict(result.metrics),
            "trends": metric_trends(read_metrics(output_dir / "metrics.jsonl")),
            "config_class": config_class.__name__,
            "versions": {m.__name__: m.__version__ for m in _libraries()},
            "torch_threads": torch.get_num_threads(),
        }
        write_atomic(output_dir / "training_info.json", json.dumps(info, indent=2) + "\n")
        plot_metrics(output_dir)

        # Last: TRL and PEFT write their own README.md on save; ours replaces it.
        from model_card import write_card

        write_card(output_dir)
        if push:
            from train.hub import push_to_hub

            push_to_hub(output_dir, repo_id=repo_id, private=private)
    if hasattr(trainer, "end"):
        trainer.end()
    return trainer


def _libraries():
    import peft
    import torch
    import transformers
    import trl

    return (trl, transformers, peft, torch)


def main(argv: list[str] | None = None) -> int:
    from assistant.models import ModelLoadError

    try:
        parsed = parse_args(argv)
    except (ValueError, OSError) as error:  # bad recipe file or values: one line, no traceback
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    try:
        from train.data import DataError
        from train.hub import HubPushError

        trainer = run(parsed)
    except (ConfigError, DataError, ModelLoadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except HubPushError as error:
        print(
            f"error: trained and saved in {parsed.training.output_dir}, but the push failed: {error}; "
            f"push again with: python -m train.hub {parsed.training.output_dir} --repo-id ...",
            file=sys.stderr,
        )
        return 3
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130
    print(f"done: {trainer.args.output_dir}")
    return 0
