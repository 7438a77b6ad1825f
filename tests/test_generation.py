"""The generation core on the real SmolLM2 with a small random LoRA built here."""

import threading
import time

import pytest

from assistant.engine import stream
from assistant.generation import (
    BASE,
    Busy,
    GenerationSettings,
    RequestError,
    RowStreamer,
    eos_ids,
    generate_side_by_side,
    generate_texts,
    model_lock,
    turn_stops,
)
from assistant.models import load_model
from assistant.service import Assistant, Limits
from tests._helpers_precision import cpu_dtype
from tests._helpers_space import make_random_lora

GREEDY = GenerationSettings(max_new_tokens=12, temperature=0)
PROMPTS = ["What is the capital of France?", "Name a fruit.", "Say hello."]


def conv(text):
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def adapter_dir(smollm2_dir, tmp_path_factory):
    return make_random_lora(smollm2_dir, tmp_path_factory.mktemp("lora"))


@pytest.fixture(scope="module")
def loaded(smollm2_dir, adapter_dir):
    with cpu_dtype("fp32"):  # batched answers are checked against each alone: exact in fp32 only
        return load_model(str(smollm2_dir), str(adapter_dir))


@pytest.fixture(scope="module")
def base_only(smollm2_dir):
    with cpu_dtype("fp32"):
        return load_model(str(smollm2_dir))


@pytest.fixture(scope="module")
def alone(loaded, base_only):
    """Each prompt run alone: the reference for everything batched or concurrent. The base's answers come
    from the base loaded without PEFT, so routing a row to the base in a mixed batch is checked against
    the model itself, not against the same PEFT model with its adapter turned off."""

    def answers(model, adapter):
        return [
            a.text for a in generate_texts(model, [conv(p) for p in PROMPTS], GREEDY, adapter, batch_size=1)
        ]

    return {BASE: answers(base_only, BASE), "default": answers(loaded, "default")}


def test_side_by_side_is_one_generate_call_matching_each_model_alone(loaded, alone, monkeypatch):
    calls = []
    real_generate = loaded.model.generate
    monkeypatch.setattr(
        loaded.model, "generate", lambda **kw: calls.append(kw["adapter_names"]) or real_generate(**kw)
    )
    pairs = generate_side_by_side(loaded, [conv(p) for p in PROMPTS], GREEDY)
    assert calls == [[BASE, "default"] * len(PROMPTS)]
    assert [b.text for b, _ in pairs] == alone[BASE]
    assert [t.text for _, t in pairs] == alone["default"]
    assert alone[BASE] != alone["default"]  # the adapter changes the output, so routing is visible
    assert all(b.adapter == BASE and t.adapter == "default" for b, t in pairs)


def test_answers_say_whether_they_ended_and_how_many_tokens_they_took(loaded):
    short, long = generate_texts(
        loaded,
        [conv("What is the capital of France?"), conv("Write a long story about a dragon.")],
        GenerationSettings(max_new_tokens=20, temperature=0),
        BASE,
    )
    assert short.ended and 0 < short.tokens < 20
    assert not long.ended and long.tokens == 20
    assert len(loaded.tokenizer(long.text)["input_ids"]) in range(17, 23)


def test_side_by_side_without_an_adapter_is_refused_clearly(base_only):
    with pytest.raises(RequestError, match="has no adapter"):
        generate_side_by_side(base_only, [conv("hi")], GREEDY)
    with pytest.raises(RequestError, match="has no adapter"):
        generate_texts(base_only, [conv("hi")], GREEDY, adapter="default")
    assert generate_texts(base_only, [conv("Say hello.")], GREEDY)[0].text  # the base alone still answers


def test_streaming_yields_growing_partials_and_ends_with_the_full_answer(loaded, alone):
    rows = stream(loaded, [conv(PROMPTS[0])], ["default"], GREEDY)
    snapshots = [r[0] for r in rows if not r[0].queued]  # not its place in the queue (a busy machine)
    texts = [s.text for s in snapshots]
    assert len(snapshots) >= 4
    assert all(
        a.startswith(b) for a, b in zip(texts[1:], texts, strict=False)
    )  # each partial extends the last
    assert len(set(texts[:-1])) == len(texts) - 1  # one by one (the final one may only add done=True)
    assert snapshots[-1].done and not any(s.done for s in snapshots[:-1])
    assert texts[-1] == alone["default"][0]


def test_a_slow_reader_gets_the_newest_snapshot_and_always_the_final_one(loaded, alone):
    rows = stream(loaded, [conv(PROMPTS[1])] * 2, [BASE, "default"], GREEDY)
    first = next(r for r in rows if not r[0].queued)  # the first token, after any wait in the queue
    with model_lock(loaded):  # the batch has ended: everything after the first is queued
        pass
    rest = list(rows)
    assert len(rest) == 1 and all(a.done for a in rest[0])  # the backlog collapses into the final answer
    assert [a.text for a in rest[0]] == [alone[BASE][1], alone["default"][1]]
    assert first[0].tokens == 1


