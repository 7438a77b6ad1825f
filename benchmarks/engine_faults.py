"""A fault at each stage of the serving engine, injected into a running app, then 8 requests at once
that must all answer: the engine fails only the requests a fault touched and goes on serving.

``python -m benchmarks.engine_faults`` serves the offline demo (SmolLM2-135M-Instruct and the demo
adapters, the Space's ``build_demo`` on loopback), and for each stage of ``STAGES``: makes that stage
raise for one request (the "victim", told by its limit of ``VICTIM_TOKENS`` new tokens), sends the
victim through ``/chat`` beside a bystander already running, then 8 ``/chat`` requests at once. Writes
``benchmarks/results/engine_faults.json``. The tests inject the same faults (tests/test_engine_faults.py).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
from contextlib import contextmanager

from assistant.atomic import write_text
from assistant.engine import sampling
from assistant.engine.batch import Running
from assistant.generation import RowStreamer
from benchmarks.serving_common import RESULTS, machine

VICTIM_TOKENS = 11


def victim(request) -> bool:
    return request.settings[0].max_new_tokens == VICTIM_TOKENS


# stage -> (where the fault goes, when it fires, whether it touches every request of the batch)
STAGES = {
    "prefill": (
        Running,
        "prefill",
        lambda cls, loaded, requests, *a: any(victim(r) for r in requests),
        False,
    ),
    "join": (Running, "join", lambda self, other: any(victim(r) for r in other.requests), False),
    "sampling": (sampling, "pick", lambda scores, row, *a: victim(row.request), False),
    "reader": (RowStreamer, "add", lambda self, tokens: self.limit == [VICTIM_TOKENS], False),
    "decoding step": (Running, "step", lambda self, *a: any(victim(r) for r in self.requests), True),
    # (a batch the victim shares: a request joining alone hands out in a batch of its own first)
    "hand-out": (
        Running,
        "keep",
        lambda self, kept: any(map(victim, self.requests)) and len(self.requests) > 1,
        True,
    ),
}


@contextmanager
def injected(stage: str):
    """While the block runs, the stage's function raises a RuntimeError (two lines, so the one line the
    request ends with is checked too) whenever its condition holds."""
    owner, name, when, _ = STAGES[stage]
    real = owner.__dict__[name]
    function = getattr(real, "__func__", real)  # a classmethod's function

    def faulty(*args, **kwargs):
        if when(*args, **kwargs):
            raise RuntimeError(f"injected fault in {name}\nwith a second line")
        return function(*args, **kwargs)

    setattr(owner, name, classmethod(faulty) if isinstance(real, classmethod) else faulty)
    try:
        yield
    finally:
        setattr(owner, name, real)


def main() -> None:
    import torch
    from gradio_client import Client

    from app import build_demo
    from assistant.models import load_for_serving
    from assistant.service import Assistant, Limits
    from assistant.store import Store

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    info = machine()
    loaded = load_for_serving()
    demo = build_demo(loaded, Limits(max_new_tokens=64), Store(tempfile.mkdtemp()), rng=random.Random(0))
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    model = Assistant(loaded).models[-1]  # the demo adapter (the base when none)

    def chat(message, tokens):
        return Client(url, verbose=False).predict(message, model, "", 0, 1, tokens, 0, api_name="/chat")

    def at_once(jobs: dict, head_start: float = 0) -> tuple[dict, dict]:
        """Each job in its own thread, the first ``head_start`` seconds ahead of the others."""
        results, errors = {}, {}

        def run(key, job):
            try:
                results[key] = job()
            except Exception as error:
                errors[key] = str(error)

        threads = [threading.Thread(target=run, args=item) for item in jobs.items()]
        for i, t in enumerate(threads):
            t.start()
            time.sleep(head_start if i == 0 else 0)
        for t in threads:
            t.join(timeout=600)
        return results, errors

    stages = {}
    for stage in STAGES:
        began = time.perf_counter()
        with injected(stage):
            _, errors = at_once(  # the bystander runs when the victim arrives: the victim joins it
                {
                    "bystander": lambda: chat("Write a long story about a dragon.", 48),
                    "victim": lambda: chat("Name a fruit.", VICTIM_TOKENS),
                },
                head_start=1.0,
            )
        after, after_errors = at_once(
            {i: (lambda i=i: chat(f"Name a colour ({i}).", 16)) for i in range(args.clients)}
        )
        stages[stage] = {
            "victim_error": errors.get("victim"),
            "bystander": "failed: " + errors["bystander"] if "bystander" in errors else "answered",
            "answers_after": sum(bool(a) for a in after.values()),
            "errors_after": list(after_errors.values()),
            "survived": "victim" in errors and not after_errors and len(after) == args.clients,
            "seconds": round(time.perf_counter() - began, 2),
        }
        print(stage, json.dumps(stages[stage]))
    demo.close()
    record = {
        "what": f"a fault at each engine stage in a running app (offline demo, {loaded.describe()}), "
        f"then {args.clients} /chat requests at once",
        "stages": stages,
        "all_survived": all(s["survived"] for s in stages.values()),
        "machine": info,
    }
    write_text(RESULTS / "engine_faults.json", json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
