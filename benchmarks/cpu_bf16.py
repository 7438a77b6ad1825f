"""fp32 against bf16 on this CPU, in one run: a LoRA training step and generation, SmolLM2-135M.

    python -m benchmarks.cpu_bf16                        # the sizes this CPU can afford (see below)
    python -m benchmarks.cpu_bf16 --rows 8 --tokens 384  # issue 27's sizes (a CPU with native bf16)

The variants are what the precision rule (assistant.models.compute_dtype) chooses between on a CPU:
  fp32   fp32 weights, no autocast                                              <- the baseline
  bf16   the frozen base in bf16, the LoRA weights in fp32, bf16 autocast (train.model.adapt_to_device)
Step: forward + backward of --rows rows of --tokens tokens; generate: --new-tokens greedy tokens for one
row, forced (min_new_tokens). Each is timed --repeats times after a warm-up; the medians and their ratio
go to benchmarks/results/cpu_bf16.json and .md, with whether the CPU has native bf16 (the rule's check).
Without it bf16 is emulated and far slower, so the default sizes are small there.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.serving_common import load_smollm2_with_lora, machine, median, timed, write


def variant(loaded, bf16: bool):
    """The model as the rule sets it up: the base's weights in bf16 (the LoRA stays fp32) or all fp32."""
    for name, param in loaded.model.named_parameters():
        wanted = torch.float32 if ("lora_" in name or not bf16) else torch.bfloat16
        param.data = param.data.to(wanted)
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


def main(argv: list[str] | None = None) -> None:
    from assistant.models import cpu_has_native_bf16

    native = cpu_has_native_bf16()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cpu_bf16", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rows", type=int, default=8 if native else 2)
    parser.add_argument("--tokens", type=int, default=384 if native else 64)
    parser.add_argument("--new-tokens", type=int, default=32 if native else 8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = load_smollm2_with_lora()
    for name, param in loaded.model.named_parameters():
        param.requires_grad_("lora_" in name)
    ids = torch.randint(100, 1000, (args.rows, args.tokens))
    prompt = ids[:1, :16]
    results = {}
    for name in ("fp32", "bf16"):
        context = variant(loaded, name == "bf16")

        def step(context=context):
            with context:
                loss = loaded.model(input_ids=ids, labels=ids).loss
            loss.backward()
            loaded.model.zero_grad(set_to_none=True)

        def generate(context=context):
            with torch.no_grad(), context:
                loaded.model.generate(
                    prompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False
                )

        step(), generate()  # warm-up
        results[name] = {
            "step_s": median([timed(step) for _ in range(args.repeats)]),
            "generate_tokens_per_s": round(
                args.new_tokens / median([timed(generate) for _ in range(args.repeats)]), 2
            ),
        }
        print(name, results[name], flush=True)
    speedup = {
        "step": round(results["fp32"]["step_s"] / results["bf16"]["step_s"], 3),
        "generate": round(
            results["bf16"]["generate_tokens_per_s"] / results["fp32"]["generate_tokens_per_s"], 3
        ),
    }
    record = {"native_bf16": native, "options": vars(args), "results": results, "bf16_speedup": speedup,
              "machine": machine()}  # fmt: skip
    verdict = "the rule picks bf16 here" if native else "the rule keeps fp32 here (no native bf16)"
    write(
        "cpu_bf16",
        record,
        f"fp32 vs bf16 on this CPU (`python -m benchmarks.cpu_bf16`): native bf16 {native}, so {verdict}.\n\n"
        f"| | fp32 | bf16 | bf16 speed-up |\n|---|---|---|---|\n"
        f"| LoRA step, {args.rows} x {args.tokens} tokens (s) | {results['fp32']['step_s']} | "
        f"{results['bf16']['step_s']} | {speedup['step']}x |\n"
        f"| generate, 1 row, {args.new_tokens} tokens (tokens/s) | {results['fp32']['generate_tokens_per_s']} | "
        f"{results['bf16']['generate_tokens_per_s']} | {speedup['generate']}x |",
    )


if __name__ == "__main__":
    main()
