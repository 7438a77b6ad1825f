"""How long the Space takes to start serving with no network, and what it prints on the way.

    python -m benchmarks.start_time [--repeats 3]

Runs ``python app.py`` (nothing configured, so it resolves the published adapter, finds the Hub out of
reach and serves the offline demo) in a fresh process, with ``HF_HUB_OFFLINE=1`` and without it, and
times it from the process start until the page answers HTTP 200 on loopback. The converted SmolLM2 cache
must exist (the first start ever converts it, about 35 s; this runs one start first to make sure).
Every line the app prints to stdout/stderr is kept, and the lines that look like errors or warnings are
counted (``WARNING``, ``ERROR``, ``Traceback``, ``Failed``, ``Retrying``).
Writes benchmarks/results/start_time.json and start_time.md. Goal: under 15 s, no such line.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from benchmarks.serving_common import ROOT, machine, median, write

ALARMING = re.compile(r"WARNING|ERROR|Traceback|Failed|failed|Retrying|Exception")
NO_NETWORK_PROXY = "http://127.0.0.1:9"  # nothing listens there: any Hub request fails at once


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(offline: bool, data_dir: str, timeout: float = 300) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSISTANT_")}
    env.update(OMP_NUM_THREADS="1", ASSISTANT_DATA_DIR=data_dir, PYTHONUNBUFFERED="1")
    env.pop("HF_HUB_OFFLINE", None)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    port = free_port()
    began = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "app.py", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        while time.perf_counter() - began < timeout:
            if process.poll() is not None:
                raise RuntimeError(
                    f"app.py exited with {process.returncode}: {process.stdout.read()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError("app.py did not answer in time")
        seconds = time.perf_counter() - began
    finally:
        process.terminate()
        output = process.communicate(timeout=60)[0]
    lines = [line for line in output.splitlines() if line.strip() and "it/s]" not in line]
    return {
        "seconds": round(seconds, 2),
        "alarming_lines": [line for line in lines if ALARMING.search(line)],
        "serving_line": next((line for line in lines if line.startswith("Serving")), None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    info = machine()
    data_dir = tempfile.mkdtemp(prefix="start-time-")
    start(True, data_dir)  # builds the SmolLM2 cache if it is missing; not counted
    runs = {"HF_HUB_OFFLINE=1": [], "no network, HF_HUB_OFFLINE unset": []}
    for _ in range(args.repeats):
        for name in runs:
            runs[name].append(start(name.startswith("HF_HUB_OFFLINE=1"), data_dir))
    result = {
        "median_s": {name: median([r["seconds"] for r in rs]) for name, rs in runs.items()},
        "alarming_lines": {
            name: sorted({line for r in rs for line in r["alarming_lines"]}) for name, rs in runs.items()
        },
        "serving_line": {name: rs[-1]["serving_line"] for name, rs in runs.items()},
        "runs": runs,
        "goal": "under 15 s, no line that looks like an error",
        "machine": info,
    }
    result["goal_met"] = all(v < 15 for v in result["median_s"].values()) and not any(
        result["alarming_lines"].values()
    )
    rows = "\n".join(
        f"| {name} | {result['median_s'][name]:.1f} s | {', '.join(str(r['seconds']) for r in rs)} "
        f"| {len(result['alarming_lines'][name])} |"
        for name, rs in runs.items()
    )
    md = f"""# Offline start: `python app.py` until the page answers

| start | median | runs (s) | lines that look like errors |
|---|---:|---|---:|
{rows}

Goal (under 15 s, no alarming line): {"met" if result["goal_met"] else "NOT met"}. The machine has no route
to the Hub (DNS fails), as on a Space without network. Header printed:

> {result["serving_line"]["HF_HUB_OFFLINE=1"]}
>
> {result["serving_line"]["no network, HF_HUB_OFFLINE unset"]}
"""
    write("start_time", result, md)


if __name__ == "__main__":
    main()
