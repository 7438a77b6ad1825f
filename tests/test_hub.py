"""Pushing a run to the Hub and getting it back, end to end, against a stand-in for the Hub's HTTP API.

The real `huggingface_hub` client does the work, in subprocesses whose HF_ENDPOINT points at the
stand-in on loopback (huggingface_hub reads it at import). The pushed adapter is then downloaded with
`snapshot_download` and loaded by the card's own usage snippet, which fetches the base model from the
stand-in too, and generates.
"""

import json
import os
import re
import socket
import subprocess
import sys
import textwrap

import pytest

from tests._helpers_card import add_eval, build_training_output
from tests.hub_server import HubStandIn

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
TOKEN = "hf_standInTokenThatMustNeverLeak0123456789"
USER = "tester"
BASE_ID = f"{USER}/tiny-phi"
REPO_ID = f"{USER}/phi2-grpo"


@pytest.fixture(scope="module")
def hub():
    with HubStandIn(token=TOKEN, user=USER) as server:
        yield server


def hf_env(endpoint, tmp_path, token=TOKEN):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HUB_OFFLINE="0",
        HF_HOME=str(tmp_path / "hf-home"),
        HF_HUB_DISABLE_TELEMETRY="1",
        PYTHONPATH=str(ROOT),
        OMP_NUM_THREADS="1",
    )
    if token:
        env["HF_TOKEN"] = token
    return env


