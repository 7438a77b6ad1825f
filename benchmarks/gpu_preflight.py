"""The first command to run on a GPU: the Phi-2 recipes' whole path, a few steps each, measured.

    python -m benchmarks.gpu_preflight                 # on a GPU: the recipe's microsoft/phi-2
    python -m benchmarks.gpu_preflight --size small    # on this CPU: a tiny Phi-2-shaped model, minutes

Loads the recipe's model as ``python -m train`` does (train.train.build_trainer: 4-bit NF4 on a GPU),
takes 2 GRPO steps with recipes/phi2-grpo-qlora.yaml and 2 DPO steps with recipes/phi2-dpo-qlora.yaml,
then serves one battle (the base and the GRPO adapter answering one prompt side by side, through
assistant.service as the apps do), and writes, per phase: peak memory, seconds per step, and whether
completions stopped (ended at EOS or at the template's end of turn, or ran to the limit). The results
go to benchmarks/results/gpu_preflight-<device>.json, so a GPU's file never overwrites the CPU's.

Sizes: ``recipe`` (default on a GPU) the recipe's model_name_or_path; ``phi2`` (default on a CPU) a
random model with Phi-2's exact configuration (benchmarks.grpo_step.random_phi2; ~450 s a GRPO step on
a 2-core CPU); ``small`` a random 4-layer Phi-shaped model with the recipes' lengths cut down, which
checks the path, not Phi-2's cost. Random weights rarely stop by themselves: "stopped" means something
only for the recipe's real model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.grpo_step import RESULTS, ROOT, SAMPLE
from train.outputs import peak_memory_mb

RECIPES = ROOT / "recipes"
PROMPT = "What causes the seasons on Earth?"
# The small size: lengths and groups cut so a CPU step takes seconds (the recipes' own on a GPU).
SMALL = {
    "grpo": [
        *[
            "--per_device_train_batch_size",
            "2",
            "--num_generations",
            "2",
            "--gradient_accumulation_steps",
            "1",
        ],
        *["--max_completion_length", "16", "--max_prompt_tokens", "128"],
    ],
    "dpo": [
        *["--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1"],
        *["--max_length", "128", "--max_prompt_tokens", "96"],
    ],
}


def small_phi(folder: Path) -> Path:
    """A random Phi model with Phi-2's layer names and shape ratios, 4 layers of width 256."""
    from assistant.models import packaged_smollm2
    from benchmarks.random_phi import save_random_phi

    path = folder / "small-phi"
    if (path / "config.json").exists():
        return path
    return save_random_phi(
        path, packaged_smollm2(), hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
        num_attention_heads=8, max_position_embeddings=2048,
    )  # fmt: skip


def reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def train_phase(method: str, model: str, size: str, steps: int, work: Path) -> tuple[dict, Path]:
    """``steps`` steps of the method's Phi-2 recipe on ``model``; (its figures, the adapter folder)."""
    import torch
    from transformers import TrainerCallback

    from train.train import build_trainer, parse_args

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.start = [], 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.start)
            print(f"{method} step {state.global_step}: {self.times[-1]:.1f} s", flush=True)

    out = work / method
    argv = [
        *["--config", str(RECIPES / f"phi2-{method}-qlora.yaml"), "--model_name_or_path", model],
        *["--output_dir", str(out), "--max_steps", str(steps), "--save_strategy", "no"],
        *["--logging_steps", "1", "--report_to", "none", "--resume", "false"],
        *["--pairs_file", str(work / "pairs" / "train.jsonl"), "--dataset_source", str(SAMPLE)],
        *(SMALL[method] if size == "small" else []),
    ]
    reset_peak()
    timer = StepTimer()
    started = time.perf_counter()
    built = build_trainer(parse_args(argv), callbacks=[timer])
    load_seconds = time.perf_counter() - started
    built.trainer.train()
    built.trainer.save_model(str(out))
    logs = {k: v for entry in built.trainer.state.log_history for k, v in entry.items()}
    result = {
        "device": built.device,
        "precision": built.precision,
        "trainable_params": built.trainable,
        "trainable_dtypes": sorted(
            {str(p.dtype).removeprefix("torch.") for p in built.trainer.model.parameters() if p.requires_grad}
        ),
        "load_seconds": round(load_seconds, 1),
        "step_seconds": [round(t, 2) for t in timer.times],
        "seconds_per_step_median": round(statistics.median(timer.times), 2),
        **peak_memory_mb(),
        "loss": logs.get("loss"),
    }
    if method == "grpo":
        clipped, at_turn = logs.get("completions/clipped_ratio"), logs.get("completions/turn_end_ratio", 0.0)
        result |= {
            "max_completion_length": built.trainer.args.max_completion_length,
            "completion_mean_length": logs.get("completions/mean_length"),
            # TRL's clipped_ratio counts every completion whose last token is no EOS, the ones cut at
            # the end of turn too; train.turns logs those apart.
            "completions_ended_at_eos": None if clipped is None else round(1 - clipped, 3),
            "completions_ended_at_turn": at_turn,
            "completions_stopped": None if clipped is None else round(1 - clipped + at_turn, 3),
        }
    del built
    return result, out


