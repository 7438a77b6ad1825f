"""A rehearsal of the real Phi-2 run on a CPU: GRPO steps of a randomly initialised Phi-2-sized model.

    python -m benchmarks.phi2_rehearsal [--steps 1 --warmup 1 --tokens 16]

The model has Phi-2's exact configuration (2.7B parameters, from benchmarks/grpo_step.random_phi2: built
in bf16 and saved once, since the weights cannot be downloaded here). It is then loaded the way
`python -m train --config recipes/phi2-grpo-qlora.yaml` loads microsoft/phi-2 (train.model.load_model:
bitsandbytes quantizes it to 4-bit NF4 tensor by tensor as it loads, so the full-precision model is
never in memory twice) and trained through the same train.train.build_trainer with the recipe's
settings (8 completions a step in groups of 4, LoRA r=16 on every Linear, lr 2e-5, gradient
checkpointing), except: short answers (``--tokens`` new tokens, forced by min_new_tokens so every step
does the same work), 4-bit kept on the CPU (quantize_on_cpu; compute in fp32 there), the sample's pairs.

Baseline, in the same run and the same way: SmolLM2-135M-Instruct (the offline model every other figure
here uses) with the same recipe and lengths, LoRA on every Linear of its blocks. Each runs in its own
process, so its peak resident set is its own. Writes benchmarks/results/phi2_rehearsal.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.grpo_step import RESULTS, ROOT, child, random_phi2

RECIPE = ROOT / "recipes" / "phi2-grpo-qlora.yaml"
# SmolLM2 (llama) names its Linear layers differently from Phi-2; every Linear of a block, as the recipe.
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def run_child(name: str, model: Path, args, work: Path) -> dict:
    out = work / f"{name}.json"
    out.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "benchmarks.phi2_rehearsal",
        "--child",
        name,
        "--model",
        str(model),
        "--child-out",
        str(out),
    ]
    command += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--tokens", str(args.tokens)]
    print(f"--- {name} ({model})", flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    result = json.loads(out.read_text())
    result["run"] = name
    result["process_seconds"] = round(time.perf_counter() - started, 1)  # load + quantize + all steps
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result), flush=True)
    return result


def markdown(report: dict) -> str:
    rows = report["runs"]
    lines = [
        "# Phi-2 rehearsal on a CPU: GRPO steps of a random Phi-2-sized model, 4-bit NF4",
        "",
        f"{report['machine']}; recipe `{report['recipe']}` with {report['tokens']} new tokens per completion "
        f"(forced); median of {rows[0]['timed_steps']} timed step(s) after {report['warmup']} warm-up "
        f"step(s). Baseline: `{rows[0]['run']}`. Random Phi-2 built and saved "
        + (f"in {report['build_seconds']:.0f} s." if report["build_seconds"] else "by an earlier run."),
        "",
        "| run | parameters | precision | trainable (dtype) | s/step | × baseline | peak RSS MB | × baseline "
        "| process s (load + steps) | load avg (start, end) |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['total_params']:,} | {r['precision']} | {r['trainable_params']:,} "
            f"({', '.join(r['trainable_dtypes'])}) | {r['seconds_per_step_median']:.1f} | "
            f"{r['time_ratio']:.1f} | {r['peak_rss_mb']:,.0f} | {r['memory_ratio']:.1f} | "
            f"{r.get('process_seconds', 'not timed')} | {r['load_average_start_end']} |"
        )
    lines += ["", "Every step's seconds: " + "; ".join(f"{r['run']} {r['step_seconds']}" for r in rows)]
    lines += ["", report["note"], ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=1, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--tokens", type=int, default=16, help="new tokens per completion")
    parser.add_argument(
        "--runs",
        nargs="+",
        default=["smollm2-135m", "random-phi2"],
        choices=["smollm2-135m", "random-phi2", "report"],
        help="which to run (each may be run on its own); report: write the results of finished runs",
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/phi2-rehearsal"), help="the saved model")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    extra = ["--max_completion_length", str(args.tokens)]

    if args.child:
        if args.child != "random-phi2":
            extra += ["--lora_target_modules", *LLAMA_TARGETS]
        child("grpo-4bit", RECIPE, args.steps, args.warmup, args.model, args.child_out, tuple(extra))
        return 0

    from assistant.models import packaged_smollm2

    args.work.mkdir(parents=True, exist_ok=True)
    started, built = time.perf_counter(), (args.work / "random-phi2" / "config.json").exists()
    models = {"smollm2-135m": packaged_smollm2(), "random-phi2": random_phi2(args.work)}
    if not built:
        (args.work / "build_seconds").write_text(f"{time.perf_counter() - started:.1f}")
    for name in args.runs:
        if name != "report":
            run_child(name, models[name], args, args.work)
    done = [args.work / f"{name}.json" for name in models]
    if not all(path.exists() for path in done):
        print(f"not every run has finished ({', '.join(str(p) for p in done)}): no report written")
        return 1
    runs = [{"run": path.stem, **json.loads(path.read_text())} for path in done]
    for r in runs:
        r["time_ratio"] = r["seconds_per_step_median"] / runs[0]["seconds_per_step_median"]
        r["memory_ratio"] = r["peak_rss_mb"] / runs[0]["peak_rss_mb"]
    report = {
        "recipe": str(RECIPE.relative_to(ROOT)),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "tokens": args.tokens,
        "warmup": args.warmup,
        "build_seconds": float((args.work / "build_seconds").read_text())
        if (args.work / "build_seconds").exists()
        else None,
        "runs": runs,
        "note": (
            "A CPU rehearsal of the code path, not a forecast of GPU speed: the 4-bit base computes in "
            "fp32 on a CPU (bf16 there is emulated), and the machine was shared with other work (load "
            "average beside each row). Peak RSS is the whole process: weights (4-bit Linear layers; "
            "embeddings, LayerNorms and the LM head in fp32), the MiniLM preference embedder, activations "
            "and Python. The trainable dtype column is what the optimizer updates (fp32: "
            "train.model.lora_to_fp32_where_needed undid TRL's bf16 cast). A run of one step takes it at learning "
            "rate 0 (the recipe's 10% warm-up): it times the whole path (sampling, rewards, loss, backward, "
            "optimizer), while whether the weights move at the recipe's rate is tests/test_qlora.py's check."
        ),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "phi2_rehearsal.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "phi2_rehearsal.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
