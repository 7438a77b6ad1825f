"""What one decoding step of the batcher costs with N rows, against one row: the floor under
``benchmarks/concurrency.py``'s ratios (8 users at once cannot take less than a step of 8 rows over a
step of one, times the steps).

    python -m benchmarks.decode_rows [--rows 1,2,4,8,16] [--steps 16] [--repeats 5] [--threads 1]

Model: the packaged SmolLM2-135M-Instruct (fp32, CPU) with a LoRA like the CPU demo's. Each row is a
chat prompt prefilled by ``assistant.engine.batch.Running.prefill`` (the engine's own), then ``--steps`` steps
of ``Running.step`` (forward of every row's last token through the adapter, then each row's sampled
token: temperature 0.7, top-p 0.95, its own seed) are timed; the repeats go through the row counts in
alternating order so that load from other work falls on all. Reported per row count: the median
seconds a step, the ratio to one row, tokens per second (rows / step), the median prefill of the rows'
prompts (one forward, as requests that arrive together share), and what N answers of 32 tokens (that
prefill, then 31 steps) cost against one: the floor under ``benchmarks/concurrency.py``'s 32-token
``/chat`` ratio, with no server or client around it; each step also in PyTorch's layout of the linear
layers (``x @ W.T``) against the served one (``assistant.cpu_linear``'s ``W @ x.T``), in the same
repeats; and what ``choose`` pays to find
one row's top-p nucleus: a sort of the whole vocabulary against its top 64 and top 1024; and one
row's draw, ``torch.multinomial`` against ``assistant.engine.sampling.draw``. Writes
benchmarks/results/decode_rows.json and decode_rows.md.
"""

from __future__ import annotations

import argparse
import threading
import time

from tqdm import tqdm

from benchmarks.serving_common import (
    PROMPT,
    THREADS_HELP,
    load_smollm2_with_lora,
    machine,
    median,
    timed,
    write,
)


