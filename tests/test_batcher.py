"""Batched serving across people, on the real SmolLM2 with a random LoRA built here: requests share one
running batch (joining it at the next token), and each row answers as it would alone."""

import random
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import replace

import pytest
import torch
from gradio_client import Client

from assistant.engine import batcher_for, stream
from assistant.generation import BASE, GenerationSettings, generate_texts, model_lock
from assistant.models import load_model
from assistant.service import Assistant, Limits
from tests._helpers_precision import cpu_dtype
from tests._helpers_space import make_random_lora

GREEDY = GenerationSettings(max_new_tokens=16, temperature=0)
SAMPLED = GenerationSettings(max_new_tokens=12, temperature=0.9, top_p=0.95, seed=5)
PROMPTS = ["What is the capital of France?", "Name a fruit.", "Write a long story about a dragon."]


def conv(text):
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def loaded(smollm2_dir, tmp_path_factory):
    adapter = make_random_lora(smollm2_dir, tmp_path_factory.mktemp("lora") / "tuned")
    with cpu_dtype("fp32"):  # "each row answers as it would alone" is exact in fp32 only
        return load_model(str(smollm2_dir), str(adapter))


def alone(loaded, prompt, adapter, settings=GREEDY):
    """One request through the offline path, one row per generate call: the reference."""
    return generate_texts(loaded, [conv(prompt)], settings, adapter, batch_size=1)[0]


def final(loaded, prompt, adapter, settings=GREEDY, stop=None):
    return list(stream(loaded, [conv(prompt)], [adapter], settings, stop))[-1][0]


class Forwards(list):
    """The (rows, tokens) of every forward the batcher ran on the model: a prefill feeds the prompts
    of the requests taken together, a decoding step one token of every running row."""

    @property
    def prefills(self) -> list[int]:
        return sorted(rows for rows, tokens in self if tokens > 1)

    @property
    def widest_step(self) -> int:
        return max(rows for rows, tokens in self if tokens == 1)


