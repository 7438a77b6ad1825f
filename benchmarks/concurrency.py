"""Many people at once: 1, 2, 4 and 8 simultaneous users of the real app, through gradio_client.

    python -m benchmarks.concurrency [--new-tokens 32] [--levels 1,2,4,8] [--endpoints compare,chat,battle]
                                     [--repeats 3] [--threads N]

Starts ``python app.py`` (offline: SmolLM2 with the demo adapters) as a subprocess on loopback, then for
each endpoint (``/compare``: base and first adapter side by side; ``/chat``: the first adapter, streamed;
``/battle``: a named battle, base against the first adapter) sends each of 8 different prompts alone,
one after another (the same-round baseline: "one user alone"), then N users at once (N > 1), each with
its own client and prompt, all released together; ``--repeats`` such rounds, because one burst on a
shared 2-core machine varies by a fifth from run to run. Per level (medians of the rounds): the total
time until the last answer, the time to first token p50/p95 (``/chat`` streams; ``/compare`` and
``/battle`` return whole answers, so there it is the time to the answer), tokens per second per user
(answers re-tokenized), each against one user alone, as ratios; the CPU seconds of the app and of this
client; and whether every answer is identical to the same prompt's answer alone.
Sampling is the app's default (temperature 0.7, top-p 0.95) with seed 0, so identical answers show
that a row's sampling does not depend on the rows it shares a batch with.
Writes benchmarks/results/concurrency.json and concurrency.md (``--name`` another name). Goal (issue 28,
requests joining the running batch at the next token): 8 concurrent 32-token ``/chat`` users, and 8
``/compare`` requests, each take at most 2x as long as one alone, every answer identical to the same
request's alone.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from benchmarks.serving_common import ROOT, THREADS_HELP, machine, write
from benchmarks.start_time import free_port

PROMPTS = [
    "Explain the difference between a list and a tuple in Python.",
    "Give me three tips for a good night's sleep.",
    "Write a short, friendly email declining a meeting invitation.",
    "What causes the seasons on Earth?",
    "How do I boil an egg?",
    "Name three planets and one fact about each.",
    "Why is the sky blue?",
    "Suggest a name for a small bakery.",
]
SETTINGS = dict(system="", temperature=0.7, top_p=0.95, seed=0)
GOAL = 2  # issue 28: 8 users at once take at most this many times as long as one alone


def start_app(threads: int, data_dir: str, timeout: float = 300) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSISTANT_")}
    env.update(OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    port = free_port()
    log = open(os.path.join(data_dir, "app.log"), "w")  # noqa: SIM115 (the app writes to it until closed)
    process = subprocess.Popen(
        [sys.executable, "app.py", "--port", str(port), "--data-dir", data_dir],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url, began = f"http://127.0.0.1:{port}/", time.perf_counter()
    while time.perf_counter() - began < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with {process.returncode}; see {log.name}")
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                if reply.status == 200:
                    return process, url
        except OSError:
            time.sleep(0.2)
    process.terminate()
    raise RuntimeError(f"app.py did not answer within {timeout} s; see {log.name}")


def one(client, endpoint: str, prompt: str, new_tokens: int, models) -> dict:
    """One request; the seconds to the first token (or the whole answer) and to the end, and the text."""
    began = time.perf_counter()
    first = None
    if endpoint == "chat":
        chat = (SETTINGS["system"], SETTINGS["temperature"], SETTINGS["top_p"], new_tokens, SETTINGS["seed"])
        job = client.submit(prompt, models[1], *chat, api_name="/chat")
        for partial in job:
            if first is None and partial:
                first = time.perf_counter() - began
        texts = [job.outputs()[-1]]
    elif endpoint == "compare":
        texts = list(client.predict(prompt, api_name="/compare", max_new_tokens=new_tokens, **SETTINGS))
    else:
        reply = client.predict(
            prompt,
            api_name="/battle",
            model_a=models[0],
            model_b=models[1],
            max_new_tokens=new_tokens,
            **SETTINGS,
        )
        texts = [reply["answer_a"], reply["answer_b"]]
    seconds = time.perf_counter() - began
    return {"first": first if first is not None else seconds, "seconds": seconds, "texts": texts}


def at_once(url: str, endpoint: str, prompts: list[str], new_tokens: int, models, app_pid: int):
    """Every prompt from its own client, released together: the total seconds, each result, and the CPU
    seconds the app and this client used from the release to the last answer."""
    from gradio_client import Client

    clients = [Client(url, verbose=False) for _ in prompts]
    barrier, results = threading.Barrier(len(prompts) + 1), [None] * len(prompts)

    def user(i):
        barrier.wait()
        results[i] = one(clients[i], endpoint, prompts[i], new_tokens, models)

    threads = [threading.Thread(target=user, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    barrier.wait()
    began, app, client = time.perf_counter(), cpu_seconds(app_pid), cpu_seconds()
    for t in threads:
        t.join()
    cpu = {"app": cpu_seconds(app_pid) - app, "client": cpu_seconds() - client}
    return time.perf_counter() - began, results, cpu


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[-1] if len(values) > 1 else values[0]


def summary(results: list[dict], count_tokens) -> dict:
    firsts = [r["first"] for r in results]
    rates = [sum(count_tokens(t) for t in r["texts"]) / r["seconds"] for r in results]
    return {
        "first_token_p50_s": round(statistics.median(firsts), 3),
        "first_token_p95_s": round(p95(firsts), 3),
        "tokens_per_s_per_user": round(statistics.mean(rates), 2),
        "answer_tokens_mean": round(statistics.mean(count_tokens(t) for r in results for t in r["texts"]), 1),
    }


def served_models(data_dir: str) -> list[str]:
    """The base's and the adapters' names, from the line the app prints at start."""
    log = open(os.path.join(data_dir, "app.log")).read()
    match = re.search(r"Serving the base (\S+) and \d+ adapters? on it: ([^;]+);", log)
    if match is None:
        raise RuntimeError("the app serves no adapter, so there is nothing to compare or battle")
    return [match.group(1), *match.group(2).split(", ")]


def cpu_seconds(pid: int | None = None) -> float:
    """CPU seconds used so far by process ``pid`` (default: this one, all its threads)."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def endpoint_rows(url, endpoint: str, levels, new_tokens: int, models, count, repeats: int, app_pid: int):
    """Per level, ``repeats`` rounds; each round first sends the prompts alone (its own baseline, so a
    round's ratio compares times under the same load), then N users at once."""
    from gradio_client import Client

    # A fresh client for every request: a client keeps its session's chat history.
    one(Client(url, verbose=False), endpoint, PROMPTS[-1], new_tokens, models)  # warm-up, not counted
    rounds: dict[int, list[dict]] = {n: [] for n in levels}
    for _ in range(repeats):
        alone = [
            one(Client(url, verbose=False), endpoint, p, new_tokens, models) for p in PROMPTS[: max(levels)]
        ]
        for n in levels:
            if n == 1:  # one user alone: each prompt by itself, as above
                total, results, cpu = statistics.median(r["seconds"] for r in alone), alone, None
            else:
                total, results, cpu = at_once(url, endpoint, PROMPTS[:n], new_tokens, models, app_pid)
            one_alone = statistics.median(r["seconds"] for r in alone[: n if n > 1 else None])
            rounds[n].append(
                {
                    "total": total,
                    "one_alone": one_alone,
                    "ratio": total / one_alone,
                    "sequential": sum(r["seconds"] for r in alone[:n]),
                    "results": results,
                    "alone": alone,
                    "cpu": cpu,
                }
            )
    reference = summary([r for got in rounds[levels[0]] for r in got["alone"]], count)
    rows = []
    for n in levels:
        got = rounds[n]
        results = [r for g in got for r in g["results"]]
        stats = summary(results, count)
        ratios = [g["ratio"] for g in got]
        rows.append(
            {
                "endpoint": endpoint,
                "users": n,
                "rounds": len(got),
                "total_s": round(statistics.median(g["total"] for g in got), 3),
                "one_alone_s": round(statistics.median(g["one_alone"] for g in got), 3),
                "total_over_one_alone": round(statistics.median(ratios), 2),
                "ratio_range": [round(min(ratios), 2), round(max(ratios), 2)],
                "total_over_sequential": round(
                    statistics.median(g["total"] / g["sequential"] for g in got), 2
                ),
                **stats,
                "first_token_p50_over_alone": round(
                    stats["first_token_p50_s"] / reference["first_token_p50_s"], 2
                ),
                "tokens_per_s_over_alone": round(
                    stats["tokens_per_s_per_user"] / reference["tokens_per_s_per_user"], 2
                ),
                "app_cpu_s": None if n == 1 else round(statistics.median(g["cpu"]["app"] for g in got), 2),
                "client_cpu_s": None
                if n == 1
                else round(statistics.median(g["cpu"]["client"] for g in got), 2),
                "answers": len(results),
                "identical_to_alone": sum(
                    r["texts"] == a["texts"]
                    for g in got
                    for r, a in zip(g["results"], g["alone"], strict=False)
                ),
            }
        )
        print(rows[-1], flush=True)
    return rows


