"""What streaming the chat costs: the app's streamed answer against plain ``generate`` on the same model.

    python -m benchmarks.streaming [--new-tokens 64] [--repeats 7]

Model: the packaged SmolLM2-135M-Instruct (fp32, CPU) with a LoRA like the CPU demo's, greedy, with
``min_new_tokens`` = ``max_new_tokens`` so every run makes the same number of tokens. Each repeat runs,
in alternating order so that load from other work on the machine falls on both:
  plain        model.generate(...) on the PeftModel, its adapter active (no streamer, no thread, no lock);
  plain_first  the same with max_new_tokens=1: the baseline's time to first token (prompt + one step);
  streamed     Assistant.chat(): what the Chat tab runs (generate thread + lock + RowStreamer + stopping
               criterion + adapter_names routing), timed at its first snapshot and at its last.
Writes benchmarks/results/streaming.json and streaming.md (medians after one warm-up). Goal: < 5% cost.
"""

from __future__ import annotations

import time

import torch
from tqdm import tqdm

from benchmarks.serving_common import (
    median,
    prepare_run,
    timed,
    write,
)


def main() -> None:
    args, info, loaded, assistant, prepared = prepare_run(__doc__, new_tokens=64, repeats=7)
    n, messages = args.new_tokens, prepared.messages
    batch = loaded.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    prompt_tokens = batch["input_ids"].shape[1]

    def plain(tokens: int) -> None:
        with torch.inference_mode():
            out = loaded.model.generate(
                **batch, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False
            )
        assert out.shape[1] - prompt_tokens == tokens

    def streamed() -> tuple[float, float]:
        start = time.perf_counter()
        first = last = None
        for snapshot in assistant.chat(prepared):
            first = first or time.perf_counter() - start
            last = snapshot
        assert last.tokens == n, last
        return first, time.perf_counter() - start

    runs = {"plain": [], "plain_first": [], "streamed_first": [], "streamed": []}
    plain(n), streamed()  # warm-up
    for repeat in tqdm(range(args.repeats), desc="repeats"):
        order = ["plain", "plain_first", "streamed"]
        for name in order if repeat % 2 == 0 else reversed(order):
            if name == "plain":
                runs["plain"].append(timed(lambda: plain(n)))
            elif name == "plain_first":
                runs["plain_first"].append(timed(lambda: plain(1)))
            else:
                first, total = streamed()
                runs["streamed_first"].append(first)
                runs["streamed"].append(total)

    m = {name: median(values) for name, values in runs.items()}
    result = {
        "model": loaded.describe(),
        "prompt_tokens": prompt_tokens,
        "new_tokens": n,
        "repeats": args.repeats,
        "median_s": m,
        "tokens_per_s": {"plain": round(n / m["plain"], 2), "streamed": round(n / m["streamed"], 2)},
        "time_to_first_token_s": {"plain": m["plain_first"], "streamed": m["streamed_first"]},
        # per repeat (neighbours share the machine's load), then the median: steadier than medians' ratio
        "streamed_over_plain": median([a / b for a, b in zip(runs["streamed"], runs["plain"], strict=True)]),
        "goal": "streamed_over_plain < 1.05",
        "runs_s": {name: [round(v, 4) for v in values] for name, values in runs.items()},
        "machine": info,
    }
    result["goal_met"] = result["streamed_over_plain"] < 1.05
    md = f"""# Streaming cost

{loaded.describe()}
Prompt {prompt_tokens} tokens, {n} new tokens forced (greedy), medians of {args.repeats} interleaved repeats.

| | plain `generate` | streamed chat (`Assistant.chat`) |
|---|---|---|
| time to first token | {m["plain_first"]:.3f} s | {m["streamed_first"]:.3f} s |
| total | {m["plain"]:.3f} s | {m["streamed"]:.3f} s |
| tokens/s | {n / m["plain"]:.2f} | {n / m["streamed"]:.2f} |

Streamed / plain total time (median of per-repeat ratios): **{result["streamed_over_plain"]:.3f}**
(goal < 1.05: {"met" if result["goal_met"] else "NOT met"}).

"""
    write("streaming", result, md)


if __name__ == "__main__":
    main()
