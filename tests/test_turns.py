"""GRPO completions end where an answer ends (train.turns), on a tiny Phi-2-shaped model built to run on
past its answer into a new ``Instruct:`` turn, as the base Phi-2 does."""

import pytest
import torch

from tests._helpers_train import tiny_overrides, write_pairs_file
from train.train import build_trainer, parse_args
from train.turns import turn_end

# After the prompt's "Output:" the model writes " Paris.\nInstruct:" and then again " Paris.\n...".
ANSWER, RUN_ON = " Paris.", "\nInstruct:"


def run_on_model(tiny_phi_dir, tokenizer):
    """The tiny Phi model with its attention and MLP outputs zeroed, so each next token depends on the
    current one only, and its embeddings and head set to one chain: ":" -> " Paris" -> "." -> "\\n" ->
    "Inst" -> "ruct" -> ":" -> ... (a logit gap of ~64: sampling at temperature 1 follows it)."""
    from transformers import PhiForCausalLM

    model = PhiForCausalLM.from_pretrained(tiny_phi_dir)
    chain = tokenizer(":" + ANSWER + RUN_ON, add_special_tokens=False)["input_ids"]
    assert len(set(chain[:-1])) == len(chain) - 1 and chain[-1] == chain[0]  # a loop back to ":"
    with torch.no_grad():
        for layer in model.model.layers:
            for out in (layer.self_attn.dense, layer.mlp.fc2):
                out.weight.zero_()
                out.bias.zero_()
        hidden = model.config.hidden_size
        basis = torch.linalg.qr(torch.randn(hidden, hidden))[0].T  # orthonormal rows
        basis = basis - basis.mean(dim=1, keepdim=True)  # zero mean: the final LayerNorm only rescales
        basis = basis / basis.norm(dim=1, keepdim=True) * hidden**0.5
        model.lm_head.weight.zero_()
        model.lm_head.bias.zero_()
        for i, (token, following) in enumerate(zip(chain[:-1], chain[1:], strict=True)):
            model.model.embed_tokens.weight[token] = basis[i]
            model.lm_head.weight[following] = basis[i]
    return model, chain


@pytest.mark.parametrize("turn_stop", [True, False], ids=["stops", "plain-trl"])
def test_grpo_completion_reward_and_loss_mask_stop_at_the_turn_boundary(
    tmp_path, tiny_phi_dir, turn_stop, monkeypatch
):
    """The Phi-2 recipe's GRPO trainer: the completion ends with the marker's last token, the reward sees
    exactly that text and the loss mask (TRL's completion lengths) covers exactly those tokens, and
    generation stops there instead of running to max_completion_length. With TRL's own trainer (the
    behaviour before train.turns) every completion runs to the limit."""
    import trl

    import train.turns

    if not turn_stop:  # what TRL does alone: only EOS ends a completion
        monkeypatch.setattr(train.turns, "TurnStopGRPOTrainer", trl.GRPOTrainer)
    seen = []

    def no_user_turn(completions, completion_ids, **kwargs):
        seen.extend(zip(map(train.rewards.completion_text, completions), completion_ids, strict=True))
        return train.rewards.no_user_turn(completions)

    import train.rewards

    monkeypatch.setitem(train.rewards.REWARDS, "no_user_turn", no_user_turn)
    pairs = write_pairs_file(tmp_path / "pairs")
    argv = [
        "--config",
        "recipes/phi2-grpo-qlora.yaml",
        *tiny_overrides(tiny_phi_dir, pairs, tmp_path / "out", max_steps=1),
        *["--num_generations", "2", "--per_device_train_batch_size", "2", "--max_completion_length", "24"],
        *["--reward_funcs", "no_user_turn", "not_empty", "--gradient_checkpointing", "false"],
        *["--preference_anchor", "0"],  # TRL's own trainer below, with no anchor's trainer around it
    ]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_phi_dir)
    model, chain = run_on_model(tiny_phi_dir, tokenizer)
    steps = []  # one forward pass per generated token (KV cache), plus the loss's passes
    model.model.embed_tokens.register_forward_hook(lambda *args: steps.append(1))
    trainer = build_trainer(parse_args(argv), model=model).trainer
    trainer.train()
    logged = {k: v for entry in trainer.state.log_history for k, v in entry.items()}

    assert len(seen) == 2
    if turn_stop:
        for text, ids in seen:
            assert text == ANSWER + RUN_ON and ids == chain[1:]  # the marker's tokens are the last ones
        assert logged["completions/max_length"] == logged["completions/mean_length"] == len(chain) - 1
        assert logged["rewards/no_user_turn/mean"] == 0.0  # the run-on is seen and penalised
        assert logged["completions/turn_end_ratio"] == 1.0
        assert len(steps) < 12  # generation stopped after 6 tokens, not at 24
    else:
        assert all(len(ids) == 24 and text.count("Instruct:") > 1 for text, ids in seen)
        assert logged["completions/mean_length"] == 24 and len(steps) > 24


def test_turn_end_keeps_up_to_the_token_that_completes_the_marker(tiny_phi_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_phi_dir)
    ids = tokenizer(ANSWER + RUN_ON + " more", add_special_tokens=False)["input_ids"]
    end = turn_end(ids, tokenizer, ("Instruct:",))
    assert tokenizer.decode(ids[:end]) == ANSWER + RUN_ON
    assert turn_end(ids, tokenizer, ()) is None  # a template with only special-token stops
    assert turn_end(ids[:3], tokenizer, ("Instruct:",)) is None  # no marker: all kept