def push(hub, tmp_path, *args, token=TOKEN):
    return subprocess.run(
        [sys.executable, "-m", "train.hub", *map(str, args)],
        cwd=ROOT,
        env=hf_env(hub.url, tmp_path, token),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def pushed(hub, tmp_path_factory, tiny_phi_dir, sample_path):
    """A run pushed with the CLI to a private repo named without its namespace."""
    hub.add_repo(BASE_ID, tiny_phi_dir)  # the base model the adapter names, as the Hub would hold it
    out = tmp_path_factory.mktemp("run") / "phi2-grpo"
    build_training_output(out, tiny_phi_dir, sample_path, base_model_id=BASE_ID, with_eval=True)
    add_eval(out, "sealed")  # the sealed test's report, as study.sealed writes it
    done = push(hub, tmp_path_factory.mktemp("push"), out, "--repo-id", "phi2-grpo", "--private")
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def local_files(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def test_push_is_one_private_commit_of_the_run(hub, pushed):
    out, done = pushed
    assert f"{hub.url}/{REPO_ID}" in done.stdout
    repo = hub.repos[REPO_ID]
    assert repo.private and len(repo.commits) == 1
    files = repo.commits[0]["files"]
    expected = {
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "README.md",
        "recipe.yaml",
        "training_info.json",
        "metrics.jsonl",
        "data_stats.json",
        "plots/reward.png",
        "eval/report.md",
        "eval/report.json",
        "eval/win_rate.png",
        "eval/lengths.png",
        "sealed/report.md",
        "sealed/report.json",
    }
    assert expected <= set(files), expected - set(files)
    assert not [p for p in files if p.startswith("checkpoint-")]
    local = local_files(out)
    assert all(files[p] == local[p] for p in files)  # byte for byte what is on disk
    # The card was re-rendered with the final repo id before the upload.
    assert f'adapter = "{REPO_ID}"'.encode() in files["README.md"]
    assert not hub.unhandled


def test_token_sent_to_the_hub_only(hub, pushed):
    out, done = pushed
    writes = [r for r in hub.requests if r["path"].startswith(("/api/repos", f"/api/models/{REPO_ID}"))]
    assert writes and all(r["authorization"] == f"Bearer {TOKEN}" for r in writes)
    assert TOKEN not in done.stdout + done.stderr
    assert not [p for p, content in local_files(out).items() if TOKEN.encode() in content]


def test_download_and_generate_with_the_card_snippet(hub, pushed, tmp_path):
    out, _ = pushed
    script = textwrap.dedent(f"""
        import json, re, sys
        import torch
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import RepositoryNotFoundError
        from peft import PeftModel
        from safetensors.torch import load_file

        try:  # private: nobody else may see it
            snapshot_download({REPO_ID!r}, token=False)
            sys.exit("a private repo was downloaded without the token")
        except RepositoryNotFoundError:
            pass
        folder = snapshot_download({REPO_ID!r})
        card = open(folder + "/README.md").read()
        snippet = re.search(r"```python\\n(.*?)```", card, re.S).group(1)
        # The snippet as a reader runs it, but a short answer: a random tiny model never stops early.
        assert "max_new_tokens=256" in snippet
        snippet = snippet.replace("max_new_tokens=256", "max_new_tokens=8")
        scope = {{}}
        exec(snippet, scope)  # loads tiny-phi and the adapter from the stand-in, generates, prints
        model, tokenizer = scope["model"], scope["tokenizer"]
        saved = load_file(folder + "/adapter_model.safetensors")
        loaded = {{k: v for k, v in model.state_dict().items() if "lora_" in k}}
        same = all(  # PEFT names the loaded weights after the adapter: lora_A.default.weight
            torch.equal(v, loaded[name.replace(".weight", ".default.weight")]) for name, v in saved.items()
        )
        ids = tokenizer.apply_chat_template([{{"role": "user", "content": "Hi"}}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            tuned = model(input_ids=ids).logits
            with model.disable_adapter():
                base = model(input_ids=ids).logits
        print("RESULT " + json.dumps({{
            "files": sorted(p for p in __import__("os").listdir(folder)),
            "peft": isinstance(model, PeftModel), "same_weights": same, "n_saved": len(saved),
            "template": tokenizer.chat_template, "adapter_changes_output": not torch.allclose(tuned, base),
            "answer_tokens": int(scope["output"].shape[1] - scope["inputs"]["input_ids"].shape[1]),
        }}))
    """)
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=hf_env(hub.url, tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(re.search(r"^RESULT (.*)$", done.stdout, re.M).group(1))
    from assistant.prompt import PHI2_CHAT_TEMPLATE

    assert "adapter_model.safetensors" in result["files"] and "README.md" in result["files"]
    assert result["peft"] and result["same_weights"] and result["n_saved"] > 0
    assert result["template"] == PHI2_CHAT_TEMPLATE  # the prompt format training used
    assert result["adapter_changes_output"] and result["answer_tokens"] > 0
    assert TOKEN not in done.stdout + done.stderr
    assert not hub.unhandled, hub.unhandled


def test_push_again_after_evaluation_adds_a_commit(hub, pushed, tmp_path):
    out, _ = pushed
    (out / "eval" / "report.md").write_text("# Base vs tuned\n\nTuned wins **70%** of 20 prompts.\n")
    done = push(hub, tmp_path, out, "--repo-id", REPO_ID)
    assert done.returncode == 0, done.stderr[-3000:]
    repo = hub.repos[REPO_ID]
    assert len(repo.commits) == 2 and repo.private  # existing repo kept as it was
    files = repo.commits[-1]["files"]
    assert b"**70%**" in files["eval/report.md"] and b"**70%**" in files["README.md"]


def test_errors_are_one_line(hub, pushed, tmp_path):
    out, _ = pushed
    half = tmp_path / "half"  # an adapter without the rest of a run
    half.mkdir()
    (half / "adapter_config.json").write_bytes((out / "adapter_config.json").read_bytes())
    cases = [
        (
            (out, "--repo-id", "x"),
            None,
            "error: not logged in to the Hub: run `hf auth login` or set HF_TOKEN",
        ),
        ((out, "--repo-id", "x"), "hf_wrong", "error: the Hub refused the token (invalid or expired)"),
        ((out, "--repo-id", "bad id!"), TOKEN, "error: invalid repo id 'bad id!'"),
        ((out, "--repo-id", "someone-else/x"), TOKEN, "error: no write access to 'someone-else/x'"),
        ((tmp_path / "nothing", "--repo-id", "x"), TOKEN, "error: no adapter in"),
        ((half, "--repo-id", "x"), TOKEN, f"error: {half / 'training_info.json'} is missing"),
        ((out, "--repo-id", "tiny-phi", "--private"), TOKEN, f"error: {BASE_ID} exists and is public"),
    ]
    for args, token, message in cases:
        done = push(hub, tmp_path, *args, token=token)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.startswith(message), (message, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
        assert TOKEN not in done.stdout + done.stderr
    assert "someone-else/x" not in hub.repos and f"{USER}/x" not in hub.repos
    assert len(hub.repos[BASE_ID].commits) == 1  # nothing pushed into the public repo
    assert f'adapter = "{REPO_ID}"' in (out / "README.md").read_text()  # the local card untouched


def test_unreachable_hub_is_one_line(pushed, tmp_path):
    out, _ = pushed
    with socket.socket() as free:  # a port nobody listens on
        free.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{free.getsockname()[1]}"
    env = hf_env(closed, tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "train.hub", str(out), "--repo-id", "x"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: cannot reach the Hub at {closed}")
    assert len(done.stderr.strip().splitlines()) == 1 and TOKEN not in done.stdout + done.stderr
