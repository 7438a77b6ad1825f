"""Seconds per training step and peak memory of a recipe, against baselines measured in the same run.

    python -m benchmarks.grpo_step                                   # cpu-demo: GRPO fp32 vs 4-bit base vs DPO
    python -m benchmarks.grpo_step --recipe recipes/phi2-grpo-qlora.yaml --random-phi2   # on a GPU

Each variant runs in its own fresh process (so its peak memory is its own) through the same
``train.train.build_trainer`` as ``python -m train``, on the real English pairs of the sample, for
``--warmup`` + ``--steps`` optimizer steps; only the last ``--steps`` are timed. GRPO completions are
forced to exactly ``max_completion_length`` tokens (``min_new_tokens``), so every step generates the same
amount whatever the weights say. Variants:
  grpo        the recipe as written (on a CPU: fp32 base)            <- the baseline of the ratios
  grpo-4bit   the same with a 4-bit NF4 base (bitsandbytes; on a CPU via quantize_on_cpu)
  grpo-bf16   the same with no 4-bit base (bf16 weights; GPU)
  dpo         one DPO step on the same model and pairs (max_length = prompt budget + completion length)
Peak memory: the process's peak resident set on a CPU (model, embedder, Python: everything), the peak
of torch.cuda.max_memory_allocated on a GPU.

--random-phi2 builds a randomly initialised model with Phi-2's exact configuration (2.7B parameters;
the weights cannot be downloaded here, and values do not change cost at fixed lengths) and the
offline SmolLM2 tokenizer, saves it once and trains it as `microsoft/phi-2` would be. It needs a GPU:
on this project's 2-core CPU machine it was not measured.
Writes benchmarks/results/grpo_step_<recipe>[-random-phi2].json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SAMPLE = ROOT.parent / "shared" / "data" / "oasst2_sample.trees.jsonl"
PAIRS = ROOT / "data" / "sample-en" / "train.jsonl"
VARIANTS = {
    "grpo": [],
    "grpo-4bit": ["--load_in_4bit", "true", "--quantize_on_cpu", "true"],
    "grpo-bf16": ["--load_in_4bit", "false"],
    "dpo": [],  # built from the recipe in dpo_recipe()
}


def dpo_recipe(recipe: Path, folder: Path) -> Path:
    """The recipe's keys that DPO knows, with method dpo: same model, LoRA, pairs and optimiser."""
    import yaml
    from trl import DPOConfig, ModelConfig

    from train.config import TrainArguments

    known = {f.name for c in (TrainArguments, DPOConfig, ModelConfig) for f in fields(c)}
    values = yaml.safe_load(recipe.read_text())
    completion = values.get("max_completion_length", 256)
    values = {k: v for k, v in values.items() if k in known}
    values["method"] = "dpo"
    values["max_length"] = (values.get("max_prompt_tokens") or 512) + completion
    # GRPO's KL weight and loss names; DPO's beta and loss_type mean something else (its defaults stay)
    values.pop("beta", None)
    values.pop("loss_type", None)
    path = folder / "dpo.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def random_phi2(folder: Path) -> Path:
    """Phi-2's configuration (microsoft/phi-2 config.json) with random weights, saved in bf16."""
    import torch

    from assistant.models import packaged_smollm2
    from benchmarks.random_phi import save_random_phi

    path = folder / "random-phi2"
    if (path / "config.json").exists():
        return path
    return save_random_phi(
        path, packaged_smollm2(), dtype=torch.bfloat16, vocab_size=51200, hidden_size=2560,
        intermediate_size=10240, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
        max_position_embeddings=2048, hidden_act="gelu_new", resid_pdrop=0.1, embd_pdrop=0.0,
        attention_dropout=0.0, layer_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
    )  # fmt: skip


