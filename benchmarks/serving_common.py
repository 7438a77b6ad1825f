"""What the serving benchmarks (streaming.py, side_by_side.py) share: the model, the machine, the results."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from assistant.atomic import write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

PROMPT = "Explain how a bicycle works, and why it stays upright when it moves."


THREADS_HELP = (
    "torch threads (default 1: on a 2-core machine shared with other work, 2-thread OpenMP runs were "
    "measured 4-6x slower than 1 thread from spin-waiting, and differently so in the main thread and in "
    "a worker thread, which would distort a comparison; use 2 on a quiet machine)"
)


def load_smollm2_with_lora(rank: int = 16):
    """The packaged SmolLM2-135M-Instruct (fp32, CPU) with a LoRA shaped like the CPU demo recipe's
    (r=16 on q/k/v/o). Its weights are random: values do not change the cost, lengths are forced."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from assistant.models import load_model, packaged_smollm2

    base = packaged_smollm2()
    folder = Path(tempfile.mkdtemp(prefix="bench-lora-"))
    torch.manual_seed(0)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        init_lora_weights=False,
    )
    get_peft_model(AutoModelForCausalLM.from_pretrained(base), config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    return load_model(str(base), str(folder))


def machine() -> dict:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
    }


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median(values) -> float:
    return round(statistics.median(values), 4)


def write(name: str, record: dict, markdown: str) -> None:
    """benchmarks/results/NAME.json and NAME.md (ending with the machine), each written whole."""
    record["machine"]["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    markdown = markdown.rstrip() + "\n\n" + machine_line(record["machine"]) + "\n"
    write_text(RESULTS / f"{name}.json", json.dumps(record, indent=2) + "\n")
    write_text(RESULTS / f"{name}.md", markdown)
    print(markdown)


def machine_line(m: dict) -> str:
    return (
        f"Machine: {m['platform']}, {m['processor']}, {m['cpu_count']} CPUs "
        f"({m['torch_threads']} torch threads), "
        f"torch {m['torch']}; load average {m['load_average_1m_at_start']} at start, "
        f"{m.get('load_average_1m_at_end', '?')} at end (the machine is shared: runs are interleaved)."
    )


def prepare_run(doc: str, new_tokens: int, repeats: int):
    """A serving benchmark's start: its options, the machine, SmolLM2 with a LoRA behind an Assistant, and
    the prompt prepared to force ``--new-tokens`` greedy tokens. Returns (args, machine, loaded, assistant,
    prepared)."""
    import torch

    from assistant.generation import GenerationSettings
    from assistant.service import Assistant, Limits, Prepared

    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=new_tokens)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = args.new_tokens
    info = machine()  # before loading: the load average the run started in
    loaded = load_smollm2_with_lora()
    settings = GenerationSettings(n, temperature=0, min_new_tokens=n)
    prepared = Prepared([{"role": "user", "content": PROMPT}], 0, settings)
    return args, info, loaded, Assistant(loaded, Limits(max_new_tokens=n)), prepared