def test_stopping_a_stream_stops_generation_itself(loaded):
    steps = []
    hook = loaded.model.get_output_embeddings().register_forward_hook(lambda *a: steps.append(1))
    try:
        settings = GenerationSettings(max_new_tokens=300, min_new_tokens=300, temperature=0)
        answers = stream(loaded, [conv("Count to a thousand.")], [BASE], settings)
        next(answers), next(answers)
        answers.close()  # what Gradio does when the user presses stop
        with model_lock(loaded):  # released when the batch has ended
            pass
        assert len(steps) < 10
    finally:
        hook.remove()


def test_answers_stop_on_the_templates_end_of_turn_token_ids_not_on_role_words(loaded, tiny_phi_dir):
    from transformers import AutoTokenizer

    from assistant.prompt import ensure_chat_template

    tokenizer = loaded.tokenizer  # SmolLM2's ChatML template
    im_start, im_end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert turn_stops(tokenizer) == ({im_start, im_end}, ())
    assert {im_start, im_end} <= eos_ids(loaded)
    phi = ensure_chat_template(AutoTokenizer.from_pretrained(tiny_phi_dir))  # Instruct:/Output: template
    assert turn_stops(phi) == ({phi.eos_token_id}, ("Instruct:",))

    streamer = RowStreamer(tokenizer, [BASE, BASE], eos_ids(loaded))
    streamer.put(None)  # the prompt
    legit = tokenizer("Say:\nUser: hello", add_special_tokens=False)["input_ids"]  # a role word, in an answer
    runs_on = tokenizer("Hi.", add_special_tokens=False)["input_ids"] + [im_start]
    runs_on += tokenizer("user", add_special_tokens=False)["input_ids"] * len(legit)
    import torch

    for a, b in zip(legit, runs_on, strict=False):
        streamer.put(torch.tensor([a, b]))
    kept, stopped = streamer.snapshot()
    assert kept.text == "Say:\nUser: hello" and not kept.cut and not kept.ended
    assert stopped.text == "Hi." and stopped.ended  # stopped at <|im_start|>, which decoding would hide


def test_streamer_cuts_an_answer_that_runs_into_a_plain_text_user_turn(loaded):
    tokenizer = loaded.tokenizer
    streamer = RowStreamer(tokenizer, [BASE, BASE], {tokenizer.eos_token_id}, cut_texts=("Instruct:",))
    streamer.put(None)  # the prompt
    first = tokenizer("Paris is the capital.\nInstruct: and Spain?", add_special_tokens=False)["input_ids"]
    second = tokenizer("Hello", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] * 20
    import torch

    for a, b in zip(first, second, strict=False):
        streamer.put(torch.tensor([a, b]))
    cut, ended = streamer.snapshot()
    assert cut.text == "Paris is the capital." and cut.cut and not cut.ended and cut.done
    assert ended.text == "Hello" and ended.ended and not ended.cut
    assert streamer.done == [True, True]  # the stopping criterion now finishes both rows


