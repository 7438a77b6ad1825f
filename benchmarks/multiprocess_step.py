"""One GRPO and one DPO step on 1 and on 2 processes (DDP over gloo on a CPU): seconds per step and peak
memory per process, as ratios to the 1-process run measured in the same run.

    python -m benchmarks.multiprocess_step [--steps 2] [--warmup 1] [--methods grpo dpo]

Each (method, processes) pair is a fresh launch: 1 process is `python` on this file, 2 processes are
`accelerate launch --config_file recipes/accelerate/multi_gpu.yaml --num_processes 2` on it, the launch
the README documents (on a machine without GPUs and with use_cpu, its ranks use gloo). Every rank
builds its trainer with train.train.build_trainer from recipes/cpu-demo.yaml (SmolLM2-135M-Instruct,
the real English sample pairs; DPO from the same keys, as benchmarks/grpo_step.py makes it), runs
warmup + steps optimizer steps, and writes its step times and peak resident memory. The per-device
batch is held, so 2 processes do twice the work per step: the speed-up is work per second, 2 x the
1-process time / the 2-process time. GRPO completions are forced to max_completion_length tokens
(min_new_tokens), so every step generates the same amount. One OpenMP thread per process.
Writes benchmarks/results/multiprocess_step.json and .md.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RECIPE = ROOT / "recipes" / "cpu-demo.yaml"
SAMPLE = ROOT.parent / "shared" / "data" / "oasst2_sample.trees.jsonl"
PAIRS = ROOT / "data" / "sample-en" / "train.jsonl"
COMPLETION_TOKENS = 32
DPO_PAIRS = 2  # per process and step


def worker(method: str, steps: int, warmup: int, out: Path) -> None:
    """One rank: build the trainer as `python -m train` does, train, write this rank's figures."""
    import torch
    from accelerate import PartialState
    from transformers import TrainerCallback

    from benchmarks.grpo_step import dpo_recipe
    from train.train import build_trainer, parse_args

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.start)

    with tempfile.TemporaryDirectory() as tmp:
        recipe = dpo_recipe(RECIPE, Path(tmp)) if method == "dpo" else RECIPE
        argv = ["--config", str(recipe), "--output_dir", tmp, "--max_steps", str(warmup + steps)]
        argv += ["--save_strategy", "no", "--logging_steps", "1", "--report_to", "none", "--use_cpu", "true"]
        argv += ["--pairs_file", str(PAIRS), "--dataset_source", str(SAMPLE)]
        if method == "dpo":
            argv += ["--per_device_train_batch_size", str(DPO_PAIRS)]
        else:
            argv += ["--max_completion_length", str(COMPLETION_TOKENS)]
        parsed = parse_args(argv)
        if method == "grpo":
            parsed.training.generation_kwargs = {"min_new_tokens": COMPLETION_TOKENS}
        timer = StepTimer()
        built = build_trainer(parsed, callbacks=[timer])
        built.trainer.train()
        state = PartialState()
        result = {
            "rank": state.process_index,
            "processes": state.num_processes,
            "step_seconds": [round(t, 3) for t in timer.times],
            "seconds_per_step": statistics.median(timer.times[warmup:]),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
            "per_device_batch": parsed.training.per_device_train_batch_size,
            "torch_threads": torch.get_num_threads(),
            "precision": built.precision,
        }
    (out / f"rank{result['rank']}.json").write_text(json.dumps(result))
    built.trainer.accelerator.wait_for_everyone()  # then leave gloo together (see train.train._end)
    built.trainer.accelerator.end_training()


def measure(method: str, processes: int, steps: int, warmup: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"mp-{method}-{processes}-"))
    # run as a module from the root, like the parent, so that `benchmarks` and the checkout import
    this = ["benchmarks.multiprocess_step", "--worker", method, "--out", str(out)]
    this += ["--steps", str(steps), "--warmup", str(warmup)]
    if processes == 1:
        command = [sys.executable, "-m", *this]
    else:
        command = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch"]
        command += ["--config_file", str(ROOT / "recipes" / "accelerate" / "multi_gpu.yaml")]
        command += ["--num_processes", str(processes), "--mixed_precision", "no", "-m", *this]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    load = os.getloadavg()[0]
    print(f"{method} on {processes} process(es) ...", flush=True)
    subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(processes)]
    return {
        "method": method,
        "processes": processes,
        "seconds_per_step": ranks[0]["seconds_per_step"],  # DDP keeps the ranks in step
        "step_seconds": [r["step_seconds"] for r in ranks],
        "peak_rss_mb_per_process": [round(r["peak_rss_mb"]) for r in ranks],
        "per_device_batch": ranks[0]["per_device_batch"],
        "torch_threads": ranks[0]["torch_threads"],
        "precision": ranks[0]["precision"],
        "load_average_start_end": [round(load, 2), round(os.getloadavg()[0], 2)],
    }


def markdown(report: dict) -> str:
    lines = [
        "# Training step on 1 and 2 processes (DDP over gloo, CPU)",
        "",
        f"{report['machine']}; one thread per process; median of {report['steps']} timed step(s) after "
        f"{report['warmup']} warm-up step(s); recipe `recipes/cpu-demo.yaml` (SmolLM2-135M-Instruct, LoRA r=16). "
        "Per-device batch held: 2 processes do twice the work per step. Ratios are to the 1-process run "
        "of the same method, measured in this run.",
        "",
        "| method | work per process and step | processes | s/step | × 1 process | work/s × 1 process "
        "| peak RSS per process (MB) | × 1 process | load avg (start, end) |",
        "|---|---|---:|---:|---:|---:|---|---:|---|",
    ]
    for r in report["runs"]:
        work = (
            f"{r['per_device_batch']} completions × {COMPLETION_TOKENS} tokens"
            if r["method"] == "grpo"
            else f"{r['per_device_batch']} pairs"
        )
        lines.append(
            f"| {r['method'].upper()} | {work} | {r['processes']} | {r['seconds_per_step']:.2f} | "
            f"{r['time_ratio']:.2f} | {r['throughput_ratio']:.2f} | "
            f"{', '.join(f'{m:,}' for m in r['peak_rss_mb_per_process'])} | {r['memory_ratio']:.2f} | "
            f"{r['load_average_start_end']} |"
        )
    lines += ["", "Every step's seconds, per rank: "]
    lines += [f"- {r['method']} × {r['processes']}: {r['step_seconds']}" for r in report["runs"]]
    lines += ["", report["note"], ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", nargs="+", choices=["grpo", "dpo"], default=["grpo", "dpo"])
    parser.add_argument("--steps", type=int, default=2, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--worker", choices=["grpo", "dpo"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.steps, args.warmup, args.out)
        return 0

    runs = []
    for method in args.methods:
        one = measure(method, 1, args.steps, args.warmup)
        two = measure(method, 2, args.steps, args.warmup)
        for r in (one, two):
            r["time_ratio"] = r["seconds_per_step"] / one["seconds_per_step"]
            r["throughput_ratio"] = r["processes"] / r["time_ratio"]
            r["memory_ratio"] = max(r["peak_rss_mb_per_process"]) / max(one["peak_rss_mb_per_process"])
        runs += [one, two]
    report = {
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, {platform.python_version()}",
        "steps": args.steps,
        "warmup": args.warmup,
        "runs": runs,
        "note": "Measured on a 2-core machine shared with other work: 2 processes take both cores, so "
        "the load from other work slows them more than the 1-process run; single steps vary up to 2x.",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "multiprocess_step.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "multiprocess_step.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