def markdown(record: dict) -> str:
    lines = [
        "# Concurrent users through the real app",
        "",
        f"`python -m benchmarks.concurrency` — `python app.py` on loopback (offline: {', '.join(record['models'])}),"
        f" gradio_client, {record['new_tokens']} new tokens at most, temperature 0.7, seed 0, "
        f"{record['app_threads']} torch thread(s) in the app. {record['repeats']} rounds per endpoint: "
        "each round sends the prompts alone, one after another (its baseline: the median), then N users at "
        "once; each figure is the median of the rounds', and the range of the rounds' ratios is given. First token: `/chat` "
        "streams; `/compare` and `/battle` return whole answers, so theirs is the time to the answer. Tokens "
        "per second: the request's answers re-tokenized, over its time. CPU s: what the app and this "
        "client (its gradio_client threads, on the same cores) used from the N users' release to the last "
        "answer. Identical: "
        "answers equal to the same prompt's alone in the same round.",
        "",
        "| endpoint | users | total s | one alone s | total / alone | rounds' range | total / sequential "
        "| first token p50 s | p95 s | p50 / alone | tok/s per user | / alone | CPU s app / client | identical |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in record["rows"]:
        cpu = "" if r["app_cpu_s"] is None else f"{r['app_cpu_s']} / {r['client_cpu_s']}"
        low, high = r["ratio_range"]
        lines.append(
            f"| /{r['endpoint']} | {r['users']} | {r['total_s']} | {r['one_alone_s']} | "
            f"{r['total_over_one_alone']} | {low} to {high} | {r['total_over_sequential']} | "
            f"{r['first_token_p50_s']} | {r['first_token_p95_s']} | {r['first_token_p50_over_alone']} | "
            f"{r['tokens_per_s_per_user']} | {r['tokens_per_s_over_alone']} | {cpu} | "
            f"{r['identical_to_alone']}/{r['answers']} |"
        )
    goals = [r for r in record["rows"] if r["endpoint"] in ("chat", "compare") and r["users"] == 8]
    if goals:
        lines += [
            "",
            f"Goal (issue 28): 8 concurrent users at most {GOAL}x one alone, every answer identical:",
        ]
    for r in goals:
        met = r["total_over_one_alone"] <= GOAL and r["identical_to_alone"] == r["answers"]
        lines.append(
            f"- `/{r['endpoint']}`: **{r['total_over_one_alone']}x, identical {r['identical_to_alone']}/"
            f"{r['answers']}: {'met' if met else 'not met'}**"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--levels", default="1,2,4,8")
    parser.add_argument("--endpoints", default="compare,chat,battle")
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    parser.add_argument("--repeats", type=int, default=3, help="rounds per level (the median is reported)")
    parser.add_argument("--name", default="concurrency", help="results file name (keeps earlier runs' files)")
    parser.add_argument("--start-timeout", type=float, default=300, help="seconds the app may take to start")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from assistant.models import packaged_smollm2

    tokenizer = AutoTokenizer.from_pretrained(packaged_smollm2())

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    levels = [int(n) for n in args.levels.split(",")]
    info = machine()
    info["torch_threads"] = args.threads  # the app's, not this client's
    data_dir = tempfile.mkdtemp(prefix="concurrency-")
    process, url = start_app(args.threads, data_dir, args.start_timeout)
    try:
        models = served_models(data_dir)
        rows = [
            row
            for endpoint in args.endpoints.split(",")
            for row in endpoint_rows(
                url, endpoint, levels, args.new_tokens, models, count, args.repeats, process.pid
            )
        ]
    finally:
        process.terminate()
        process.wait(timeout=60)
    record = {
        "new_tokens": args.new_tokens,
        "app_threads": args.threads,
        "repeats": args.repeats,
        "models": models,
        "rows": rows,
        "machine": info,
    }
    write(args.name, record, markdown(record))


if __name__ == "__main__":
    main()
