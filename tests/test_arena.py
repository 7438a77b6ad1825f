"""Arena battles and serving choices on the real SmolLM2 with a random LoRA: regenerate, limits, votes under
concurrency, long histories, what is served and why, and the GPU precision plan (capabilities simulated)."""

import random
import socket
import threading
from dataclasses import replace

import pytest
import torch

from assistant import models, precision
from assistant.arena import Arena
from assistant.generation import GenerationSettings, RequestError
from assistant.models import load_model
from assistant.service import Assistant, Limits
from assistant.store import Store
from tests._helpers_precision import cpu_dtype
from tests._helpers_space import dataset_hub, make_random_lora

SAMPLED = GenerationSettings(max_new_tokens=10, temperature=0.9, top_p=0.95, seed=5)


@pytest.fixture(scope="module")
def loaded(smollm2_dir, tmp_path_factory):
    adapter = make_random_lora(smollm2_dir, tmp_path_factory.mktemp("x") / "tuned")
    with cpu_dtype("fp32"):  # a replay of a seeded battle is exact in fp32 only
        return load_model(str(smollm2_dir), str(adapter))


@pytest.fixture
def arena(loaded, tmp_path):
    return Arena(Assistant(loaded, Limits(max_new_tokens=32, max_turns=2)), Store(tmp_path), random.Random(1))


def test_each_side_samples_with_its_own_seed_kept_with_the_turn_and_regenerate_takes_the_next(arena):
    battle = arena.start()
    assert {battle.model_a, battle.model_b} == set(arena.assistant.models) and battle.mode == "anonymous"
    *_, (a, b) = arena.ask(battle.id, "Tell me a story.", None, SAMPLED)
    assert battle.turns[0]["seeds"] == [5, 6]

    def alone(model, seed):
        prepared = arena.assistant.prepare("Tell me a story.", [], None, replace(SAMPLED, seed=seed))
        return list(arena.assistant.chat(prepared, model))[-1].text

    # Each side answers as its model would alone with its own seed: a replay of the stored battle.
    assert (a.text, b.text) == (alone(battle.model_a, 5), alone(battle.model_b, 6))
    assert b.text != alone(battle.model_b, 5)  # the seed of side A would have given B another answer
    *_, (a2, b2) = arena.regenerate(battle.id)
    assert len(battle.turns) == 1 and battle.turns[0]["a"] == a2.text and battle.turns[0]["seeds"] == [7, 8]
    assert (a2.text, b2.text) == (alone(battle.model_a, 7), alone(battle.model_b, 8)) != (a.text, b.text)
    unseeded = arena.start()
    list(arena.ask(unseeded.id, "Hi.", None, replace(SAMPLED, seed=None)))
    seed_a, seed_b = unseeded.turns[0]["seeds"]  # drawn at random, and kept
    assert isinstance(seed_a, int) and seed_a != seed_b


