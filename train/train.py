"""Fine-tune a causal LM with LoRA on Open Assistant preference pairs, with GRPO, DPO or a reward model (TRL).

    python -m train --config recipes/cpu-demo.yaml [--key value ...]
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml -m train --config recipes/phi2-grpo-qlora.yaml

Reads top to bottom: parse and check the recipe (train.config), adapt it to the machine, load the
pairs (built once, by the main process, when missing), the tokenizer, check the LoRA targets on the
empty architecture and load the model (train.model), build TRL's trainer, then train, resuming from
the last complete checkpoint in output_dir or leaving a finished run alone, and write the output folder
(train.outputs: adapter, tokenizer, recipe.yaml, training_info.json, metrics.jsonl, plots, our card)
and push when asked. About 450 lines because it is the whole entry in the order it runs; the parts
that stand alone live in those three modules.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import NamedTuple

from train import outputs
from train.config import (
    ConfigError,
    GroupArguments,
    MethodArguments,
    TrainArguments,
    check_adapters,
    check_group_sizes,
    check_keys,
    check_pairs,
    check_rewards,
    check_values,
    lists_of_one,
)
from train.model import (
    check_target_modules,
    empty_model,
    load_model,
    load_tokenizer,
    model_type,
    trainable_to_fp32,
    warm_start,
)
from train.outputs import metric_trends  # noqa: F401  (tests/_helpers_card imports it from here)

# ----------------------------------------------------------------------------------------------
# Parsing


class Parsed(NamedTuple):
    train: TrainArguments
    training: object  # trl.GRPOConfig, trl.DPOConfig or trl.RewardConfig
    model: object  # trl.ModelConfig
    keys: list[str]  # keys set by the recipe file and the command line, in order
    mixed_precision: str | None  # "bf16"/"fp16" as asked for, before the machine changed it


def parse_args(argv: list[str] | None = None) -> Parsed:
    """Our arguments and TRL's from a recipe file and ``--key value`` overrides, checked.

    The method decides which TRL config class the recipe's keys belong to, so a first TrlParser pass
    reads only ``method``, the mixed precision asked for and GRPO's batch sizes; then every key and
    value is checked (train.config) and the second pass parses everything. The machine's precision is
    decided before the second pass: TrainingArguments refuses bf16 without CUDA, and fp16 where a GPU
    has no bf16.
    """
    import yaml
    from trl import DPOConfig, GRPOConfig, ModelConfig, RewardConfig, SFTConfig

    argv = list(sys.argv[1:] if argv is None else argv)
    recipe, where = {}, "the recipe"
    if "--config" in argv:
        where = argv[argv.index("--config") + 1]
        with open(where) as f:
            recipe = yaml.safe_load(f)
        if not isinstance(recipe, dict):
            raise ConfigError(f"{where} must hold one YAML mapping of key: value lines")
    check_values(recipe, (MethodArguments, GroupArguments), where)
    first, group, _ = _parser((MethodArguments, GroupArguments), add_help=False).parse_args_and_config(
        argv, return_remaining_strings=True
    )
    config_class = {"grpo": GRPOConfig, "dpo": DPOConfig, "reward": RewardConfig, "sft": SFTConfig}[
        first.method
    ]
    classes = (TrainArguments, config_class, ModelConfig)
    recipe_keys, command_line_keys = [k for k in recipe if k != "env"], _command_line_keys(argv, classes)
    check_keys(recipe_keys, classes, where)
    check_keys(command_line_keys, classes, "the command line arguments")
    check_values(recipe, classes, where)
    if first.method == "grpo":
        defaults = {f.name: f.default for f in fields(GRPOConfig)}
        check_group_sizes(group, defaults, int(os.environ.get("WORLD_SIZE", "1")))
    # TRL turns bf16 on when neither is set.
    asked = (
        "fp16" if first.fp16 else "bf16" if first.bf16 or (first.bf16 is None and not first.fp16) else None
    )
    bf16, fp16 = mixed_precision_for(asked, first.use_cpu)
    argv += ["--bf16", str(bf16).lower(), "--fp16", str(fp16).lower()]
    train_args, training_args, model_args = _parser(classes).parse_args_and_config(argv)
    lists_of_one(train_args, training_args, model_args)
    if train_args.method == "grpo":
        check_rewards(train_args, training_args.reward_weights)
    check_pairs(train_args)
    check_adapters(train_args)
    keys = list(dict.fromkeys(recipe_keys + command_line_keys))
    return Parsed(train_args, training_args, model_args, keys, asked)


def _parser(classes, **kwargs):
    """TRL's parser, with argparse's usage-and-exit on a bad value turned into one ConfigError line."""
    from trl import TrlParser

    class Parser(TrlParser):
        def error(self, message):
            raise ConfigError(f"{message} (python -m train --help lists the options)")

    return Parser(classes, prog="python -m train", **kwargs)


def _command_line_keys(argv: list[str], classes) -> list[str]:
    """The option names given as --key on the command line (``--no_key`` switches a true flag off)."""
    known = {f.name for cls in classes for f in fields(cls)}
    keys = []
    for token in argv:
        if token.startswith("--") and token not in ("--config", "--help"):
            key = token[2:].split("=", 1)[0].replace("-", "_")
            keys.append(key[3:] if key.startswith("no_") and key not in known else key)
    return keys


# ----------------------------------------------------------------------------------------------
# Adapting one recipe to the machine


def mixed_precision_for(asked: str | None, use_cpu: bool = False) -> tuple[bool, bool]:
    """(bf16, fp16) for this machine: as asked on a GPU that has it, fp16 on a GPU without bf16 (a T4),
    neither on a CPU (bf16 autocast there is ~5x slower)."""
    import torch

    if use_cpu or not torch.cuda.is_available():
        return False, False
    if asked == "bf16" and not torch.cuda.is_bf16_supported():
        return False, True
    return asked == "bf16", asked == "fp16"


def adapt_to_device(
    train_args, training_args, model_args, mixed_precision=None
) -> tuple[str, str, list[str]]:
    """GPU: the recipe as written (fp16 for bf16 where the GPU lacks it). CPU: fp32, 4-bit only if asked."""
    import torch

    notes = []
    if torch.cuda.is_available() and not training_args.use_cpu:
        device = "cuda"
        if mixed_precision == "bf16" and training_args.fp16:  # mixed_precision_for found no bf16
            from assistant.models import gpu_compute_dtype

            compute = gpu_compute_dtype(False, model_type(model_args, training_args.trust_remote_code))
            if compute == torch.float32:
                # TrainingArguments turned fp16 into its mixed_precision when parsed: both go.
                training_args.fp16, training_args.mixed_precision = False, "no"
                model_args.dtype = "float32"
                notes.append("GPU without bf16: Phi computes in fp32 (its attention overflows in fp16)")
            else:
                notes.append("GPU without bf16: fp16 mixed precision instead")
                if model_args.dtype == "bfloat16":
                    model_args.dtype = "float16"
    else:
        device, why = "cpu", "use_cpu" if torch.cuda.is_available() else "no GPU"
        training_args.bf16 = training_args.fp16 = False  # parse_args has done it already
        if mixed_precision:
            notes.append(f"{why}: {mixed_precision} mixed precision off")
        if model_args.dtype not in (None, "float32", "auto"):
            notes.append(f"{why}: weights in float32 instead of {model_args.dtype}")
        model_args.dtype = "float32"
        if (model_args.load_in_4bit or model_args.load_in_8bit) and not train_args.quantize_on_cpu:
            model_args.load_in_4bit = model_args.load_in_8bit = False
            notes.append(f"{why}: base loaded in fp32, not quantized (set quantize_on_cpu to keep 4-bit)")
    if model_args.load_in_4bit:
        compute = model_args.dtype if model_args.dtype not in (None, "auto") else "float32"
        precision = f"4-bit {model_args.bnb_4bit_quant_type.upper()} base, {compute} compute"
    elif model_args.load_in_8bit:
        precision = "8-bit base"
    elif training_args.bf16 or training_args.fp16:
        precision = f"{model_args.dtype or 'auto'} weights, {'bf16' if training_args.bf16 else 'fp16'} mixed precision"
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


# ----------------------------------------------------------------------------------------------
# The run


class Built(NamedTuple):
    trainer: object  # trl.GRPOTrainer, DPOTrainer, RewardTrainer or SFTTrainer
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
    from accelerate import PartialState
    from trl import get_peft_config

    train_args, training_args, model_args = parsed.train, parsed.training, parsed.model
    device, precision, notes = adapt_to_device(train_args, training_args, model_args, parsed.mixed_precision)
    for note in notes:
        print(f"note: {note}")
    if not model_args.use_peft:
        raise ConfigError("use_peft is false: this project trains LoRA adapters; set use_peft: true")
    if train_args.method == "reward":
        model_args.lora_task_type = "SEQ_CLS"  # PEFT then trains the new score head too
    trust = training_args.trust_remote_code
    tokenizer, path, revision = load_tokenizer(model_args, trust)
    # The main process builds a missing pairs file; the others then read it.
    with PartialState().main_process_first():
        pairs, pair_counts = load_train_pairs(train_args, tokenizer)
    print(f"pairs: {pair_counts['used']} used of {pair_counts['in_file']} in {train_args.pairs_file}")
    # Checked on the empty architecture, so a wrong name stops the run before any weights load.
    skeleton = (
        model if model is not None else empty_model(model_args, path, revision, trust, train_args.method)
    )
    if not train_args.init_adapter:  # a warm start trains its own adapter's targets
        model_args.lora_target_modules = check_target_modules(skeleton, model_args.lora_target_modules)
    if model is None:
        model = load_model(model_args, path, revision, tokenizer, device, trust, train_args.method)
    peft_config = get_peft_config(model_args)
    if train_args.init_adapter:
        model, peft_config = warm_start(model, train_args.init_adapter, model_args, notes)
    dataset = to_dataset(pairs, train_args.method)

    reward_weights = None
    if train_args.method == "grpo":
        from trl import GRPOTrainer

        from train.rewards import get_reward_funcs

        eos_ids = model.generation_config.eos_token_id
        eos_ids = [eos_ids] if isinstance(eos_ids, int) else list(eos_ids or [])
        reward_funcs = get_reward_funcs(
            train_args.reward_funcs,
            eos_token_ids=sorted({tokenizer.eos_token_id, *eos_ids}),
            embedding_model=train_args.embedding_model,
            reward_model_name_or_path=train_args.reward_model_name_or_path,
            implicit_reward_adapter=train_args.implicit_reward_adapter,
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
        from trl import DPOTrainer, RewardTrainer, SFTTrainer

        trainer_class = {"dpo": DPOTrainer, "reward": RewardTrainer, "sft": SFTTrainer}[train_args.method]
        trainer = trainer_class(
            model=model,
            args=training_args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=list(callbacks),
        )

    # TRL made them bf16 over a 4-bit base, where lr 2e-5 updates round away (see trainable_to_fp32).
    trainable_to_fp32(trainer.model)
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
    """Train as ``parsed`` says and write the output folder; return the trainer.

    Resumes from the last complete checkpoint in output_dir, or says the run there is finished and
    changes nothing (see train.outputs for how the folder tells). On several processes every rank
    trains and calls save_model (ZeRO-3 and FSDP gather the weights from all of them, as open-r1 does);
    the main process alone writes the rest of the folder, the card and the push.
    """
    from train.callbacks import MetricsJsonlCallback, gold_check

    train_args, training_args = parsed.train, parsed.training
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

    metrics_log = MetricsJsonlCallback(output_dir / "metrics.jsonl")
    gold = gold_check(train_args, output_dir)
    built = build_trainer(parsed, callbacks=[metrics_log] + ([gold] if gold else []))
    trainer = built.trainer
    if gold:
        gold.bind(trainer, train_args.max_prompt_tokens)
        overlap = {p["tree_id"] for p in gold.pairs} & set(built.train_tree_ids)
        if overlap:
            raise ConfigError(
                f"gold_check_pairs {train_args.gold_check_pairs} shares {len(overlap)} trees with the training "
                "pairs: point it at held-out (dev) pairs"
            )
    is_main = trainer.accelerator.is_main_process
    # The steps the Trainer plans for this recipe, computed by the Trainer itself.
    planned = trainer.set_initial_training_values(trainer.args, trainer.get_train_dataloader())[-1]
    checkpoint = training_args.resume_from_checkpoint
    if checkpoint is None and train_args.resume:
        done = outputs.finished_steps(output_dir)
        if done is not None and done >= planned:
            if is_main:
                print(
                    f"already finished: {output_dir} holds a finished run of {done} steps, nothing changed "
                    "(--resume false starts over; a larger max_steps trains on)"
                )
            return _end(trainer)
        checkpoint = outputs.last_checkpoint(output_dir)
        if is_main:
            outputs.remove_incomplete_checkpoints(output_dir)
    elif checkpoint is None and is_main:
        outputs.start_over(output_dir)
    if checkpoint:
        print(f"resuming from {checkpoint}")
    if checkpoint and outputs.checkpoint_step(checkpoint) >= planned:
        # Killed after its last save: nothing is left to train (resumed, the Trainer would take one
        # step more), only the end to write.
        outputs.load_checkpoint(trainer, checkpoint)
        if is_main:
            metrics_log.write_history(trainer.state)
        train_metrics = {}
    else:
        train_metrics = trainer.train(resume_from_checkpoint=checkpoint).metrics

    if is_main:  # until the end is written, no training_info.json describes an adapter it did not make
        (output_dir / outputs.INFO).unlink(missing_ok=True)
    trainer.save_model(str(output_dir))
    if is_main and train_args.init_adapter:
        # PEFT saves every adapter, TRL's frozen reference copy too (as ref/): that is the warm start,
        # already in init_adapter, and no part of this adapter.
        shutil.rmtree(output_dir / "ref", ignore_errors=True)
    if is_main:
        outputs.write_run_folder(
            output_dir, parsed, built, trainer, train_metrics, checkpoint, started, requested
        )
        if push:
            from train.hub import push_to_hub

            push_to_hub(output_dir, repo_id=repo_id, private=private)
    return _end(trainer)


def _end(trainer):
    """Every rank waits for the main one to finish writing and pushing, then all leave the process group
    together: a rank that exits while another still works can hang in gloo's shutdown. (A main process
    that fails exits instead, and the launcher stops the others.)"""
    trainer.accelerator.wait_for_everyone()
    if hasattr(trainer, "end"):
        trainer.end()
    trainer.accelerator.end_training()
    return trainer


def main(argv: list[str] | None = None) -> int:
    from assistant.models import ModelLoadError
    from train import cli
    from train.pieces import check_recipe

    argv = list(sys.argv[1:] if argv is None else argv)
    trl_help = cli.trl_help_argv(argv)
    if trl_help is None and cli.wants_train_help(argv):
        print(cli.train_help(), end="")
        return 0
    cli.require_train_extra("python -m train")
    argv = trl_help or argv
    try:
        parsed = parse_args(argv)
        check_recipe(parsed.train)  # the data and reward model it needs, before anything loads
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
