"""fp32 against bf16 serving on the CPU: the same greedy answers? how many tokens per second?

    python -m benchmarks.precision [--new-tokens 64] [--prompts 4] [--threads 1] [--force]

Loads the packaged SmolLM2-135M-Instruct with the demo adapters twice, in fp32 and in bf16
(``ASSISTANT_CPU_DTYPE``, the serving rule's override), answers the same prompts greedily one at a time
through the served path (``Assistant.chat``), and records per precision the tokens per second of one
user alone, and per prompt whether the two precisions gave the same answer (and where they part, in
tokens). The apps serve bf16 only where ``cpu_has_native_bf16()`` (AVX512-BF16 or AMX-BF16): elsewhere
bf16 is emulated and arithmetic-bound work crawls (``benchmarks/cpu_bf16.py``), so without the flag the
run is skipped and the result says so (``--force`` runs it anyway: one user's greedy decoding only
streams the weights, so it takes about as long as fp32).
Writes benchmarks/results/precision.json and precision.md.
"""

from __future__ import annotations

import argparse
import os
import time

from benchmarks.serving_common import THREADS_HELP, machine, write

PROMPTS = [
    "Explain the difference between a list and a tuple in Python.",
    "Give me three tips for a good night's sleep.",
    "What causes the seasons on Earth?",
    "How do I boil an egg?",
]


def run(dtype: str, new_tokens: int, prompts: list[str]) -> dict:
    from assistant.models import load_for_serving
    from assistant.service import Assistant, Limits

    os.environ["ASSISTANT_CPU_DTYPE"] = dtype
    loaded = load_for_serving(None, None, None)
    assistant = Assistant(loaded, Limits(max_new_tokens=new_tokens))
    settings = assistant.settings(0, 1, new_tokens, 0)
    answers, tokens, seconds = [], 0, 0.0
    for prompt in prompts:
        prepared = assistant.prepare(prompt, [], "", settings)
        began = time.perf_counter()
        answer = list(assistant.chat(prepared))[-1]
        seconds += time.perf_counter() - began
        answers.append(answer.text)
        tokens += answer.tokens
    return {
        "precision": loaded.precision,
        "answers": answers,
        "tokens": tokens,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 2),
    }


def parted_at(a: str, b: str, tokenizer) -> int | None:
    """The first token where two answers differ, or None when they are the same."""
    ta, tb = tokenizer.encode(a), tokenizer.encode(b)
    if ta == tb:
        return None
    return next((i for i, (x, y) in enumerate(zip(ta, tb, strict=False)) if x != y), min(len(ta), len(tb)))


def main() -> None:
    import torch

    from assistant.models import cpu_has_native_bf16

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), help="the first N prompts only")
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    parser.add_argument("--force", action="store_true", help="run bf16 even where the CPU emulates it")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    record = {
        "new_tokens": args.new_tokens,
        "prompts": PROMPTS[: args.prompts],
        "native_bf16": cpu_has_native_bf16(),
        "machine": machine(),
    }
    if not record["native_bf16"] and not args.force:
        record["skipped"] = (
            "this CPU has no native bf16 (no avx512_bf16 or amx_bf16 flag): the apps serve fp32 here"
        )
        write("precision", record, f"# fp32 against bf16 serving\n\nSkipped: {record['skipped']}.")
        return
    prompts = record["prompts"]
    fp32, bf16 = run("fp32", args.new_tokens, prompts), run("bf16", args.new_tokens, prompts)
    from transformers import AutoTokenizer

    from assistant.models import packaged_smollm2

    tokenizer = AutoTokenizer.from_pretrained(packaged_smollm2())
    parted = [parted_at(a, b, tokenizer) for a, b in zip(fp32["answers"], bf16["answers"], strict=True)]
    ratio = round(bf16["tokens_per_s"] / fp32["tokens_per_s"], 3)
    record.update(
        fp32=fp32, bf16=bf16, bf16_over_fp32=ratio, parted_at=parted, same=sum(p is None for p in parted)
    )
    lines = [
        "# fp32 against bf16 serving",
        "",
        f"SmolLM2-135M-Instruct with the demo adapters, greedy, {args.new_tokens} new tokens at most, one user"
        + ("" if record["native_bf16"] else "; this CPU has no native bf16, so bf16 is emulated (`--force`)")
        + ".",
        "",
        "| precision | tokens/s (one user) | tokens | seconds |",
        "|---|---:|---:|---:|",
        *(
            f"| {r['precision']} | {r['tokens_per_s']} | {r['tokens']} | {r['seconds']} |"
            for r in (fp32, bf16)
        ),
        "",
        f"bf16 / fp32 tokens per second, same run: **{ratio}x**.",
        "",
        f"Same greedy answer in both: {record['same']} of {len(prompts)} prompts"
        + (
            f"; the others part at token {', '.join(str(p) for p in parted if p is not None)}."
            if record["same"] < len(prompts)
            else "."
        ),
    ]
    write("precision", record, "\n".join(lines))


if __name__ == "__main__":
    main()