@contextmanager
def forward_calls(loaded):
    calls = Forwards()
    hook = loaded.model.register_forward_pre_hook(
        lambda module, args, kw: calls.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    try:
        yield calls
    finally:
        hook.remove()


def together(loaded, jobs: dict) -> tuple[dict, dict]:
    """Runs each job in its own thread while the model is held, and lets the model go once every job
    waits in the batcher, so that the batcher takes them all before its first step."""
    results, errors = {}, {}

    def run(key, job):
        try:
            results[key] = job()
        except Exception as error:  # a failure in a thread must reach the test
            errors[key] = error

    threads = [threading.Thread(target=run, args=item) for item in jobs.items()]
    with model_lock(loaded):
        for t in threads:
            t.start()
        deadline = time.time() + 60
        while batcher_for(loaded.model).waiting < len(jobs):
            assert time.time() < deadline, "the requests never reached the batcher"
            time.sleep(0.01)
    for t in threads:
        t.join(timeout=300)
    return results, errors


def test_waiting_requests_run_as_one_batch_and_each_row_answers_as_it_would_alone(loaded):
    short = GenerationSettings(max_new_tokens=5, temperature=0)
    jobs = {
        "chat": lambda: final(loaded, PROMPTS[0], "default"),
        "base": lambda: final(loaded, PROMPTS[1], BASE),
        "short": lambda: final(loaded, PROMPTS[2], "default", short),
        "compare": lambda: list(stream(loaded, [conv(PROMPTS[1])] * 2, [BASE, "default"], GREEDY))[-1],
    }
    with forward_calls(loaded) as calls:
        results, errors = together(loaded, jobs)
    assert not errors
    assert calls.prefills == [5]  # prefilled in one forward, one row per person (two for the comparison)
    assert calls.widest_step == 5  # then decoded together
    assert results["chat"].text == alone(loaded, PROMPTS[0], "default").text
    assert results["base"].text == alone(loaded, PROMPTS[1], BASE).text
    assert results["base"].text != alone(loaded, PROMPTS[1], "default").text  # routing is visible
    assert [a.text for a in results["compare"]] == [
        alone(loaded, PROMPTS[1], BASE).text,
        alone(loaded, PROMPTS[1], "default").text,
    ]
    assert results["short"] == alone(loaded, PROMPTS[2], "default", short)
    assert results["short"].tokens == 5 and not results["short"].ended  # its own max_new_tokens


def test_each_row_stops_on_its_own_end_of_turn_and_its_own_limit(loaded):
    capital, story = [
        lambda p=p, n=n: final(loaded, p, BASE, GenerationSettings(max_new_tokens=n, temperature=0))
        for p, n in ((PROMPTS[0], 40), (PROMPTS[2], 24))
    ]
    results, errors = together(loaded, {"capital": capital, "story": story})
    assert not errors
    assert results["capital"].ended and results["capital"].tokens < 24  # ended by the model, early
    assert not results["story"].ended and results["story"].tokens == 24  # its limit, not the other's 40
    assert results["capital"] == alone(loaded, PROMPTS[0], BASE, GenerationSettings(40, temperature=0))
    assert results["story"] == alone(loaded, PROMPTS[2], BASE, GenerationSettings(24, temperature=0))


def test_stopping_one_row_leaves_the_others_running(loaded):
    stop, seen = threading.Event(), []
    settings = GenerationSettings(max_new_tokens=24, temperature=0)

    def stopped():
        for (answer,) in stream(loaded, [conv(PROMPTS[2])], ["default"], settings, stop):
            seen.append(answer)
            if not answer.queued:  # its place in the queue comes first: stop after the first token
                stop.set()  # what the stop button does
        return seen[-1]

    jobs = {"stopped": stopped, "other": lambda: final(loaded, PROMPTS[2], BASE, settings)}
    with forward_calls(loaded) as calls:
        results, errors = together(loaded, jobs)
    assert not errors and calls.prefills == [2]  # (it may stop before the first step together)
    assert results["stopped"].tokens < 5 and results["stopped"].done
    assert results["other"] == alone(loaded, PROMPTS[2], BASE, settings)  # all 24 tokens, unchanged


def test_a_request_joins_the_running_batch_at_the_next_token_and_each_answers_as_it_would_alone(loaded):
    long = GenerationSettings(max_new_tokens=40, temperature=0)
    events, results = [], {}  # (who, tokens so far, done) in the order the readers saw them

    def read(key, prompt, adapter, settings):
        for (answer,) in stream(loaded, [conv(prompt)], [adapter], settings):
            if answer.tokens:
                events.append((key, answer.tokens, answer.done))
            results[key] = answer

    with forward_calls(loaded) as calls:
        first = threading.Thread(target=read, args=("first", PROMPTS[2], "default", long))
        first.start()
        deadline = time.time() + 120
        while not any(key == "first" and tokens >= 3 for key, tokens, _ in events):
            assert time.time() < deadline and first.is_alive(), "the first request never got going"
            time.sleep(0.01)
        read("second", PROMPTS[0], BASE, SAMPLED)  # sampled, through the base: its own row in every way
        first.join(timeout=300)
    seen = [key for key, _, _ in events]
    first_done = next(i for i, (key, _, done) in enumerate(events) if key == "first" and done)
    assert seen.index("second") < first_done  # its first token came while the first was mid-answer
    assert [key for key, _, done in events if done] == ["second", "first"]  # and it ended before it
    assert calls.prefills == [1, 1] and calls.widest_step == 2  # joined the running batch
    joined = next(i for i, (rows, tokens) in enumerate(calls) if i and tokens > 1)
    assert joined >= 3 and calls[joined + 1] == (2, 1)  # after the first's own steps, at the next one
    assert results["first"] == alone(loaded, PROMPTS[2], "default", long)  # 40 tokens, never ended
    assert results["first"].tokens == 40 and not results["first"].ended
    assert results["second"] == final(loaded, PROMPTS[0], BASE, SAMPLED)  # the same request alone


@pytest.mark.precision
def test_in_the_served_precision_a_seed_replays_alone_and_company_moves_a_row_within_its_rounding(
    smollm2_dir,
):
    """What docs/space.md promises in each precision, on the model in the precision the rule picks here
    (bf16 on a CPU that has it natively; CI runs this again under the other one). Alone, a seed replays
    its answer in either. In company, a row's first logits match its logits alone to 1e-3 in fp32, with
    the same greedy answer; in bf16 they move by no more than bf16 itself moves them from fp32's."""
    served = load_model(str(smollm2_dir))
    assert final(served, PROMPTS[0], BASE, SAMPLED) == final(served, PROMPTS[0], BASE, SAMPLED)

    def first_logits(model, rows):
        logits = []
        hook = model.model.register_forward_hook(lambda m, a, out: logits.append(out.logits[:, -1].float()))
        try:
            answers = list(stream(model, [conv(p) for p in rows], [BASE] * len(rows), GREEDY))[-1]
        finally:
            hook.remove()
        return logits[0][0], answers[0].text  # the first row's, from the prefill

    alone_logits, alone_text = first_logits(served, PROMPTS[:1])
    shared_logits, shared_text = first_logits(served, PROMPTS[:1] + PROMPTS[2:])  # a longer row beside it
    moved = (shared_logits - alone_logits).abs().max().item()
    if served.model.dtype == torch.float32:
        assert moved < 1e-3 and shared_text == alone_text
    else:
        with cpu_dtype("fp32"):
            reference, _ = first_logits(load_model(str(smollm2_dir)), PROMPTS[:1])
        rounding = (alone_logits - reference).abs().max().item()
        assert moved <= rounding, (moved, rounding)


def test_a_queued_request_shows_its_place_and_a_stop_takes_it_out_before_it_runs(loaded):
    stop = threading.Event()
    with forward_calls(loaded) as calls:
        with model_lock(loaded):  # someone else's batch holds the model
            answers = stream(loaded, [conv(PROMPTS[0])], ["default"], GREEDY, stop)
            (first,) = next(answers)  # no token yet: its place in the queue
            assert (first.queued, first.text, first.done) == (1, "", False)
            stop.set()  # the Stop button, while it waits
            (last,) = list(answers)[-1]  # ends without waiting for the model
            assert last.done and last.tokens == 0 and batcher_for(loaded.model).waiting == 0
        time.sleep(0.5)  # the model is free: a request still queued would run now
    assert calls == []


def test_sampled_rows_keep_their_own_settings_and_seed_in_a_shared_batch(loaded):
    hotter = GenerationSettings(max_new_tokens=12, temperature=1.3, top_p=1.0, seed=6)
    by_itself = {
        "sampled": final(loaded, PROMPTS[1], "default", SAMPLED),
        "hotter": final(loaded, PROMPTS[1], "default", hotter),
        "greedy": final(loaded, PROMPTS[1], "default", GREEDY),
    }
    assert len({a.text for a in by_itself.values()}) == 3  # the settings and seeds matter
    jobs = {
        key: (lambda s=s: final(loaded, PROMPTS[1], "default", s))
        for key, s in (("sampled", SAMPLED), ("hotter", hotter), ("greedy", GREEDY))
    }
    with forward_calls(loaded) as calls:
        results, errors = together(loaded, jobs)
    assert not errors and calls.prefills == [3] and calls.widest_step == 3
    assert results == by_itself
    assert final(loaded, PROMPTS[1], "default", SAMPLED) == by_itself["sampled"]  # reproducible


@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.95])
@pytest.mark.parametrize("spread", [1.0, 4.0])
def test_the_nucleus_is_the_one_transformers_keeps(top_p, spread):
    import torch
    from transformers import TopPLogitsWarper

    from assistant.engine.sampling import nucleus

    torch.manual_seed(0)
    logits = torch.randn(1, 49152) * spread  # spread 4: a peaked distribution, 1: a flat one
    probs = torch.softmax(logits, dim=-1)[0]
    top, ids = probs.topk(64)
    ours = nucleus(probs, top, ids, top_p).tolist()
    theirs = TopPLogitsWarper(top_p)(None, logits.clone()).isfinite()[0].nonzero().flatten().tolist()
    assert ours == theirs
    assert 0 < len(ours) < 49152