def test_a_battle_takes_its_turn_limit_and_one_vote_however_many_clicks(arena):
    battle = arena.start()
    with pytest.raises(RequestError, match="wait for both answers"):
        arena.vote(battle.id, "a")
    with pytest.raises(RequestError, match="nothing to regenerate"):
        list(arena.regenerate(battle.id))
    for prompt in ("Hi.", "And?"):
        list(arena.ask(battle.id, prompt, None, SAMPLED))
    with pytest.raises(RequestError, match="2 turns, the most it takes"):
        list(arena.ask(battle.id, "More?", None, SAMPLED))
    outcomes = []

    def click(choice):
        try:
            outcomes.append(arena.vote(battle.id, choice)["winner"])
        except RequestError as error:
            outcomes.append(str(error))

    threads = [threading.Thread(target=click, args=(c,)) for c in ("a", "b", "tie", "both_bad") * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(arena.store.votes()) == 1
    assert sum("already has its vote" in o for o in outcomes) == 11
    with pytest.raises(RequestError, match="pick two different models"):
        arena.start("tuned", "tuned")


def test_a_50_turn_history_from_the_browser_is_trimmed_and_answered(loaded):
    assistant = Assistant(loaded, Limits(max_input_tokens=300))
    history = []
    for n in range(50):
        history += [
            {
                "role": "user",
                "content": [{"type": "text", "text": f"Question {n} about cats?"}],
                "metadata": None,
            },
            {
                "role": "assistant",
                "content": [{"type": "text", "text": f"Answer {n}: cats purr."}],
                "options": None,
            },
        ]
    prepared = assistant.prepare("And dogs?", history, settings=GenerationSettings(8, temperature=0))
    assert prepared.dropped > 50 and "oldest" in prepared.notice
    assert (
        prepared.messages[-1]["content"] == "And dogs?"
        and prepared.messages[-2]["content"] == "Answer 49: cats purr."
    )
    assert [a.text for a in assistant.chat(prepared)][-1]
    with pytest.raises(RequestError, match="list of"):
        assistant.prepare("hi", history="not a list")


@pytest.mark.precision
def test_an_offline_start_serves_every_demo_adapter_and_says_why(monkeypatch):
    for name in ("ASSISTANT_BASE_MODEL", "ASSISTANT_ADAPTERS", "ASSISTANT_ADAPTER"):
        monkeypatch.delenv(name, raising=False)
    loaded = models.load_for_serving()
    assert "HF_HUB_OFFLINE is set" in loaded.reason
    assert (
        set(loaded.adapters)
        == {p.rsplit("/", 1)[-1] for p in models.demo_adapters()}
        >= {"smollm2-grpo-demo"}
    )
    text = loaded.describe()
    assert f"Serving the base HuggingFaceTB/SmolLM2-135M-Instruct and {len(loaded.adapters)} adapter" in text
    served = models.DTYPE_NAMES[models.compute_dtype("cpu")]  # bf16 on a CPU that has it natively
    assert str(models.PROJECT_ROOT) not in text and f"cpu in {served}," in text


def test_the_hub_tells_a_missing_adapter_repo_from_an_unreachable_hub(monkeypatch, tmp_path, caplog):
    from huggingface_hub import constants

    monkeypatch.setattr(models, "_HUB_REACHABLE", None)
    assert models.hub_repo_status("tester/adapter") == "offline"  # HF_HUB_OFFLINE=1 in the tests
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with dataset_hub("tok", "tester") as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        assert models.hub_repo_status("tester/adapter") == "missing"
        (tmp_path / "adapter_config.json").write_text("{}")
        hub.add_repo("tester/adapter", tmp_path)
        assert models.hub_repo_status("tester/adapter") == "found"
        assert models.hub_repo_status("tester/adapter", revision="v9") == "missing"  # no such revision
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed.getsockname()[1]}")
        with caplog.at_level("INFO", logger="assistant.models"):
            assert models.hub_repo_status("tester/adapter") == "unreachable"  # nothing listens there
    # An offline start is a normal way to run: its line says so plainly, with no errno that reads as an error.
    assert [
        r.getMessage() for r in caplog.records if r.name == "assistant.models" and r.levelname == "INFO"
    ] == ["the Hub cannot be reached from here: serving what is on this machine"]
    assert models._HUB_REACHABLE is False  # later look-ups ask the cache only: no retry storm
    reasons = {models.DEMO_REASONS[s].format(repo="r") for s in ("offline", "unreachable", "missing")}
    assert len(reasons) == 3


@pytest.mark.parametrize("bf16", [True, False])
def test_gpu_precision_is_bf16_only_where_the_gpu_has_it(monkeypatch, bf16, tiny_phi_dir):
    """The plan for a GPU with or without bf16 (the capability simulated: no GPU here), loaded for real on
    the CPU: a 4-bit NF4 base computing in bf16, else in fp32 for Phi (fp16 for others, a T4)."""
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    half = torch.bfloat16 if bf16 else torch.float16
    quantized, _ = models.precision_plan("cuda", quantize=True, model_type="phi")
    assert quantized.pop("device_map") == {"": "cuda"}
    model = AutoModelForCausalLM.from_pretrained(tiny_phi_dir, device_map={"": "cpu"}, **quantized)
    layer = model.model.layers[0].self_attn.q_proj
    # bitsandbytes runs on CPU; Phi-2 overflows in fp16, so a GPU without bf16 computes it in fp32
    assert type(layer).__name__ == "Linear4bit" and layer.compute_dtype == (half if bf16 else torch.float32)
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()
    plain, _ = models.precision_plan("cuda", quantize=False, model_type="phi")
    model = AutoModelForCausalLM.from_pretrained(tiny_phi_dir, **plain)
    assert model.dtype == (torch.bfloat16 if bf16 else torch.float32)  # Phi-2 overflows in fp16
    assert models.precision_plan("cuda", quantize=False, model_type="llama")[0]["dtype"] == half
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)  # so the CPU's answer is fixed
    assert models.precision_plan("cpu", quantize=False)[0] == {"dtype": torch.float32}