def battle_phase(base: str, adapter: Path) -> dict:
    """One battle as the apps serve it: the base and the adapter answer one prompt in one batch."""
    from assistant.models import load_model
    from assistant.service import Assistant

    reset_peak()
    started = time.perf_counter()
    loaded = load_model(base, [str(adapter)])
    load_seconds = time.perf_counter() - started
    assistant = Assistant(loaded)
    prepared = assistant.prepare(PROMPT, settings=assistant.settings(temperature=0, max_new_tokens=64))
    started = time.perf_counter()
    rows = assistant.side_by_side([prepared, prepared], [assistant.base_name, assistant.tuned_name])
    *_, answers = rows  # the answers as they grow; the last snapshot is the finished pair
    seconds = time.perf_counter() - started
    return {
        "device": loaded.device,
        "precision": loaded.precision,
        "load_seconds": round(load_seconds, 1),
        "battle_seconds": round(seconds, 2),
        "max_batch": assistant.limits.max_batch,
        "answers": [
            {"model": m, "tokens": a.tokens, "ended_at_eos": a.ended, "cut_at_user_turn": a.cut}
            for m, a in zip((assistant.base_name, assistant.tuned_name), answers, strict=True)
        ],
        "notes": loaded.notes,
        **peak_memory_mb(),
    }


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    gpu = torch.cuda.is_available()
    parser.add_argument(
        "--size",
        choices=["recipe", "phi2", "small"],
        default="recipe" if gpu else "phi2",
        help="the recipe's model (GPU default), a random Phi-2-sized one (CPU default) or a small one",
    )
    parser.add_argument("--steps", type=int, default=2, help="GRPO and DPO steps each")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "gpu-preflight")
    args = parser.parse_args(argv)
    if not gpu:  # the CPU machines here have no Hub
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.work.mkdir(parents=True, exist_ok=True)
    if args.size == "recipe":
        import yaml

        model = yaml.safe_load((RECIPES / "phi2-grpo-qlora.yaml").read_text())["model_name_or_path"]
    elif args.size == "phi2":
        from benchmarks.grpo_step import random_phi2

        model = str(random_phi2(args.work))
    else:
        model = str(small_phi(args.work))
    device = torch.cuda.get_device_name(0) if gpu else f"{platform.processor() or platform.machine()} CPU"
    report = {
        "command": "python -m benchmarks.gpu_preflight " + " ".join(sys.argv[1:] if argv is None else argv),
        "device": device,
        "cpus": os.cpu_count(),
        "load_average_start": [round(x, 1) for x in os.getloadavg()],
        "size": args.size,
        "model": model if args.size == "recipe" else f"random {args.size} Phi ({model})",
    }
    started = time.perf_counter()
    report["grpo"], grpo_adapter = train_phase("grpo", model, args.size, args.steps, args.work)
    report["dpo"], _ = train_phase("dpo", model, args.size, args.steps, args.work)
    report["battle"] = battle_phase(model, grpo_adapter)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    report["load_average_end"] = [round(x, 1) for x in os.getloadavg()]
    report["note"] = (
        "Peak RSS is the process's since it started (it only grows across phases); the GPU peak is each "
        "phase's own. Random weights seldom stop by themselves, so the stop figures mean something only "
        "for the recipe's real model."
    )
    slug = "cpu" if not gpu else torch.cuda.get_device_name(0).lower().replace(" ", "-")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"gpu_preflight-{slug}{'' if args.size == 'recipe' else '-' + args.size}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"written: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