@pytest.mark.parametrize("top_p", [0.5, 0.95, 1.0])
@pytest.mark.parametrize("spread", [1.0, 4.0])
def test_a_draw_picks_the_token_multinomial_picks_and_leaves_the_generator_where_it_does(top_p, spread):
    import torch

    from assistant.engine.sampling import draw, nucleus

    tokens = set()
    for seed in range(20):
        torch.manual_seed(seed)
        probs = torch.softmax(torch.randn(49152) * spread, dim=-1)
        kept = nucleus(probs, *probs.topk(64), top_p)
        zeroed = torch.zeros_like(probs).index_copy_(0, kept, probs[kept])
        ours, theirs = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        picks = [
            (draw(probs, kept, ours), int(torch.multinomial(zeroed, 1, generator=theirs))) for _ in range(3)
        ]
        assert all(a == b for a, b in picks), picks
        assert torch.equal(ours.get_state(), theirs.get_state())
        tokens.update(pick for pick, _ in picks)
    assert len(tokens) > 20  # draws, not a constant


def test_the_served_model_decodes_several_rows_weights_first_with_the_same_answers(loaded):
    import torch
    import torch.nn.functional as F

    from assistant.cpu_linear import WeightsFirstLinear, weights_first

    model = loaded.model
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    first = [m for m in layers if type(m) is WeightsFirstLinear]
    # Every base layer and the vocabulary projection; LoRA's rank-sized A and B keep PyTorch's path.
    assert len(first) == 30 * 7 + 1 and model.get_output_embeddings() in first
    assert all(min(m.in_features, m.out_features) < 64 for m in layers if m not in first)

    layer = first[0]
    torch.manual_seed(0)
    for shape in [(1, 1), (2, 7)]:  # one row, and a prefill: exactly PyTorch's own product
        x = torch.randn(*shape, layer.in_features)
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    x = torch.randn(8, 1, layer.in_features)  # a step of 8 rows: the same products, summed in another order
    # (fp32 sums of 576 products, about 1 in size: rounding moves them by up to a few 1e-5)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-4, atol=1e-4)

    rows = [conv(p) for p in PROMPTS]
    answers = {}
    for on in (False, True):
        weights_first(model, on)
        answers[on] = [a.text for a in list(stream(loaded, rows, ["default", BASE, "default"], SAMPLED))[-1]]
    assert answers[True] == answers[False] and all(answers[True])


