"""The Gradio app, launched on loopback and driven through gradio_client, on SmolLM2 with two random LoRAs;
votes pushed by the real CommitScheduler to the loopback Hub stand-in."""

import json
import random
import socket
import threading
import time

import httpx
import pytest
from gradio_client import Client

from assistant.models import load_model
from assistant.service import Assistant, Limits
from assistant.store import Store
from tests._helpers_precision import cpu_dtype
from tests._helpers_space import dataset_hub, make_random_lora

SYSTEM = "Be brief."
GREEDY = dict(temperature=0, top_p=1, max_new_tokens=12, seed=0)
TOKEN, USER, REPO = "hf_test_token", "tester", "tester/arena-feedback"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def loaded(smollm2_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapters")
    adapters = [
        make_random_lora(smollm2_dir, folder / name, seed) for seed, name in enumerate(["tuned-a", "tuned-b"])
    ]
    with cpu_dtype("fp32"):  # each answer is checked against the same request alone: exact in fp32 only
        return load_model(str(smollm2_dir), [str(a) for a in adapters])


@pytest.fixture(scope="module")
def hub():
    from huggingface_hub import constants

    with pytest.MonkeyPatch.context() as patch, dataset_hub(TOKEN, USER) as server:
        patch.setattr(constants, "HF_HUB_OFFLINE", False)  # the stand-in is on loopback
        yield server


def launch(loaded, store):
    from app import build_demo

    demo = build_demo(loaded, Limits(max_new_tokens=64), store, rng=random.Random(0))
    _, url, _ = demo.launch(
        prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True
    )
    return demo, url


@pytest.fixture(scope="module")
def store(hub, tmp_path_factory):
    from huggingface_hub import HfApi

    return Store(tmp_path_factory.mktemp("data"), REPO, api=HfApi(endpoint=hub.url, token=TOKEN), every=60)


@pytest.fixture(scope="module")
def url(loaded, store):
    demo, url = launch(loaded, store)
    yield url
    demo.close()


@pytest.fixture(scope="module")
def core(loaded):
    return Assistant(loaded, Limits(max_new_tokens=64))


def direct(core, message, history=(), model=None, **knob):
    """The same request through the core, run alone."""
    prepared = core.prepare(message, list(history), SYSTEM, core.settings(**GREEDY, **knob))
    return [a.text for a in core.chat(prepared, model)][-1]


def args(message, model="tuned-a"):
    return (message, model, SYSTEM, *GREEDY.values())


def battle(client, message, **kw):
    return client.predict(message, api_name="/battle", system=SYSTEM, **GREEDY, **kw)


def local_votes(store):
    return [json.loads(line) for line in store.files["votes"].read_text().splitlines()]


def test_the_header_names_what_is_served_and_never_a_server_path(url, loaded, tmp_path_factory):
    config = httpx.get(url.rstrip("/") + "/config", timeout=30).text
    assert "Serving the base SmolLM2-135M-Instruct and 2 adapters on it: tuned-a, tuned-b" in config
    assert "Phi-2 assistant" not in config
    assert str(tmp_path_factory.getbasetemp()) not in config and "/root/" not in config


def test_chat_streams_partials_one_by_one_and_uses_the_history(url, core):
    client = Client(url, verbose=False)
    job = client.submit(*args("What is the capital of France?"), api_name="/chat")
    partials = list(job)
    first = job.outputs()[-1]
    assert first == direct(core, "What is the capital of France?")
    assert len(partials) >= 3 and len(set(partials)) >= 3
    assert all(b.startswith(a) for a, b in zip(partials, partials[1:], strict=False))

    second = client.predict(*args("And of Spain?"), api_name="/chat")
    history = [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": first},
    ]
    assert second == direct(core, "And of Spain?", history)
    assert second != direct(core, "And of Spain?")  # so the history did reach the model
    other = Client(url, verbose=False).predict(*args("Say hello.", "tuned-b"), api_name="/chat")
    assert other == direct(core, "Say hello.", model="tuned-b") != direct(core, "Say hello.")


def test_stopping_a_chat_stops_the_generation_on_the_server(url, loaded):
    from assistant.generation import model_lock

    steps = []
    hook = loaded.model.get_output_embeddings().register_forward_hook(lambda *a: steps.append(1))
    try:
        job = Client(url, verbose=False).submit(
            "Write a long story about a dragon.", "tuned-a", SYSTEM, 0, 1, 64, 0, api_name="/chat"
        )
        deadline = time.time() + 60
        while len(steps) < 3 and time.time() < deadline:
            time.sleep(0.01)
        job.cancel()  # what the stop button sends
        deadline = time.time() + 30
        while not model_lock(loaded).acquire(timeout=0.1):  # released when the batch has ended
            assert time.time() < deadline, "generation did not stop"
        model_lock(loaded).release()
        assert len(steps) < 40  # of the 64 it would have made
    finally:
        hook.remove()


def test_a_chat_stopped_while_it_waits_in_the_queue_never_generates(url, loaded):
    from assistant.engine import batcher_for
    from assistant.generation import model_lock

    calls = []  # every forward the batcher runs on the model
    hook = loaded.model.register_forward_pre_hook(lambda *a: calls.append(1))
    batcher = batcher_for(loaded.model)
    try:
        with model_lock(loaded):  # the model is busy with someone else's batch: the chat waits for it
            job = Client(url, verbose=False).submit(
                "Write a long story about a dragon.", "tuned-a", SYSTEM, 0, 1, 64, 0, api_name="/chat"
            )
            deadline = time.time() + 60
            while batcher.waiting < 1:
                assert time.time() < deadline, "the chat never reached the queue"
                time.sleep(0.01)
            time.sleep(0.6)  # it has shown its place in the queue by now
            started = time.time()
            job.cancel()  # what the stop button sends
            while batcher.waiting:  # out of the queue while the batch ahead still runs
                assert time.time() - started < 5, "the stopped chat stayed in the queue"
                time.sleep(0.01)
            cancelled_in = time.time() - started
        time.sleep(1)  # the model is free now: a chat still queued would start here
    finally:
        hook.remove()
    assert calls == [] and cancelled_in < 5
    assert job.status().code.name in ("CANCELLED", "FINISHED")


def test_an_anonymous_battle_hides_the_names_until_the_vote_which_reaches_the_dataset_repo(
    url, core, store, hub
):
    client = Client(url, verbose=False)
    first = battle(client, "Name a fruit.")
    assert first["model_a"] is None and first["model_b"] is None and first["turn"] == 1
    second = battle(client, "And a vegetable?", battle_id=first["battle_id"])
    assert second["turn"] == 2 and second["model_a"] is None

    revealed = client.predict(first["battle_id"], "b", api_name="/vote")
    a, b = revealed["model_a"], revealed["model_b"]
    assert a != b and {a, b} <= set(core.models) and revealed["winner"] == "b"
    for side, model in (("a", a), ("b", b)):  # each side saw its own earlier answer
        history = [
            {"role": "user", "content": "Name a fruit."},
            {"role": "assistant", "content": first[f"answer_{side}"]},
        ]
        assert first[f"answer_{side}"] == direct(core, "Name a fruit.", model=model)
        assert second[f"answer_{side}"] == direct(core, "And a vegetable?", history, model)

    with pytest.raises(Exception, match="already has its vote"):
        client.predict(first["battle_id"], "a", api_name="/vote")
    with pytest.raises(Exception, match="already has its vote"):
        battle(client, "More?", battle_id=first["battle_id"])
    with pytest.raises(Exception, match="no battle to vote on"):
        client.predict("", "a", api_name="/vote")

    record = next(v for v in local_votes(store) if v["battle"] == first["battle_id"])
    assert (record["model_a"], record["model_b"], record["winner"], record["mode"]) == (
        a,
        b,
        "b",
        "anonymous",
    )
    assert [t["prompt"] for t in record["turns"]] == ["Name a fruit.", "And a vegetable?"]
    assert record["settings"] == {
        "max_new_tokens": 12,
        "temperature": 0.0,
        "top_p": 1.0,
        "seed": 0,
        "repetition_penalty": 1.0,
        "no_repeat_ngram_size": 0,
    }
    text = json.dumps(record)
    assert str(store.folder.parent) not in text and "/tmp/" not in text and "/root/" not in text

    store.push_now()
    pushed = [
        json.loads(line)
        for f in hub.repos[REPO].commits[-1]["files"].values()
        for line in f.decode().splitlines()
    ]
    assert record in pushed
    board = client.predict(api_name="/leaderboard")
    assert {r["model"] for r in board["models"]} >= {a, b} and board["votes"] >= 1


def test_named_battles_compare_and_unknown_models(url, core):
    client = Client(url, verbose=False)
    named = battle(client, "Say hello.", model_a="tuned-b", model_b="SmolLM2-135M-Instruct")
    assert (named["model_a"], named["model_b"]) == ("tuned-b", "SmolLM2-135M-Instruct")
    assert named["answer_a"] == direct(core, "Say hello.", model="tuned-b")
    assert named["answer_b"] == direct(core, "Say hello.", model="SmolLM2-135M-Instruct")
    base, tuned = client.predict("Say hello.", SYSTEM, *GREEDY.values(), api_name="/compare")
    assert (base, tuned) == (named["answer_b"], direct(core, "Say hello."))  # base vs the first adapter
    with pytest.raises(Exception, match="unknown model 'nope'"):
        battle(client, "Hi", model_a="nope", model_b="tuned-a")
    with pytest.raises(Exception, match="nope is not in the list of choices"):  # Gradio checks the dropdown
        client.predict(*args("Hi", "nope"), api_name="/chat")


def test_the_repetition_penalty_is_a_setting_off_by_default_that_reaches_the_engine(url, core):
    """The knob a skeptic tries first against loops, offered beside the other settings: 1 (off) unless
    asked; asked, each answer is the one the engine gives the same request with it."""
    client = Client(url, verbose=False)
    chat = client.view_api(return_format="dict")["named_endpoints"]["/chat"]["parameters"]
    assert next(p for p in chat if p["parameter_name"] == "repetition")["parameter_default"] == 1
    prompt = "List the numbers one, two, three, one, two, three, one, two, three."
    plain = client.predict(*args(prompt), api_name="/chat")
    assert plain == direct(core, prompt)
    # (a new client: the chat keeps a client's history, and this is a first turn too)
    penalised = Client(url, verbose=False).predict(*args(prompt), 1.8, api_name="/chat")
    assert penalised == direct(core, prompt, repetition_penalty=1.8) != plain
    with pytest.raises(Exception, match=r"the repetition penalty must be between 1 \(off\) and 2, not 3.0"):
        battle(client, "Hi", repetition_penalty=3)


def test_bad_requests_get_a_clear_message_and_the_app_keeps_serving(url, core):
    client = Client(url, verbose=False)
    with pytest.raises(Exception, match="empty"):
        client.predict(*args("   "), api_name="/chat")
    with pytest.raises(Exception, match="empty"):
        battle(client, "")
    with pytest.raises(Exception, match="too long"):
        client.predict("word " * 9000, SYSTEM, *GREEDY.values(), api_name="/compare")
    with pytest.raises(Exception, match="too long"):
        battle(client, "word " * 9000)
    with pytest.raises(Exception, match="maximum value 64"):  # Gradio checks the slider's range itself
        client.predict("hi", "tuned-a", SYSTEM, 0, 1, 500, 0, api_name="/chat")
    with pytest.raises(Exception, match="max new tokens must be between 1 and 64"):
        client.predict("hi", api_name="/battle", max_new_tokens=500)
    with pytest.raises(Exception, match="no such battle"):
        battle(client, "hi", battle_id="not-a-battle")
    with pytest.raises(Exception, match="a vote is one of a, b, tie, both_bad"):
        client.predict(battle(client, "Hi")["battle_id"], "left", api_name="/vote")
    assert client.predict(*args("Say hello."), api_name="/chat") == direct(core, "Say hello.")


def test_eight_clients_at_once_get_their_own_answers_and_every_vote_lands_once(url, core, store, hub):
    before = {v["id"] for v in local_votes(store)}
    results, errors = {}, []
    barrier = threading.Barrier(8)

    def chat(key, message, model):
        results[key] = Client(url, verbose=False).predict(*args(message, model), api_name="/chat")

    def fight(key, message, choice):
        client = Client(url, verbose=False)
        answers = battle(client, message)
        results[key] = (answers, client.predict(answers["battle_id"], choice, api_name="/vote"))

    jobs = [
        (chat, "c0", "What is the capital of France?", "tuned-a"),
        (chat, "c1", "Name a fruit.", "tuned-b"),
        (chat, "c2", "Say hello.", "SmolLM2-135M-Instruct"),
        (fight, "b0", "Name a colour.", "a"),
        (fight, "b1", "Name an animal.", "b"),
        (fight, "b2", "Name a country.", "tie"),
        (fight, "b3", "Name a planet.", "both_bad"),
        (chat, "c3", "Name a fruit.", "tuned-a"),
    ]

    def run(fn, *job):
        try:
            barrier.wait()
            fn(*job)
        except Exception as error:  # a failure in a thread must fail the test
            errors.append(repr(error))

    threads = [threading.Thread(target=run, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert errors == []
    for fn, key, message, extra in jobs:
        if fn is chat:
            assert results[key] == direct(core, message, model=extra), key
        else:
            answers, revealed = results[key]
            assert answers["answer_a"] == direct(core, message, model=revealed["model_a"]), key
            assert answers["answer_b"] == direct(core, message, model=revealed["model_b"]), key
    new = [v for v in local_votes(store) if v["id"] not in before]
    assert sorted(v["winner"] for v in new) == ["a", "b", "both_bad", "tie"]
    assert len({v["battle"] for v in new}) == 4
    store.push_now()
    pushed = [
        json.loads(line)
        for f in hub.repos[REPO].commits[-1]["files"].values()
        for line in f.decode().splitlines()
    ]
    ids = [v["id"] for v in pushed if v.get("type") == "vote"]
    assert len(ids) == len(set(ids)) and {v["id"] for v in new} <= set(ids)


def test_an_unreachable_feedback_repo_keeps_votes_local_says_so_and_keeps_serving(loaded, core, tmp_path):
    from huggingface_hub import HfApi

    store = Store(tmp_path / "data", REPO, api=HfApi(endpoint=f"http://127.0.0.1:{free_port()}", token=TOKEN))
    demo, url = launch(loaded, store)
    try:
        client = Client(url, verbose=False)
        answers = battle(client, "Say hello.")
        revealed = client.predict(answers["battle_id"], "a", api_name="/vote")
        assert revealed["stored_in"] == "this server" and "kept on this server only" in revealed["problem"]
        assert [v["battle"] for v in local_votes(store)] == [answers["battle_id"]]
        assert client.predict(*args("Say hello."), api_name="/chat") == direct(core, "Say hello.")
    finally:
        demo.close()


def test_an_expired_battle_says_so_and_a_refused_vote_logs_one_quiet_line(loaded, tmp_path, capfd, caplog):
    from app import build_demo

    demo = build_demo(loaded, Limits(max_new_tokens=64, battle_idle_seconds=1), Store(tmp_path / "data"))
    _, url, _ = demo.launch(
        prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True
    )
    try:
        client = Client(url, verbose=False)
        voted = battle(client, "Say hello.")
        client.predict(voted["battle_id"], "a", api_name="/vote")
        capfd.readouterr()
        with caplog.at_level("INFO", logger="app"), pytest.raises(Exception, match="already has its vote"):
            client.predict(voted["battle_id"], "b", api_name="/vote")
        assert "Traceback" not in "".join(capfd.readouterr())
        assert [r.getMessage() for r in caplog.records if r.name == "app"] == [
            "the vote refused: this battle already has its vote; start a new battle"
        ]

        idle = battle(client, "Say hello.")
        time.sleep(1.5)
        expired = "this battle expired after 1 second without a turn or a vote; start a new battle"
        with pytest.raises(Exception, match=expired):
            client.predict(idle["battle_id"], "a", api_name="/vote")
        with pytest.raises(Exception, match=expired):
            battle(client, "And?", battle_id=idle["battle_id"])
        assert battle(client, "Say hello.")["turn"] == 1  # a new battle goes on as usual
    finally:
        demo.close()
