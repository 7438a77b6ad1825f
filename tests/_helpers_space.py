"""Helpers for the app tests: a small real adapter on the packaged SmolLM2, built in the test."""

from __future__ import annotations

from pathlib import Path


def make_random_lora(base_dir: Path, out_dir: Path, seed: int = 0) -> Path:
    """A LoRA on SmolLM2's q/v projections with random non-zero B weights, so that the tuned model's
    answers differ from the base model's while staying readable. Saved with the base's tokenizer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out_dir)
    return out_dir


def dataset_hub(token: str, user: str):
    """The loopback Hub stand-in, also serving dataset repos (the feedback repo) at the Hub's dataset
    paths, which it otherwise routes as model repos."""
    from tests.hub_server import HubStandIn

    class DatasetHub(HubStandIn):
        def _route(self, h, method, path, query, body, caller):
            if path.startswith("/api/datasets/"):
                path = "/api/models/" + path[len("/api/datasets/") :]
            elif path.startswith("/datasets/") and "/resolve/" in path:
                path = path[len("/datasets") :]
            if path == "/api/repos/create" and method == "POST":
                import json

                payload = json.loads(body)
                if payload.get("type") == "dataset":
                    body = json.dumps({**payload, "type": "model"}).encode()
            return super()._route(h, method, path, query, body, caller)

    return DatasetHub(token=token, user=user)
