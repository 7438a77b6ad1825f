"""The output folder of a run: which checkpoint to resume from, whether the run already finished, and the
files written at the end (tokenizer, recipe.yaml, training_info.json, plots, our card).

A kill can come at any moment. The files written here are written whole (assistant.atomic); the
adapter the Trainer saves is not, and neither is a checkpoint, so the folder tells its state by itself:
- a checkpoint is complete once the Trainer has written its ``trainer_state.json``, which it writes last;
  an incomplete one (killed while saving) is removed and the run resumes from the one before it;
- ``training_info.json`` is removed before the final adapter is saved, written complete (the card is
  rendered from it), and marked ``finished`` only once the card is in place. A folder without the mark is
  a run cut short: the next run resumes from its last checkpoint and writes the end again. With the
  mark, the same command finds nothing to do and changes nothing.
"""

from __future__ import annotations

import json
import math
import resource
import shutil
import time
from dataclasses import fields
from enum import Enum
from pathlib import Path

from assistant.atomic import write_text

INFO = "training_info.json"


# ----------------------------------------------------------------------------------------------
# Checkpoints and the finished mark


def _checkpoints(output_dir: Path) -> list[tuple[int, Path, bool]]:
    """(step, folder, complete) of every checkpoint-N in ``output_dir``, oldest first."""
    from transformers.trainer import TRAINER_STATE_NAME
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    found = []
    for folder in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        step = folder.name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-")
        if folder.is_dir() and step.isdigit():
            try:
                json.loads((folder / TRAINER_STATE_NAME).read_text())
                complete = True
            except (OSError, ValueError):  # not written yet, or cut by the kill
                complete = False
            found.append((int(step), folder, complete))
    return sorted(found)


def last_checkpoint(output_dir: Path) -> str | None:
    """The newest complete checkpoint (transformers' get_last_checkpoint would take a half-saved one)."""
    complete = [folder for _, folder, ok in _checkpoints(output_dir) if ok]
    return str(complete[-1]) if complete else None


def checkpoint_step(checkpoint: str | Path) -> int:
    from transformers.trainer import TRAINER_STATE_NAME

    return json.loads((Path(checkpoint) / TRAINER_STATE_NAME).read_text())["global_step"]


def load_checkpoint(trainer, checkpoint: str | Path) -> None:
    """The adapter (with a reward model's score head) and the Trainer's state of ``checkpoint``, without
    training: what the Trainer restores on a resume."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import TrainerState
    from transformers.trainer import TRAINER_STATE_NAME

    set_peft_model_state_dict(trainer.model, load_file(Path(checkpoint) / "adapter_model.safetensors"))
    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE_NAME))


def remove_incomplete_checkpoints(output_dir: Path) -> None:
    for _, folder, complete in _checkpoints(output_dir):
        if not complete:
            print(f"removing {folder}: cut short while it was being saved")
            shutil.rmtree(folder)


def start_over(output_dir: Path) -> None:
    """--resume false: the previous run's checkpoints would otherwise be taken up by the next resume."""
    for _, folder, _ in _checkpoints(output_dir):
        print(f"starting over: removing {folder}")
        shutil.rmtree(folder)
    (output_dir / INFO).unlink(missing_ok=True)


def finished_steps(output_dir: Path) -> int | None:
    """The steps of the finished run in ``output_dir``; None when there is none (or it was cut short)."""
    try:
        info = json.loads((output_dir / INFO).read_text())
    except (OSError, ValueError):
        return None
    return info.get("global_step") if isinstance(info, dict) and info.get("finished") else None


# ----------------------------------------------------------------------------------------------
# Files


def _yaml_value(value):
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (list, tuple, set)):
        return [_yaml_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _yaml_value(v) for k, v in value.items()}
    return value


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


def peak_memory_mb() -> dict:
    """The process's peak resident set since it started (ru_maxrss: KiB on Linux), and on a GPU its peak
    allocated memory since the last reset."""
    import torch

    peak = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    if torch.cuda.is_available():
        peak["peak_gpu_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
        peak["gpu_total_mb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**20)
    return peak


def write_run_folder(
    output_dir: Path, parsed, built, trainer, train_metrics, checkpoint, started, requested
) -> None:
    """Everything but the adapter, on the main process, after the final save_model; the card last."""
    import torch

    from train.callbacks import read_metrics
    from train.card import write_card
    from train.identity import base_identity
    from train.plots import plot_metrics

    train_args, training_args, model_args = parsed.train, parsed.training, parsed.model
    built.tokenizer.save_pretrained(str(output_dir))
    write_text(
        output_dir / "recipe.yaml",
        resolved_recipe(parsed.keys, requested, train_args, training_args, model_args),
    )
    stats = Path(train_args.pairs_file).parent / "stats.json"
    if stats.exists():
        write_text(output_dir / "data_stats.json", stats.read_text())
    metrics = read_metrics(output_dir / "metrics.jsonl")
    info = {
        "method": train_args.method,
        "description": train_args.description,
        "base_model": model_args.model_name_or_path,
        "base_weights": base_identity(model_args.model_name_or_path, model_args.model_revision),
        "trainable_params": built.trainable,
        "total_params": built.total,
        "target_modules": built.targets,
        "lora": {"r": model_args.lora_r, "alpha": model_args.lora_alpha, "dropout": model_args.lora_dropout},
        "global_step": trainer.state.global_step,
        "train_runtime_s": round(time.time() - started, 1),
        "resumed_from": str(checkpoint) if checkpoint else None,
        "device": built.device
        if trainer.accelerator.num_processes == 1
        else f"{built.device} x{trainer.accelerator.num_processes}",
        "num_processes": trainer.accelerator.num_processes,
        "precision": built.precision,
        "notes": built.notes,
        "train_pairs": built.pair_counts["used"],
        "pair_counts": built.pair_counts,
        "pairs_file": str(train_args.pairs_file),
        "train_tree_ids": built.train_tree_ids,
        "reward_weights": built.reward_weights,
        "anchor_pairs": len(getattr(trainer, "anchor_rows", ())),  # the preference anchor's
        "final_metrics": final_metrics(metrics) | dict(train_metrics),
        "trends": metric_trends(metrics),
        "config_class": type(training_args).__name__,
        "versions": {m.__name__: m.__version__ for m in _libraries()},
        "torch_threads": torch.get_num_threads(),
        **peak_memory_mb(),  # of this process (the main one where several train), from the start
    }
    write_text(output_dir / INFO, json.dumps(info, indent=2) + "\n")
    plot_metrics(output_dir)
    # TRL and PEFT write their own README.md on save; ours replaces it, rendered from the files above.
    print(f"card: {write_card(output_dir)}")
    write_text(output_dir / INFO, json.dumps(info | {"finished": True}, indent=2) + "\n")


def _libraries():
    import peft
    import torch
    import transformers
    import trl

    return (trl, transformers, peft, torch)
