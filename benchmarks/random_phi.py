"""Random Phi models with Phi-2's layer names, for running the Phi-2 path without the Hub: the benchmarks'
Phi-2-sized and small ones, and the tests' tiny one."""

from __future__ import annotations

from pathlib import Path


def save_random_phi(path: Path, tokenizer_dir: str | Path, dtype=None, **sizes) -> Path:
    """A randomly initialised (seed 0) ``PhiForCausalLM`` of ``sizes`` (PhiConfig keys) saved at ``path``
    with SmolLM2's tokenizer from ``tokenizer_dir``, its chat template removed: Phi-2 ships none, so ours
    (assistant.prompt) gets used. ``dtype``: built directly in it (a Phi-2-sized fp32 copy needs 11 GB)."""
    import torch
    from transformers import AutoTokenizer, PhiConfig, PhiForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.chat_template = None
    config = PhiConfig(
        **{"vocab_size": len(tokenizer), "partial_rotary_factor": 0.4, **sizes},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = PhiForCausalLM._from_config(config, dtype=dtype) if dtype else PhiForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (Path(path) / "chat_template.jinja").unlink(missing_ok=True)
    return Path(path)