@pytest.mark.parametrize("mode", ["inference_mode", "no_grad"])
def test_the_cache_grows_in_place_and_holds_what_concatenation_would(mode):
    import torch
    from transformers.cache_utils import DynamicLayer

    from assistant.engine.cache import SpareLayer

    torch.manual_seed(0)
    ours, theirs = SpareLayer(), DynamicLayer()
    buffers = set()
    with getattr(torch, mode)():  # the batcher decodes under inference_mode, where views keep no _base
        prompt = torch.randn(3, 2, 5, 4)  # [rows, heads, columns, dim]
        ours.update(prompt, prompt), theirs.update(prompt, prompt)
        for step in range(8):
            if step == 6:  # a row leaves and the first two columns go, as Running.keep does
                for layer in (ours, theirs):
                    layer.batch_select_indices(torch.tensor([0, 2]))
                    layer.keys, layer.values = layer.keys[..., 2:, :], layer.values[..., 2:, :]
            token = torch.randn(len(theirs.keys), 2, 1, 4)
            keys, values = ours.update(token, token + 1)
            expected = theirs.update(token, token + 1)
            assert torch.equal(keys, expected[0]) and torch.equal(values, expected[1])
            buffers.add(keys.untyped_storage().data_ptr())
    # The prompt's buffer had room to spare for every step until a row left (a copy, as in transformers),
    # and the copy had room for the rest.
    assert len(buffers) == 2


def test_a_bad_request_fails_alone_and_the_batch_it_was_in_still_answers(loaded):
    jobs = {
        "good": lambda: final(loaded, PROMPTS[0], "default"),
        "bad": lambda: list(stream(loaded, [[{"role": "user"}]], [BASE], GREEDY)),  # no content
        "other": lambda: final(loaded, PROMPTS[1], BASE),
    }
    with forward_calls(loaded) as calls:
        results, errors = together(loaded, jobs)
    assert set(errors) == {"bad"} and "content" in str(errors["bad"])
    # Together they failed at encoding the bad one, before any forward; then each by itself.
    assert calls.prefills == [1, 1] and calls.widest_step == 2
    assert results["good"].text == alone(loaded, PROMPTS[0], "default").text
    assert results["other"].text == alone(loaded, PROMPTS[1], BASE).text
    assert final(loaded, PROMPTS[1], BASE).text  # and the model keeps serving


