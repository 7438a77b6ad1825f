"""What the base-vs-tuned comparison costs: one batched generation from one copy of the weights, against
one generation and against two sequential ones.

    python -m benchmarks.side_by_side [--new-tokens 32] [--repeats 15]

Model: the packaged SmolLM2-135M-Instruct (fp32, CPU) with a LoRA like the CPU demo's, greedy, with
``min_new_tokens`` = ``max_new_tokens`` so every row makes the same number of tokens. Each repeat runs,
in alternating order so that load from other work on the machine falls on all of them:
  one           the tuned answer alone (batch 1): one generation;
  sequential    the base answer, then the tuned answer: two generations, one after the other;
  side_by_side  both in one generate call, rows routed by PEFT adapter_names ["__base__", "default"];
  batch_of_two  two rows through the tuned adapter alone (no routing): what batching itself costs;
  streamed      the same, streamed through Assistant.compare(): what the Compare tab runs.
Memory: the weights of the one model that serves both answers, against a second copy of the base
loaded to serve the base answer separately (tensor footprint, and the process's resident memory growth).
Writes benchmarks/results/side_by_side.json and side_by_side.md (medians after one warm-up).
Goal: side_by_side at most 1.3x one generation's time, and one model's memory instead of two.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from assistant.generation import BASE, generate
from benchmarks.serving_common import (
    median,
    prepare_run,
    timed,
    write,
)


def rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    args, info, loaded, assistant, prepared = prepare_run(__doc__, new_tokens=32, repeats=15)
    n, messages, settings = args.new_tokens, prepared.messages, prepared.settings

    def run(adapters: list[str]) -> None:
        answers = generate(loaded, [messages] * len(adapters), adapters, settings)
        assert all(a.tokens == n for a in answers), answers

    def streamed() -> None:
        *_, (base, tuned) = assistant.compare(prepared)
        assert base.tokens == tuned.tokens == n

    variants = {
        "one": lambda: run(["default"]),
        "sequential": lambda: (run([BASE]), run(["default"])),
        "side_by_side": lambda: run([BASE, "default"]),
        "batch_of_two": lambda: run(["default", "default"]),
        "streamed": streamed,
    }
    runs = {name: [] for name in variants}
    for fn in variants.values():  # warm-up
        fn()
    for repeat in tqdm(range(args.repeats), desc="repeats"):
        names = list(variants) if repeat % 2 == 0 else list(reversed(variants))
        for name in names:
            runs[name].append(timed(variants[name]))
    m = {name: median(values) for name, values in runs.items()}

    # Memory: the one model serving both answers, against a second copy of the base for the base answer.
    from transformers import AutoModelForCausalLM

    from assistant.models import packaged_smollm2

    one_model_mb = loaded.memory_mb
    before = rss_mb()
    second = AutoModelForCausalLM.from_pretrained(packaged_smollm2(), dtype=torch.float32)
    with torch.inference_mode():  # weights are memory-mapped: touch them all before counting
        second.generate(**loaded.tokenizer(["Hi"], return_tensors="pt"), max_new_tokens=1)
    rss_growth = rss_mb() - before
    two_models_mb = one_model_mb + second.get_memory_footprint() / 2**20

    # Load from other work shifts from one repeat to the next: a ratio within each repeat (neighbours
    # share the load) and its median is steadier than a ratio of medians.
    paired = {
        name: median([a / b for a, b in zip(runs[name], runs["one"], strict=True)])
        for name in variants
        if name != "one"
    }
    ratio_one = paired["side_by_side"]
    result = {
        "model": loaded.describe(),
        "new_tokens_per_answer": n,
        "repeats": args.repeats,
        "median_s": m,
        "over_one_median_of_paired_ratios": paired,
        "side_by_side_over_one": ratio_one,
        "side_by_side_over_sequential": median(
            [a / b for a, b in zip(runs["side_by_side"], runs["sequential"], strict=True)]
        ),
        "memory_mb": {
            "one_model_serving_both": round(one_model_mb, 1),
            "two_models": round(two_models_mb, 1),
            "second_copy_rss_growth": round(rss_growth, 1),
        },
        "goal": "side_by_side_over_one <= 1.3 with one model's memory",
        "goal_met": ratio_one <= 1.3,
        "runs_s": {name: [round(v, 4) for v in values] for name, values in runs.items()},
        "machine": info,
    }
    md = f"""# Side by side: base and tuned in one batched generation

{loaded.describe()}
{n} new tokens per answer forced (greedy), medians of {args.repeats} interleaved repeats.

| | median time | / one generation (median of per-repeat ratios) |
|---|---|---|
| one generation (tuned alone) | {m["one"]:.3f} s | 1.00 |
| two sequential generations (base, then tuned) | {m["sequential"]:.3f} s | {paired["sequential"]:.2f} |
| **side by side, one batched call** (`adapter_names`) | {m["side_by_side"]:.3f} s | **{ratio_one:.2f}** |
| side by side, streamed (`Assistant.compare`) | {m["streamed"]:.3f} s | {paired["streamed"]:.2f} |
| reference: two rows, one adapter (no routing) | {m["batch_of_two"]:.3f} s | {paired["batch_of_two"]:.2f} |

Side by side / sequential: {result["side_by_side_over_sequential"]:.2f}. Goal (at most 1.3x one generation):
{"met" if ratio_one <= 1.3 else "NOT met"}. A plain batch of two rows through one adapter costs
{paired["batch_of_two"]:.2f}x one row here: that is what a second row costs this CPU, routing or not.

Memory: one model serves both answers with {one_model_mb:,.0f} MB of weights; serving the base answer from a
second copy would take {two_models_mb:,.0f} MB (the second copy grew this process by {rss_growth:,.0f} MB).
"""
    write("side_by_side", result, md)


if __name__ == "__main__":
    main()
