"""Votes that survive the two ways a Space is stopped, on a real ``python app.py`` (SmolLM2 and a random
LoRA, on loopback) whose dataset repo is the loopback Hub stand-in, which speaks the real protocol to
huggingface_hub's CommitScheduler in the app:

- SIGTERM (a restart or an update): the app pushes every vote before it exits;
- SIGKILL (what follows when SIGTERM is ignored for too long): every vote the app had answered is on its
  disk, and the next start on that disk pushes it. What the repo misses is docs/space.md's to say.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client

from tests._helpers_space import dataset_hub, make_random_lora

ROOT = Path(__file__).resolve().parent.parent
TOKEN, USER = "hf_test_token", "tester"
TINY = dict(system="", temperature=0, top_p=1, max_new_tokens=3, seed=0)


@pytest.fixture(scope="module")
def hub():
    with dataset_hub(TOKEN, USER) as server:
        yield server


@pytest.fixture(scope="module")
def adapter(smollm2_dir, tmp_path_factory):
    return make_random_lora(smollm2_dir, tmp_path_factory.mktemp("lora") / "tuned")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class App:
    """``python app.py`` in a process of its own, its output in ``log``."""

    def __init__(self, smollm2_dir, adapter, hub, folder: Path, repo: str):
        self.data, self.log, self.port = folder / "data", folder / "app.log", free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ASSISTANT_", "HF_", "GRADIO_"))}
        env.update(
            HF_ENDPOINT=hub.url,  # every Hub request of the app goes to the stand-in
            HF_TOKEN=TOKEN,
            HF_HUB_OFFLINE="0",
            HF_HUB_DISABLE_TELEMETRY="1",
            GRADIO_ANALYTICS_ENABLED="False",
            OMP_NUM_THREADS="1",
            PYTHONUNBUFFERED="1",
        )
        command = [sys.executable, "app.py", "--base-model", str(smollm2_dir), "--adapters", str(adapter)]
        command += ["--data-dir", str(self.data), "--feedback-repo", repo, "--port", str(self.port)]
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}/"

    def wait_until_serving(self, timeout: float = 600) -> Client:
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.process.poll() is None, f"app.py exited early:\n{self.log.read_text()[-3000:]}"
            try:
                if httpx.get(self.url, timeout=5).status_code == 200:
                    return Client(self.url, verbose=False)
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise AssertionError(f"app.py did not serve within {timeout} s:\n{self.log.read_text()[-3000:]}")

    def disk_votes(self) -> list[dict]:
        return [
            json.loads(line)
            for f in sorted(self.data.glob("votes-*.jsonl"))
            for line in f.read_text().splitlines()
        ]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


def cast_votes(client: Client, choices=("a", "b", "tie")) -> list[str]:
    """One battle and one vote per choice; the battles' ids, once each vote is answered."""
    ids = []
    for n, choice in enumerate(choices):
        answers = client.predict(f"Name a fruit, number {n}.", api_name="/battle", **TINY)
        client.predict(answers["battle_id"], choice, api_name="/vote")
        ids.append(answers["battle_id"])
    return ids


def repo_battles(hub, repo_id: str) -> list[str]:
    if repo_id not in hub.repos or not hub.repos[repo_id].commits:
        return []
    files = hub.repos[repo_id].commits[-1]["files"]
    return [
        json.loads(line)["battle"]
        for path, data in files.items()
        if "votes-" in path
        for line in data.decode().splitlines()
    ]


@pytest.fixture(scope="module")
def apps(smollm2_dir, adapter, hub, tmp_path_factory):
    """Two apps, started together (each start loads the model: minutes on a busy 2-core machine)."""
    started = {
        name: App(smollm2_dir, adapter, hub, tmp_path_factory.mktemp(name), f"{USER}/votes-{name}")
        for name in ("term", "kill")
    }
    yield started
    for app in started.values():
        app.stop()


def test_sigterm_pushes_every_vote_to_the_dataset_repo_before_the_app_exits(apps, hub):
    app = apps["term"]
    client = app.wait_until_serving()
    battles = cast_votes(client)
    with pytest.raises(Exception, match="already has its vote"):
        client.predict(battles[0], "b", api_name="/vote")

    app.process.send_signal(signal.SIGTERM)
    assert app.process.wait(120) == 0
    assert sorted(repo_battles(hub, f"{USER}/votes-term")) == sorted(battles)
    assert sorted(v["battle"] for v in app.disk_votes()) == sorted(battles)
    log = app.log.read_text()
    assert "stopping on signal 15" in log and "Traceback" not in log
    assert log.count("the vote refused: this battle already has its vote") == 1


def test_sigkill_loses_no_answered_vote_from_the_disk_and_the_next_start_pushes_them(apps, hub, monkeypatch):
    from huggingface_hub import HfApi, constants

    from assistant.store import Store

    app = apps["kill"]
    battles = cast_votes(app.wait_until_serving(), ("a", "both_bad"))
    app.process.kill()  # SIGKILL: no handler runs, nothing is pushed on the way out
    assert app.process.wait(30) == -signal.SIGKILL
    assert sorted(v["battle"] for v in app.disk_votes()) == sorted(battles)  # every line whole
    pushed = repo_battles(hub, f"{USER}/votes-kill")
    assert set(pushed) <= set(battles)  # only what a scheduled push (every minute) took before the kill

    # A restart on the same disk (persistent storage) pushes the killed run's file with its own.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    store = Store(app.data, f"{USER}/votes-kill", api=HfApi(endpoint=hub.url, token=TOKEN))
    store.close()
    assert sorted(repo_battles(hub, f"{USER}/votes-kill")) == sorted(battles)