def main() -> None:
    import torch

    from assistant.cpu_linear import weights_first
    from assistant.engine.batch import Running
    from assistant.engine.requests import Request
    from assistant.engine.sampling import draw, nucleus
    from assistant.engine.worker import Channel
    from assistant.generation import GenerationSettings, eos_ids, row_streamer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="1,2,4,8,16")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    counts = [int(n) for n in args.rows.split(",")]
    info = machine()
    loaded = load_smollm2_with_lora()
    stop_ids = sorted(eos_ids(loaded))
    settings = GenerationSettings(args.steps + 1, temperature=0.7, top_p=0.95, seed=0)

    def batch(n: int) -> Running:
        adapters = ["default"] * n
        streamer = row_streamer(loaded, adapters, None, [settings.max_new_tokens] * n, threading.Event())
        conversations = [[{"role": "user", "content": f"{PROMPT} ({i})"}] for i in range(n)]
        request = Request(conversations, adapters, [settings] * n, Channel(streamer, lambda _: None))
        return Running.prefill(loaded, [request], stop_ids)

    # Each layout of the linear layers (assistant.cpu_linear): the served one, weights first, and PyTorch's.
    layouts = {"weights first": True, "PyTorch's": False}
    seconds = {(n, layout): [] for n in counts for layout in layouts}
    prefills: dict[int, list[float]] = {n: [] for n in counts}
    with torch.inference_mode():
        batch(1).step(loaded.model, stop_ids)  # warm-up
        for repeat in tqdm(range(args.repeats), desc="repeats"):
            for n in counts if repeat % 2 == 0 else counts[::-1]:
                for layout in layouts if (repeat + n) % 2 == 0 else list(layouts)[::-1]:
                    weights_first(loaded.model, layouts[layout])
                    prefill_began = time.perf_counter()
                    running = batch(n)
                    if layouts[layout]:
                        prefills[n].append(time.perf_counter() - prefill_began)
                    for _ in range(args.steps):
                        seconds[n, layout].append(timed(lambda r=running: r.step(loaded.model, stop_ids)))
        weights_first(loaded.model)
    probs = torch.softmax(torch.randn(loaded.model.config.vocab_size) * 3, dim=-1)
    nucleus_s = {
        "sort": median([timed(lambda: probs.sort(descending=True)) for _ in range(20)]),
        **{f"top {k}": median([timed(lambda k=k: probs.topk(k)) for _ in range(20)]) for k in (64, 1024)},
    }
    # One row's draw from its nucleus: torch.multinomial over the zeroed vocabulary against ``draw``
    # (the same token and generator state, tested)
    kept = nucleus(probs, *probs.topk(64), 0.95)
    zeroed = torch.zeros_like(probs).index_copy_(0, kept, probs[kept])
    generator = torch.Generator().manual_seed(0)
    draw_s = {
        "torch.multinomial": median(
            [timed(lambda: torch.multinomial(zeroed, 1, generator=generator)) for _ in range(20)]
        ),
        "draw": median([timed(lambda: draw(probs, kept, generator)) for _ in range(20)]),
    }
    step = {n: median(seconds[n, "weights first"]) for n in counts}
    one = step[counts[0]]
    rows = [
        {
            "rows": n,
            "step_s": step[n],
            "vs_first": round(step[n] / one, 2),
            "tokens_per_s": round(n / step[n], 1),
            "step_s_pytorch_layout": median(seconds[n, "PyTorch's"]),
            "pytorch_layout_over_weights_first": round(median(seconds[n, "PyTorch's"]) / step[n], 2),
            "prefill_s": round(median(prefills[n]), 4),
            # N answers of 32 tokens (a prefill, then 31 steps) against one such answer
            "answers_of_32_vs_first": round(
                (median(prefills[n]) + 31 * step[n]) / (median(prefills[counts[0]]) + 31 * one),
                2,
            ),
        }
        for n in counts
    ]
    record = {
        "steps": args.steps,
        "repeats": args.repeats,
        "rows": rows,
        "nucleus_s": nucleus_s,
        "draw_s": draw_s,
        "machine": info,
    }
    lines = [
        "# One decoding step with N rows",
        "",
        f"`python -m benchmarks.decode_rows --threads {args.threads}` — SmolLM2-135M-Instruct + LoRA r=16, "
        f"fp32, `assistant.engine.batch.Running.step` (forward + sampling), median of {args.steps} steps x "
        f"{args.repeats} repeats per row count, in one run.",
        "",
        "Step s: the served layout of the linear layers (`assistant.cpu_linear`: weights first, `W @ x.T`, "
        "in steps of several rows); beside it the same steps in PyTorch's `x @ W.T`, timed in the same "
        "repeats in alternating order.",
        "",
        f"| rows | step s | vs {counts[0]} row(s) | tokens/s | prefill s | 32-token answers vs {counts[0]} "
        "| step s, PyTorch's layout | PyTorch's / weights first |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {r['rows']} | {r['step_s']} | {r['vs_first']} | {r['tokens_per_s']} | {r['prefill_s']} | "
            f"{r['answers_of_32_vs_first']} | {r['step_s_pytorch_layout']} | "
            f"{r['pytorch_layout_over_weights_first']} |"
            for r in rows
        ),
        "",
        f"Finding one row's nucleus over {len(probs):,} tokens (median of 20): "
        + ", ".join(f"{name} {s * 1000:.2f} ms" for name, s in nucleus_s.items())
        + f"; a sort costs {nucleus_s['sort'] / nucleus_s['top 1024']:.1f}x a top 1024.",
        "",
        f"Drawing one row's token from its top-0.95 nucleus ({len(kept):,} tokens; median of 20): "
        f"`torch.multinomial` over the zeroed vocabulary {draw_s['torch.multinomial'] * 1000:.2f} ms, "
        f"`assistant.engine.sampling.draw` (the same token and generator state) {draw_s['draw'] * 1000:.2f} ms, "
        f"{draw_s['torch.multinomial'] / draw_s['draw']:.1f}x faster.",
    ]
    write("decode_rows", record, "\n".join(lines))


if __name__ == "__main__":
    main()