# --- through the app ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


COMPARE = dict(system="", temperature=0, top_p=1, max_new_tokens=12, seed=0)


def test_the_app_lets_requests_reach_the_batcher_together_and_says_busy_beyond_its_queue(loaded, tmp_path):
    from app import build_demo
    from assistant.store import Store

    limits = Limits(max_new_tokens=32, max_waiting=4)
    demo = build_demo(loaded, limits, Store(tmp_path), rng=random.Random(0))
    _, url, _ = demo.launch(
        prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True
    )
    core = Assistant(loaded, limits)
    try:
        clients = [Client(url, verbose=False) for _ in range(5)]
        with forward_calls(loaded) as calls:
            with model_lock(loaded):
                jobs = [
                    c.submit(p, api_name="/compare", **COMPARE)
                    for c, p in zip(clients[:3], PROMPTS, strict=True)
                ]
                deadline = time.time() + 60
                while batcher_for(loaded.model).waiting < 3:  # Gradio let all three through at once
                    assert time.time() < deadline, "Gradio held the requests back"
                    time.sleep(0.01)
                with pytest.raises(Exception, match="max new tokens"):  # a bad request, refused alone
                    clients[3].predict(PROMPTS[0], api_name="/compare", **{**COMPARE, "max_new_tokens": 0})
                jobs.append(clients[3].submit(PROMPTS[0], api_name="/compare", **COMPARE))
                while batcher_for(loaded.model).waiting < 4:
                    assert time.time() < deadline, "the fourth request never reached the batcher"
                    time.sleep(0.01)
                with pytest.raises(Exception, match="busy"):
                    clients[4].predict(PROMPTS[1], api_name="/compare", **COMPARE)
            answers = [job.result(timeout=300) for job in jobs]
        assert calls.prefills == [8] and calls.widest_step == 8  # four comparisons, one batch
        for prompt, answer in zip([*PROMPTS, PROMPTS[0]], answers, strict=True):
            prepared = core.prepare(prompt, [], "", core.settings(0, 1, 12, 0))
            assert tuple(answer) == tuple(a.text for a in list(core.compare(prepared))[-1])
        assert clients[4].predict(PROMPTS[1], api_name="/compare", **COMPARE)[0]  # served afterwards
    finally:
        demo.close()


def test_the_decoding_knobs_spare_the_end_of_turn_tokens_the_prompt_holds():
    """The repetition penalty and the n-gram ban, transformers' rules over the row's own tokens, prompt
    included, except the end-of-turn tokens: the chat template puts them in every prompt, and a penalty
    or a ban there keeps the row from ending."""
    import torch
    from transformers import NoRepeatNGramLogitsProcessor

    from assistant.engine.sampling import Row, pick, repeated

    stop, seen, unseen = 2, 5, 7
    ids = [1, stop, seen, 3, stop, 4]
    scores = torch.zeros(10)
    scores[[stop, seen, unseen]] = torch.tensor([4.0, 4.5, 3.0])
    greedy = GenerationSettings(temperature=0)
    assert pick(scores.clone(), Row(None, 0, greedy, list(ids)), [stop]) == seen  # no knob: the most likely
    penalised = scores.clone()
    row = Row(None, 0, replace(greedy, repetition_penalty=2.0), list(ids))
    assert pick(penalised, row, [stop]) == stop  # 4.5 / 2 for the seen token; the stop token kept
    assert penalised[stop] == 4.0 and penalised[seen] == 2.25 and penalised[unseen] == 3.0
    # the n-gram ban bans what transformers' processor bans, end-of-turn tokens aside
    history = [1, 5, 7, 1, 5, 9, 1, 5]  # "1 5" was followed by 7 and by 9
    theirs = NoRepeatNGramLogitsProcessor(3)(torch.tensor([history]), torch.zeros(1, 10))
    assert repeated(history, 3) == {7, 9} == set(torch.nonzero(theirs[0] == -float("inf")).ravel().tolist())
    row = Row(None, 0, replace(greedy, no_repeat_ngram_size=2), [4, stop, 4, seen, 4])  # "4" before 2 and 5
    assert pick(scores.clone(), row, [stop]) == stop  # 5 banned, the stop token spared
