"""Peak memory while 16 requests join a running batch one after another: the engine's join (both caches
written once into one buffer with room to spare) against the join it replaced (the shorter cache padded
with ``F.pad``, then ``torch.cat``: two copies, and no room, so the next step copies the cache again).

``python -m benchmarks.join_memory`` prefills one request (SmolLM2-135M-Instruct on the CPU, in the
precision the rule serves there), then 15
times runs ``--steps`` decoding steps and joins one more request (prompts of four lengths, so every
join pads), then runs ``--steps`` more. PyTorch's profiler records every tensor allocation and free; the
peak is the most tensor memory live at once, the KV cache's steady size is what the 16 rows hold at the
end, and their ratio is set against the headroom ``assistant.memory`` leaves (it budgets ``KV_SHARE``
of the free memory for the KV cache, so a peak of up to 1 / KV_SHARE times the cache fits).
Writes ``benchmarks/results/join_memory.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import threading

import torch
import torch.nn.functional as F

from benchmarks.serving_common import PROMPT, machine, write

ROWS = 16


def join_by_concatenation(self, other):
    """The join the engine used until this benchmark: the shorter cache padded on the left, then
    concatenated (kept here as the baseline)."""
    width = max(self.mask.shape[1], other.mask.shape[1])

    def left(x: torch.Tensor, axis_from_end: int) -> torch.Tensor:
        missing = width - x.shape[-axis_from_end]
        return F.pad(x, (0, 0) * (axis_from_end - 1) + (missing, 0)) if missing else x

    for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
        mine.keys = torch.cat([left(mine.keys, 2), left(theirs.keys, 2)])
        mine.values = torch.cat([left(mine.values, 2), left(theirs.values, 2)])
    self.mask = torch.cat([left(self.mask, 1), left(other.mask, 1)])
    self.tokens = torch.cat([self.tokens, other.tokens])
    self.positions = torch.cat([self.positions, other.positions])
    self.rows += other.rows
    self.faults = {**self.faults, **other.faults}
    return self


def peak_bytes(prof) -> int:
    """The most tensor memory live at once, from the profiler's allocations and frees in time order."""
    live = peak = 0
    events = [e for e in prof.events() if e.self_cpu_memory_usage]
    for event in sorted(events, key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def run(loaded, join, steps: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from assistant.engine.batch import Running
    from assistant.engine.cache import SPARE
    from assistant.engine.requests import Request
    from assistant.engine.worker import Channel
    from assistant.generation import GenerationSettings, eos_ids, row_streamer
    from assistant.memory import KV_SHARE, kv_bytes_per_token
    from assistant.precision import DTYPE_NAMES

    stop_ids = sorted(eos_ids(loaded))
    settings = GenerationSettings(10_000, temperature=0)

    def prefill(i: int) -> Running:
        streamer = row_streamer(loaded, ["default"], None, [settings.max_new_tokens], threading.Event())
        text = " ".join([PROMPT] * (1 + i % 4) * 4) + f" ({i})"  # four prompt lengths: every join pads
        request = Request(
            [[{"role": "user", "content": text}]], ["default"], [settings], Channel(streamer, print)
        )
        return Running.prefill(loaded, [request], stop_ids)

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        batch = prefill(0)
        for i in range(1, ROWS):
            for _ in range(steps):
                batch.step(loaded.model, stop_ids)
            batch = join(batch, prefill(i))
        for _ in range(steps):
            batch.step(loaded.model, stop_ids)
    kv = sum(layer.keys.nbytes + layer.values.nbytes for layer in batch.cache.layers)
    width = batch.mask.shape[1]
    dtype = batch.cache.layers[0].keys.dtype  # the served precision's (bf16 on a CPU that has it)
    reserved = len(batch.rows) * kv_bytes_per_token(loaded.model.config, dtype) * (width + SPARE)
    return {
        "peak_mb": round(peak_bytes(prof) / 2**20, 1),
        "kv_cache_mb": round(kv / 2**20, 1),
        "budget_mb": round(reserved / KV_SHARE / 2**20, 1),
        "rows": len(batch.rows),
        "width": width,
        "dtype": DTYPE_NAMES[dtype],
    }


def main() -> None:
    from assistant.engine.batch import Running
    from assistant.engine.cache import SPARE
    from assistant.memory import KV_SHARE
    from benchmarks.serving_common import load_smollm2_with_lora

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="decoding steps between two joins")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    info = machine()
    loaded = load_smollm2_with_lora()
    joins = {"concatenation (before)": join_by_concatenation, "engine (now)": Running.join}
    results = {name: run(loaded, join, args.steps) for name, join in joins.items()}
    before, now = results["concatenation (before)"], results["engine (now)"]
    for result in results.values():
        result["within_budget"] = result["peak_mb"] <= result["budget_mb"]
    record = {
        "what": f"{ROWS} requests joining one by one, {args.steps} steps apart (SmolLM2-135M-Instruct, "
        f"{now['dtype']}, the precision the rule serves on this CPU)",
        "results": results,
        "peak_ratio_now_over_before": round(now["peak_mb"] / before["peak_mb"], 3),
        "machine": info,
    }
    lines = [
        f"`python -m benchmarks.join_memory --steps {args.steps} --threads {args.threads}`: {record['what']}, "
        "peak of live tensor memory from PyTorch's profiler, in one run.",
        "",
        "| join | peak MiB | KV cache at the end MiB | the budget for these rows MiB | peak within it |",
        "|---|---|---|---|---|",
        *(
            f"| {name} | {r['peak_mb']} | {r['kv_cache_mb']} | {r['budget_mb']} | "
            f"{'yes' if r['within_budget'] else 'no'} |"
            for name, r in results.items()
        ),
        "",
        f"The budget ({now['rows']} rows of {now['width']} columns) is `assistant.memory`'s: each row's KV cache with {SPARE} columns of room, as "
        f"KV_SHARE = {KV_SHARE} of the memory it asks to be free.",
        "",
        f"The engine's peak is {record['peak_ratio_now_over_before']}x the concatenating join's.",
    ]
    write("join_memory", record, "\n".join(lines))


if __name__ == "__main__":
    main()
