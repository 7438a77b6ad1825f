"""Fine-tune a causal LM with LoRA on Open Assistant preference pairs, with GRPO, DPO or a reward model (TRL).

    python -m train --config recipes/cpu-demo.yaml [--key value ...]
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml -m train --config recipes/phi2-grpo-qlora.yaml

Reads top to bottom: build TRL's trainer for a parsed recipe (the recipe adapted to the machine, the
pairs, the tokenizer, the LoRA targets checked on the empty architecture, the model, the rewards), then
run it: train, resuming from the last complete checkpoint in output_dir or leaving a finished run alone,
write the output folder and push when asked; last, the command's entry with its one-line errors.
The parts live in train.recipe (reading and checking the recipe), train.cli (--help), train.model (the
model on this machine), train.dataset (the rows), train.callbacks (metrics, the gold check) and
train.outputs (the folder).
"""

from __future__ import annotations

import functools
import shutil
import sys
import time
from pathlib import Path
from typing import NamedTuple

from train import cli, outputs
from train.config import ConfigError
from train.dataset import load_train_pairs, to_dataset
from train.model import (
    adapt_to_device,
    check_target_modules,
    empty_model,
    load_model,
    load_tokenizer,
    lora_to_fp32_where_needed,
    warm_start,
)
from train.recipe import Parsed, parse_args

__all__ = ["Built", "ConfigError", "Parsed", "build_trainer", "main", "parse_args", "run"]

# ----------------------------------------------------------------------------------------------
# The trainer


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
    trainer, reward_weights = _trainer(parsed, model, tokenizer, pairs, peft_config, callbacks)

    # TRL made them bf16 over a 4-bit base, where lr 2e-5 updates round away; never under ZeRO-3 with
    # a 16-bit base, which needs them in its dtype (see lora_to_fp32_where_needed).
    lora_to_fp32_where_needed(trainer.model, device)
    # Counted on the model as built, never a constant (PEFT counts 4-bit weights at their real size).
    trainable, total = trainer.model.get_nb_trainable_parameters()
    targets = trainer.model.peft_config["default"].target_modules
    targets = [targets] if isinstance(targets, str) else sorted(targets)  # a regex stays whole
    print(
        f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.3f}%), "
        f"LoRA r={model_args.lora_r} on {', '.join(targets)}; {precision} on {device}"
    )
    tree_ids = sorted({pair["tree_id"] for pair in pairs})
    return Built(
        trainer, tokenizer, device, precision, notes, pair_counts, tree_ids, reward_weights, trainable, total, targets
    )  # fmt: skip


def _trainer(parsed: Parsed, model, tokenizer, pairs, peft_config, callbacks) -> tuple[object, dict | None]:
    """The method's TRL trainer, and GRPO's reward weights by reward name (None for the other methods)."""
    from trl import DPOTrainer, RewardTrainer, SFTTrainer

    # GRPO completions end at the template's end of turn (Phi-2's "Instruct:"), not only at EOS.
    from train.turns import TurnStopGRPOTrainer, add_turn_stop_ids

    train_args, training_args = parsed.train, parsed.training
    rewards, reward_weights = {}, None
    if train_args.method == "grpo":
        from train.rewards import get_reward_funcs

        rewards["reward_funcs"] = get_reward_funcs(
            train_args.reward_funcs,
            eos_token_ids=add_turn_stop_ids(model, tokenizer),
            embedding_model=train_args.embedding_model,
            reward_model_name_or_path=train_args.reward_model_name_or_path,
            implicit_reward_adapter=train_args.implicit_reward_adapter,
            quantize_implicit=bool(parsed.model.load_in_4bit),  # as the policy's base loaded
        )
        weights = training_args.reward_weights or [1.0] * len(rewards["reward_funcs"])
        reward_weights = dict(zip(train_args.reward_funcs, weights, strict=False))
    grpo = TurnStopGRPOTrainer
    if train_args.preference_anchor:  # the DPO loss on the same pairs beside GRPO's (train.anchor)
        from train.anchor import AnchoredGRPOTrainer

        grpo = functools.partial(
            AnchoredGRPOTrainer,
            anchor_pairs=pairs,
            weight=train_args.preference_anchor,
            pairs_per_call=train_args.preference_anchor_pairs,
            max_length=train_args.preference_anchor_max_length,
            whole=train_args.preference_anchor_whole,
        )
    trainer_class = {
        "grpo": grpo,
        "dpo": DPOTrainer,
        "reward": RewardTrainer,
        "sft": SFTTrainer,
    }
    trainer = trainer_class[train_args.method](
        model=model,
        **rewards,
        args=training_args,
        train_dataset=to_dataset(pairs, train_args.method),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=list(callbacks),
    )
    return trainer, reward_weights