def child(
    variant: str,
    recipe: Path,
    steps: int,
    warmup: int,
    random_model: Path | None,
    out: Path,
    extra: tuple[str, ...] = (),
) -> None:
    """Build the trainer like `python -m train` does, run warmup + steps, write one JSON result.

    ``extra`` are more ``--key value`` overrides of the recipe (benchmarks/phi2_rehearsal.py's)."""
    import torch
    from transformers import TrainerCallback

    from train.train import build_trainer, parse_args

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_begin(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                if state.global_step == warmup:
                    torch.cuda.reset_peak_memory_stats()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.start)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
            print(f"step {state.global_step}: {self.times[-1]:.1f} s, peak RSS {peak:,.0f} MB", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        config = dpo_recipe(recipe, Path(tmp)) if variant == "dpo" else recipe
        argv = [
            "--config",
            str(config),
            "--output_dir",
            tmp,
            "--max_steps",
            str(warmup + steps),
            "--save_strategy",
            "no",
            "--logging_steps",
            "1",
            "--report_to",
            "none",
            "--pairs_file",
            str(PAIRS),
            "--dataset_source",
            str(SAMPLE),
            *VARIANTS[variant],
            *extra,
        ]
        parsed = parse_args(argv)
        if random_model is not None:
            parsed.model.model_name_or_path = str(random_model)
        completion = getattr(parsed.training, "max_completion_length", None)
        if variant != "dpo":
            # Fixed lengths: every step generates max_completion_length tokens per completion.
            parsed.training.generation_kwargs = {"min_new_tokens": completion}
        timer = StepTimer()
        built = build_trainer(parsed, callbacks=[timer])
        trained = [p for p in built.trainer.model.parameters() if p.requires_grad]
        load_avg_start = os.getloadavg()
        built.trainer.train()
        timed = timer.times[warmup:]
        result = {
            "variant": variant,
            "method": parsed.train.method,
            "device": built.device,
            "precision": built.precision,
            "seconds_per_step_median": statistics.median(timed),
            "seconds_per_step_mean": statistics.fmean(timed),
            "step_seconds": [round(t, 3) for t in timer.times],
            "timed_steps": len(timed),
            "completions_per_step": parsed.training.per_device_train_batch_size
            * parsed.training.gradient_accumulation_steps,
            "completion_tokens": completion if variant != "dpo" else None,
            "dpo_max_length": getattr(parsed.training, "max_length", None) if variant == "dpo" else None,
            "trainable_params": built.trainable,
            "trainable_dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in trained}),
            "total_params": built.total,
            "torch_threads": torch.get_num_threads(),
            "load_average_start_end": [round(load_avg_start[0], 2), round(os.getloadavg()[0], 2)],
        }
        if torch.cuda.is_available():
            result["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
            result["gpu"] = torch.cuda.get_device_name()
        # ru_maxrss is in KiB on Linux.
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.write_text(json.dumps(result, indent=2))


def work(r: dict) -> str:
    if r["method"] == "dpo":
        return f"{r['completions_per_step']} pairs of ≤ {r['dpo_max_length']} tokens (+ reference pass)"
    return f"{r['completions_per_step']} completions × {r['completion_tokens']} new tokens"


def markdown(report: dict) -> str:
    rows = report["variants"]
    memory = "peak_gpu_memory_mb" if "peak_gpu_memory_mb" in rows[0] else "peak_rss_mb"
    lines = [
        f"# Training step: {report['recipe']}{' (random Phi-2 weights)' if report['random_phi2'] else ''}",
        "",
        f"{report['machine']}; torch threads {rows[0]['torch_threads']}; median of {rows[0]['timed_steps']} "
        f"timed steps after {report['warmup']} warm-up step(s). Baseline: `{rows[0]['variant']}`.",
        "",
        f"| variant | precision | work per step | s/step | × baseline | {memory.replace('_', ' ')} | × baseline "
        "| trainable params | load avg (start, end) |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['precision']} | {work(r)} | {r['seconds_per_step_median']:.2f} | "
            f"{r['time_ratio']:.2f} | {r[memory]:,.0f} | {r['memory_ratio']:.2f} | {r['trainable_params']:,} | "
            f"{r['load_average_start_end']} |"
        )
    lines += ["", "Every step's seconds: " + "; ".join(f"{r['variant']} {r['step_seconds']}" for r in rows)]
    lines += ["", report["note"], ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "cpu-demo.yaml")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument(
        "--random-phi2", action="store_true", help="a random model with Phi-2's configuration"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--random-model", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    if args.child:
        child(args.child, args.recipe, args.steps, args.warmup, args.random_model, args.child_out)
        return 0

    import torch

    gpu = torch.cuda.is_available()
    if args.random_phi2 and not gpu:
        print(
            "error: --random-phi2 needs a GPU (a 2.7B model trains at minutes per step on a CPU)",
            file=sys.stderr,
        )
        return 2
    variants = args.variants or (["grpo", "grpo-bf16", "dpo"] if gpu else ["grpo", "grpo-4bit", "dpo"])
    work = Path(tempfile.mkdtemp(prefix="grpo-step-"))
    random_model = random_phi2(work) if args.random_phi2 else None
    results = []
    for variant in variants:
        out = work / f"{variant}.json"
        command = [
            sys.executable,
            "-m",
            "benchmarks.grpo_step",
            "--child",
            variant,
            "--child-out",
            str(out),
            "--recipe",
            str(args.recipe),
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
        ]
        if random_model:
            command += ["--random-model", str(random_model)]
        print(f"--- {variant}", flush=True)
        subprocess.run(command, check=True, cwd=ROOT)
        results.append(json.loads(out.read_text()))
        print(json.dumps({k: v for k, v in results[-1].items() if k != "step_seconds"}), flush=True)
    memory = "peak_gpu_memory_mb" if gpu else "peak_rss_mb"
    for r in results:
        r["time_ratio"] = r["seconds_per_step_median"] / results[0]["seconds_per_step_median"]
        r["memory_ratio"] = r[memory] / results[0][memory]
    name = args.recipe.stem + ("-random-phi2" if args.random_phi2 else "")
    report = {
        "recipe": str(args.recipe.relative_to(ROOT) if args.recipe.is_relative_to(ROOT) else args.recipe),
        "random_phi2": args.random_phi2,
        "machine": results[0].get("gpu")
        or f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "warmup": args.warmup,
        "variants": results,
        "note": (
            "GRPO steps generate exactly max_completion_length tokens per completion (min_new_tokens), so "
            "they cost more than a training step whose answers stop early. On a CPU the peak resident set "
            "is mostly not the weights (SmolLM2-135M is 0.5 GB in fp32): Python, torch, the MiniLM "
            "embedder and the fp32 logits over a 49k vocabulary dominate, so a 4-bit base saves little "
            "memory there and costs time (de-quantization on every matmul). The machine was shared with "
            "other work (the load average beside each row): single steps vary by up to 2x."
            if not gpu
            else "GRPO steps generate exactly max_completion_length tokens per completion."
        ),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"grpo_step_{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"grpo_step_{name}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