def test_tokenizer_calls_from_many_threads_give_what_each_gives_alone(loaded):
    """Two threads pad batches while two others count prompts (as Assistant.prepare does outside the
    generation lock); before the tokenizer lock this raised padding errors within seconds."""
    from assistant.generation import encode

    assistant = Assistant(loaded, Limits())
    batches = [[conv("Hi")], [conv("A much longer question about the history of Rome " * 3), conv("Yo")]]
    expected = [encode(loaded, b)["input_ids"].tolist() for b in batches]
    history = [{"role": "user", "content": "tell me about cats"}, {"role": "assistant", "content": "cats"}]
    expected_prepared = assistant.prepare("and dogs?", history * 5).messages
    errors, deadline = [], time.time() + 4

    def pad(batch, want):
        while time.time() < deadline:
            got = encode(loaded, batch)["input_ids"].tolist()
            if got != want:
                errors.append("padded differently")

    def count():
        while time.time() < deadline:
            if assistant.prepare("and dogs?", history * 5).messages != expected_prepared:
                errors.append("prepared differently")

    def guarded(fn, *args):
        try:
            fn(*args)
        except Exception as error:  # a failure in a thread must fail the test
            errors.append(repr(error))

    threads = [
        threading.Thread(target=guarded, args=(pad, b, e)) for b, e in zip(batches, expected, strict=True)
    ]
    threads += [threading.Thread(target=guarded, args=(count,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []


def test_several_adapters_on_one_base_answer_side_by_side_in_one_batch(smollm2_dir, adapter_dir, tmp_path):
    second = make_random_lora(smollm2_dir, tmp_path / "second-lora", seed=1)
    with cpu_dtype("fp32"):  # side by side is checked against each alone: exact in fp32 only
        loaded = load_model(str(smollm2_dir), [str(adapter_dir), str(second)])
    assert loaded.adapters == {adapter_dir.name: "default", "second-lora": "second-lora"}
    assert str(tmp_path) not in loaded.describe() and "2 adapters" in loaded.describe()
    assistant = Assistant(loaded, Limits())
    assert assistant.models == ["SmolLM2-135M-Instruct", adapter_dir.name, "second-lora"]
    prepared = assistant.prepare(PROMPTS[1], settings=GREEDY)
    *_, answers = assistant.side_by_side([prepared] * 3, assistant.models)
    alone = [[a.text for a in assistant.chat(prepared, m)][-1] for m in assistant.models]
    assert [a.text for a in answers] == alone
    assert len(set(alone)) == 3  # each adapter changes the answer, so the routing is visible
    with pytest.raises(RequestError, match="unknown model 'nope'"):
        list(assistant.chat(prepared, "nope"))


def test_concurrent_chats_and_comparisons_each_get_their_own_answer(loaded, alone):
    assistant = Assistant(loaded, Limits())
    results, errors = {}, []
    barrier = threading.Barrier(5)

    def run(key, fn):
        try:
            barrier.wait()
            results[key] = fn()
        except Exception as error:  # a failure in a thread must fail the test
            errors.append(error)

    def chat(prompt):
        return [a.text for a in assistant.chat(assistant.prepare(prompt, settings=GREEDY))][-1]

    def compare(prompt):
        base, tuned = list(assistant.compare(assistant.prepare(prompt, settings=GREEDY)))[-1]
        return base.text, tuned.text

    jobs = {
        ("chat", 0): lambda: chat(PROMPTS[0]),
        ("chat", 1): lambda: chat(PROMPTS[1]),
        ("compare", 2): lambda: compare(PROMPTS[2]),
        ("compare", 0): lambda: compare(PROMPTS[0]),
        ("base", 1): lambda: generate_texts(loaded, [conv(PROMPTS[1])], GREEDY, BASE)[0].text,
    }
    threads = [threading.Thread(target=run, args=(key, fn)) for key, fn in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert results[("chat", 0)] == alone["default"][0]
    assert results[("chat", 1)] == alone["default"][1]
    assert results[("compare", 2)] == (alone[BASE][2], alone["default"][2])
    assert results[("compare", 0)] == (alone[BASE][0], alone["default"][0])
    assert results[("base", 1)] == alone[BASE][1]


def test_each_request_sets_its_own_adapter_state_whatever_was_left_behind(loaded, alone):
    loaded.model.base_model.disable_adapter_layers()  # e.g. a caller that forgot to restore it
    try:
        assert generate_texts(loaded, [conv(PROMPTS[1])], GREEDY, "default")[0].text == alone["default"][1]
    finally:
        loaded.model.base_model.enable_adapter_layers()
    assert generate_texts(loaded, [conv(PROMPTS[1])], GREEDY, BASE)[0].text == alone[BASE][1]
    assert generate_texts(loaded, [conv(PROMPTS[1])], GREEDY, "default")[0].text == alone["default"][1]


def test_requests_are_checked_against_the_limits(loaded):
    assistant = Assistant(loaded, Limits(max_message_chars=100, max_input_tokens=60, max_new_tokens=32))
    with pytest.raises(RequestError, match="empty"):
        assistant.prepare("   ")
    with pytest.raises(RequestError, match="too long .*characters"):
        assistant.prepare("x" * 101)
    with pytest.raises(RequestError, match="too long"):
        assistant.prepare("word " * 19, system="be brief " * 30, settings=GREEDY)
    with pytest.raises(RequestError, match="max new tokens"):
        assistant.settings(max_new_tokens=33)
    with pytest.raises(RequestError, match="temperature"):
        assistant.settings(temperature=5)
    history = [
        {"role": "user", "content": "tell me about cats " * 3},
        {"role": "assistant", "content": "cats are nice " * 3},
    ] * 3
    prepared = assistant.prepare("and dogs?", history, settings=assistant.settings(max_new_tokens=8))
    assert prepared.dropped > 0 and "oldest" in prepared.notice
    assert prepared.messages[-1]["content"] == "and dogs?"


def test_a_full_queue_is_refused_and_the_model_keeps_serving(loaded):
    assistant = Assistant(loaded, Limits(max_waiting=1))
    prepared = assistant.prepare("Say hello.", settings=GREEDY)
    lock = model_lock(loaded)
    lock.acquire()  # a long request holds the model
    try:
        waiting = assistant.chat(prepared)
        first = threading.Thread(target=lambda: list(waiting))
        first.start()
        deadline = time.time() + 10
        from assistant.engine import batcher_for

        while batcher_for(loaded.model).waiting < 1 and time.time() < deadline:
            time.sleep(0.01)
        with pytest.raises(Busy, match="busy"):
            list(assistant.chat(prepared))
    finally:
        lock.release()
    first.join(timeout=60)
    assert [a.text for a in assistant.chat(prepared)][-1]  # served once the queue drains


def test_an_error_in_one_request_reaches_its_caller_and_the_next_request_works(loaded):
    with pytest.raises(RequestError, match="unknown adapter"):
        list(stream(loaded, [conv("hi")], ["nope"], GREEDY))
    with pytest.raises(ValueError):  # generate itself refuses this
        list(stream(loaded, [conv("hi")], [BASE], GenerationSettings(max_new_tokens=-3, temperature=0)))
    assert list(stream(loaded, [conv("Say hello.")], [BASE], GREEDY))[-1][0].text