# ----------------------------------------------------------------------------------------------
# The run


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
    push = (training_args.hub_model_id, training_args.hub_private_repo) if training_args.push_to_hub else None
    training_args.push_to_hub = False
    if push and not push[0]:
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
    checkpoint = _checkpoint_to_resume(trainer, parsed, planned)
    if checkpoint is False:
        return _end(trainer)
    if checkpoint and outputs.checkpoint_step(checkpoint) >= planned:
        # Killed after its last save: nothing is left to train (resumed, the Trainer would take one
        # step more), only the end to write.
        outputs.load_checkpoint(trainer, checkpoint)
        if is_main:
            metrics_log.write_history(trainer.state)
        train_metrics = {}
    else:
        train_metrics = trainer.train(resume_from_checkpoint=checkpoint).metrics

    _write_end(parsed, built, train_metrics, checkpoint, started, requested, push)
    return _end(trainer)


def _write_end(parsed: Parsed, built: Built, train_metrics, checkpoint, started, requested, push) -> None:
    """The adapter (from every rank), then the rest of the folder, the card and the push (the main one)."""
    trainer, output_dir = built.trainer, Path(parsed.training.output_dir)
    is_main = trainer.accelerator.is_main_process
    if is_main:  # until the end is written, no training_info.json describes an adapter it did not make
        (output_dir / outputs.INFO).unlink(missing_ok=True)
    trainer.save_model(str(output_dir))
    if is_main and parsed.train.init_adapter:
        # PEFT saves every adapter, TRL's frozen reference copy too (as ref/): that is the warm start,
        # already in init_adapter, and no part of this adapter.
        shutil.rmtree(output_dir / "ref", ignore_errors=True)
    if is_main:
        outputs.write_run_folder(
            output_dir, parsed, built, trainer, train_metrics, checkpoint, started, requested
        )
        if push:
            from train.hub import push_to_hub

            push_to_hub(output_dir, repo_id=push[0], private=push[1])


def _checkpoint_to_resume(trainer, parsed: Parsed, planned: int) -> str | None | bool:
    """The checkpoint to resume from (None: from the start), or False when output_dir holds a finished
    run of ``planned`` steps or more, which is left as it is."""
    output_dir, is_main = Path(parsed.training.output_dir), trainer.accelerator.is_main_process
    checkpoint = parsed.training.resume_from_checkpoint
    if checkpoint is None and parsed.train.resume:
        done = outputs.finished_steps(output_dir)
        if done is not None and done >= planned:
            if is_main:
                print(
                    f"already finished: {output_dir} holds a finished run of {done} steps, nothing changed "
                    "(--resume false starts over; a larger max_steps trains on)"
                )
            return False
        checkpoint = outputs.last_checkpoint(output_dir)
        if is_main:
            outputs.remove_incomplete_checkpoints(output_dir)
    elif checkpoint is None and is_main:
        outputs.start_over(output_dir)
    if checkpoint:
        print(f"resuming from {checkpoint}")
    return checkpoint


def _end(trainer):
    """Every rank waits for the main one to finish writing and pushing, then all leave the process group
    together: a rank that exits while another still works can hang in gloo's shutdown. (A main process
    that fails exits instead, and the launcher stops the others.)"""
    trainer.accelerator.wait_for_everyone()
    if hasattr(trainer, "end"):
        trainer.end()
    trainer.accelerator.end_training()
    return trainer


# ----------------------------------------------------------------------------------------------
# The command


def _error(message: str) -> None:
    """``error: message`` on stderr in one write: the ranks of a launch share the stream, and print's two
    writes (the text, then the newline) let two ranks' errors land on one line (seen in CI)."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    from assistant.models import ModelLoadError
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
        check_recipe(parsed.train)  # the data, adapters and reward model it needs, before anything loads
    except (ValueError, OSError) as error:  # bad recipe file or values: one line, no traceback
        _error(str(error).splitlines()[0])
        return 2
    try:
        from train.data import DataError
        from train.hub import HubPushError

        trainer = run(parsed)
    except (ConfigError, DataError, ModelLoadError) as error:
        _error(str(error))
        return 2
    except HubPushError as error:
        _error(
            f"trained and saved in {parsed.training.output_dir}, but the push failed: {error}; "
            f"push again with: python -m train.hub {parsed.training.output_dir} --repo-id ..."
        )
        return 3
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130
    print(f"done: {trainer.args.output_dir}")
    return 0
