"""Failure isolation in the serving engine (assistant.engine), on the real SmolLM2 with a random LoRA,
in fp32 so that a bystander's answer can be checked against the same request alone: a fault injected at
each stage fails only the requests it touched, each with one line, nobody waits forever, no token is
handed out twice, and the engine goes on serving."""

import threading
import time

import pytest

from assistant.engine import batcher_for, stream, worker
from assistant.generation import GenerationFailed, GenerationSettings, model_lock
from assistant.models import load_model
from benchmarks.engine_faults import STAGES, VICTIM_TOKENS, injected
from tests._helpers_precision import cpu_dtype
from tests._helpers_space import make_random_lora

BYSTANDER = GenerationSettings(max_new_tokens=24, temperature=0)
LONG = GenerationSettings(max_new_tokens=40, temperature=0)  # still running when the victim arrives
VICTIM = GenerationSettings(max_new_tokens=VICTIM_TOKENS, temperature=0.9, top_p=0.95, seed=3)
PROMPTS = ["What is the capital of France?", "Write a long story about a dragon.", "Name a fruit."]


def conv(text):
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def loaded(smollm2_dir, tmp_path_factory):
    adapter = make_random_lora(smollm2_dir, tmp_path_factory.mktemp("lora") / "tuned")
    with cpu_dtype("fp32"):  # a bystander's answer is checked against the same request alone
        return load_model(str(smollm2_dir), str(adapter))


def answer(loaded, prompt, settings, adapter="default"):
    return list(stream(loaded, [conv(prompt)], [adapter], settings))[-1][0]


@pytest.fixture(scope="module")
def alone(loaded):
    return {p: answer(loaded, p, BYSTANDER).text for p in PROMPTS}


def run_all(loaded, jobs: dict, together=True) -> tuple[dict, dict]:
    """Each job in its own thread; with ``together``, the model is held until every job waits, so the
    engine takes them all at once. Returns the answers and the errors, by job."""
    results, errors = {}, {}

    def run(key, job):
        try:
            results[key] = job()
        except Exception as error:  # a failure in a thread must reach the test
            errors[key] = error

    threads = [threading.Thread(target=run, args=item) for item in jobs.items()]
    if together:
        with model_lock(loaded):
            for t in threads:
                t.start()
            deadline = time.time() + 60
            while batcher_for(loaded.model).waiting < len(jobs):
                assert time.time() < deadline, "the requests never reached the engine"
                time.sleep(0.01)
    else:
        for t in threads:
            t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a request waited forever"
    return results, errors


def check_serving(loaded, alone):
    """Three requests at once after the fault: every one answers as it would alone, and the worker is
    gone once they are done (it would hold the model otherwise)."""
    results, errors = run_all(loaded, {p: (lambda p=p: answer(loaded, p, BYSTANDER)) for p in PROMPTS})
    assert errors == {} and {p: a.text for p, a in results.items()} == alone
    idle(loaded)


def idle(loaded):
    deadline = time.time() + 10
    while batcher_for(loaded.model).working:
        assert time.time() < deadline, "the engine's worker never went idle"
        time.sleep(0.01)


def one_line(error, stage):
    assert isinstance(error, GenerationFailed), repr(error)
    text = str(error)
    assert "\n" not in text and text.startswith(f"generation failed at the {stage} (RuntimeError: injected")


@pytest.mark.parametrize(
    "stage, arrival",
    [(stage, "together") for stage in STAGES if stage != "join"] + [(stage, "joining") for stage in STAGES],
)
def test_a_fault_at_each_stage_fails_only_the_requests_it_touched_and_the_engine_serves_on(
    loaded, alone, stage, arrival
):
    """The victim arrives with the bystander (one prefill, retried one by one if it fails), or while the
    bystander runs (its own prefill, then a join)."""
    settings = BYSTANDER if arrival == "together" else LONG
    expected = alone[PROMPTS[1]] if arrival == "together" else answer(loaded, PROMPTS[1], LONG).text
    seen = []

    def bystander():
        for (snapshot,) in stream(loaded, [conv(PROMPTS[1])], ["default"], settings):
            seen.append(snapshot.tokens)
        return snapshot

    def late_victim():
        deadline = time.time() + 60
        while not seen or seen[-1] < 3:  # the bystander runs: the victim joins it
            assert time.time() < deadline
            time.sleep(0.01)
        return answer(loaded, PROMPTS[2], VICTIM)

    jobs = {"bystander": bystander}
    jobs["victim"] = (lambda: answer(loaded, PROMPTS[2], VICTIM)) if arrival == "together" else late_victim
    with injected(stage):
        results, errors = run_all(loaded, jobs, together=arrival == "together")
    one_line(errors["victim"], stage)
    if STAGES[stage][3]:  # a decoding step, and the batch's hand-out, are the whole batch's
        one_line(errors["bystander"], stage)
    else:  # its tokens, each handed out once: the same answer as alone
        assert "bystander" not in errors and results["bystander"].text == expected
    check_serving(loaded, alone)


def test_a_fault_outside_every_stage_fails_what_the_worker_held_and_the_next_request_starts_afresh(
    loaded, alone, monkeypatch
):
    faults = []

    def once(loaded):
        if not faults:
            faults.append(1)
            raise RuntimeError("injected fault in the worker")
        return real(loaded)

    real = worker.eos_ids
    idle(loaded)  # eos_ids is read as a worker starts: the next request must start one
    monkeypatch.setattr(worker, "eos_ids", once)
    with pytest.raises(GenerationFailed, match="generation failed at the worker"):
        answer(loaded, PROMPTS[0], BYSTANDER)
    check_serving(loaded, alone)