def test_a_cpu_serves_in_bf16_only_where_it_has_bf16_and_the_header_says_which(monkeypatch, tiny_phi_dir):
    """The CPU's flag simulated both ways (this machine's real one decides nothing here); the model is
    loaded for real, and the header names its precision. bf16 is never run here: emulated, it is slow."""
    monkeypatch.delenv("ASSISTANT_CPU_DTYPE", raising=False)
    for native, dtype, label in ((True, torch.bfloat16, "bf16"), (False, torch.float32, "fp32")):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda native=native: native)
        assert models.precision_plan("cpu", quantize=False) == ({"dtype": dtype}, label)
        loaded = models.load_model(str(tiny_phi_dir), device="cpu", quantize=False)
        assert loaded.model.dtype == dtype and f"on cpu in {label}," in loaded.describe()
    monkeypatch.setenv("ASSISTANT_CPU_DTYPE", "bf16")  # the override, on a CPU without the flag
    assert models.precision_plan("cpu", quantize=False) == ({"dtype": torch.bfloat16}, "bf16")


def test_an_idle_battle_expires_with_a_message_and_memory_stays_bounded(loaded, tmp_path, monkeypatch):
    import time

    from assistant import arena as arena_module
    from assistant.arena import BattleGone

    arena = Arena(Assistant(loaded, Limits(max_new_tokens=8, battle_idle_seconds=1)), Store(tmp_path))
    battle = arena.start()
    list(arena.ask(battle.id, "Hi.", None, SAMPLED))
    kept = arena.start()
    time.sleep(0.6)
    arena.get(kept.id)  # used: its idle time starts again
    time.sleep(0.6)
    for act in (
        lambda: arena.vote(battle.id, "a"),
        lambda: list(arena.ask(battle.id, "And?", None, SAMPLED)),
        lambda: arena.get(battle.id),
    ):
        with pytest.raises(
            BattleGone, match="^this battle expired after 1 second without a turn or a vote; start"
        ):
            act()
    assert arena.get(kept.id) is kept and battle.id not in arena._battles
    with pytest.raises(RequestError, match="no such battle") as unknown:
        arena.get("never-was")
    assert not isinstance(unknown.value, BattleGone)

    monkeypatch.setattr(arena_module, "MAX_BATTLES", 3)
    first, *rest = [arena.start() for _ in range(5)]
    assert len(arena._battles) == 3 and len(arena._gone) <= 3
    with pytest.raises(BattleGone, match="closed to make room"):
        arena.get(first.id)


def test_a_reloaded_page_gets_its_battle_back_with_the_buttons_that_fit_or_hears_it_was_lost(arena):
    from assistant.leaderboard import LiveLeaderboard
    from space.arena import handlers

    on = handlers(arena, LiveLeaderboard.of(arena.store, resamples=10))
    battle = arena.start()
    list(arena.ask(battle.id, "Hi.", None, SAMPLED))
    battle_id, pane_a, _, status, send, _, stop, again, *votes = on.restore(battle.id)
    assert battle_id == battle.id and pane_a["value"][1]["content"].startswith(battle.turns[0]["a"])
    assert "names are hidden" in status and pane_a["label"] == "Model A"
    assert send["interactive"] and again["interactive"] and not stop["interactive"]
    assert all(v["interactive"] for v in votes)
    arena.vote(battle.id, "a")
    _, pane_a, _, status, send, _, stop, again, *votes = on.restore(battle.id)
    assert pane_a["label"] == f"Model A: {battle.model_a}" and "A was" in status  # the names, once voted
    assert not any(b["interactive"] for b in (send, stop, again, *votes))  # only New battle now
    lost_id, *_, status, _, _, _, _, _, _, _, _ = on.restore("a-battle-from-before-a-restart")
    assert lost_id is None and status.startswith("The battle you had open is lost")
