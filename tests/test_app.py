"""The Gradio app, launched on loopback and driven through gradio_client, on SmolLM2 + a random LoRA."""

import json
import socket
import threading
import time

import pytest
from gradio_client import Client

from assistant.generation import Assistant, Limits
from assistant.models import load_model
from tests._helpers_space import make_random_lora

SYSTEM = "Be brief."
GREEDY = dict(temperature=0, top_p=1, max_new_tokens=12, seed=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def loaded(smollm2_dir, tmp_path_factory):
    adapter = make_random_lora(smollm2_dir, tmp_path_factory.mktemp("lora"))
    return load_model(str(smollm2_dir), str(adapter))


@pytest.fixture(scope="module")
def votes(tmp_path_factory):
    return tmp_path_factory.mktemp("votes") / "votes.jsonl"


@pytest.fixture(scope="module")
def url(loaded, votes):
    from app import build_demo

    demo = build_demo(loaded, Limits(max_new_tokens=64), votes=votes)
    _, local_url, _ = demo.launch(
        prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True
    )
    yield local_url
    demo.close()


@pytest.fixture(scope="module")
def core(loaded):
    return Assistant(loaded, Limits(max_new_tokens=64))


def direct(core, message, history=()):
    """The same request through the core, run alone."""
    prepared = core.prepare(message, list(history), SYSTEM, core.settings(**GREEDY))
    return [a.text for a in core.chat(prepared)][-1]


def args(message):
    return (message, SYSTEM, GREEDY["temperature"], GREEDY["top_p"], GREEDY["max_new_tokens"], GREEDY["seed"])


def test_chat_streams_partials_one_by_one_and_uses_the_history(url, core):
    client = Client(url, verbose=False)
    job = client.submit(*args("What is the capital of France?"), api_name="/chat")
    partials = list(job)
    first = job.outputs()[-1]
    assert first == direct(core, "What is the capital of France?")
    assert len(partials) >= 3 and len(set(partials)) >= 3
    assert all(
        b.startswith(a) for a, b in zip(partials, partials[1:], strict=False)
    )  # each partial grows the last

    second = client.predict(*args("And of Spain?"), api_name="/chat")
    history = [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": first},
    ]
    assert second == direct(core, "And of Spain?", history)
    assert second != direct(core, "And of Spain?")  # so the history did reach the model


def test_stopping_a_chat_stops_the_generation_on_the_server(url, loaded):
    from assistant.generation import model_lock

    steps = []
    hook = loaded.model.get_output_embeddings().register_forward_hook(lambda *a: steps.append(1))
    try:
        job = Client(url, verbose=False).submit(
            "Write a long story about a dragon.", SYSTEM, 0, 1, 64, 0, api_name="/chat"
        )
        deadline = time.time() + 60
        while len(steps) < 3 and time.time() < deadline:
            time.sleep(0.01)
        job.cancel()  # what the stop button sends
        deadline = time.time() + 30
        while not model_lock(loaded).acquire(timeout=0.1):  # released when generate has returned
            assert time.time() < deadline, "generation did not stop"
        model_lock(loaded).release()
        assert len(steps) < 40  # of the 64 it would have made
    finally:
        hook.remove()


def test_compare_returns_base_and_tuned_answers_and_the_vote_is_written(url, core, votes):
    client = Client(url, verbose=False)
    with pytest.raises(Exception, match="nothing to vote on"):
        client.predict("Left", api_name="/vote")
    left, right = client.predict(*args("Name a fruit."), api_name="/compare")
    prepared = core.prepare("Name a fruit.", [], SYSTEM, core.settings(**GREEDY))
    base, tuned = list(core.compare(prepared))[-1]
    assert (left, right) == (base.text, tuned.text)
    assert left != right  # the adapter changes the answer

    status = client.predict("Right", api_name="/vote")
    assert "saved" in status
    (line,) = votes.read_text().splitlines()
    record = json.loads(line)
    assert record["vote"] == "right" and record["left_is"] == "base"
    assert record["prompt"] == "Name a fruit."
    assert record["left"] == {"model": core.loaded.base, "answer": left}
    assert record["right"] == {"model": core.loaded.name, "answer": right}  # base + adapter, in full
    assert record["settings"] == {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 12, "seed": 0}
    assert record["time"]
    from train.evaluate import read_votes  # the evaluation reads the file as written

    assert read_votes(str(votes)) == [record]
    with pytest.raises(Exception, match="nothing to vote on"):  # one vote per comparison
        client.predict("Left", api_name="/vote")


def test_bad_requests_get_a_clear_message_and_the_app_keeps_serving(url, core):
    client = Client(url, verbose=False)
    with pytest.raises(Exception, match="empty"):
        client.predict(*args("   "), api_name="/chat")
    with pytest.raises(Exception, match="too long"):
        client.predict(*args("word " * 9000), api_name="/compare")
    with pytest.raises(Exception, match="maximum value 64"):  # Gradio checks the slider's range itself
        client.predict("hi", SYSTEM, 0, 1, 500, 0, api_name="/chat")
    assert client.predict(*args("Say hello."), api_name="/chat") == direct(core, "Say hello.")


def test_users_chatting_and_comparing_at_once_get_their_own_answers(url, core):
    results, errors = {}, []

    def run(key, message, api_name):
        try:
            results[key] = Client(url, verbose=False).predict(*args(message), api_name=api_name)
        except Exception as error:
            errors.append(error)

    jobs = [
        ("a", "What is the capital of France?", "/chat"),
        ("b", "Say hello.", "/compare"),
        ("c", "Name a fruit.", "/chat"),
    ]
    threads = [threading.Thread(target=run, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert not errors
    assert results["a"] == direct(core, "What is the capital of France?")
    assert results["c"] == direct(core, "Name a fruit.")
    prepared = core.prepare("Say hello.", [], SYSTEM, core.settings(**GREEDY))
    base, tuned = list(core.compare(prepared))[-1]
    assert tuple(results["b"]) == (base.text, tuned.text)
