"""Score answers with a sequence-classification reward model: GRPO's ``reward_model`` reward and the
evaluation's judge are both this.

A model is a Hub id or a folder of a full model, an adapter folder written by
``python -m train`` with ``method: reward`` (a LoRA and a score head over a base it names), or a
frozen encoder with a linear score head (``train.encoder_judge``: a ``judge_head.json`` folder). A tokenizer
with a chat template gets the whole conversation through it, as the reward models of this project
were trained; one without (Open Assistant's DeBERTa reward models) gets the last question and the
answer as a text pair, the way those models were trained. That is why GRPO's ``reward_model`` goes
through here rather than GRPOTrainer's own loading of a reward-model id, which scores one concatenated
text with a full ``AutoModelForSequenceClassification`` (no text pairs, no LoRA reward, no encoder head).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch


def load_dtype(path: str, device: str) -> torch.dtype:
    """The dtype to load a scoring model at ``path`` in on ``device``: the one precision rule
    (``assistant.models.compute_dtype``), never the checkpoint's own (Phi-2's is fp16, which overflows
    its attention), and on a GPU half the memory of fp32 beside the policy."""
    from transformers import AutoConfig

    from assistant.models import compute_dtype

    model_type = getattr(AutoConfig.from_pretrained(path), "model_type", None)
    return compute_dtype(torch.device(device).type, model_type)


PROGRESS_FROM = 64  # rows: more than a GRPO step's group of answers


class Scorer:
    def __init__(
        self, name_or_path: str, device: str | None = None, batch_size: int = 8, max_length: int = 1024
    ):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from assistant.models import resolve_base

        self.name = name_or_path
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size, self.max_length = batch_size, max_length
        config = Path(name_or_path) / "adapter_config.json"
        if (Path(name_or_path) / "judge_head.json").is_file():  # a frozen encoder and a score head
            from train.encoder_judge import EncoderJudge

            model = EncoderJudge(name_or_path)
            tokenizer = model.tokenizer
        elif config.is_file():  # a reward LoRA from python -m train: its base, then the adapter on it
            from peft import PeftModel

            base = resolve_base(json.loads(config.read_text())["base_model_name_or_path"])
            model = AutoModelForSequenceClassification.from_pretrained(
                base, num_labels=1, dtype=load_dtype(base, self.device)
            )
            model = PeftModel.from_pretrained(model, name_or_path)
            tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        else:
            path = resolve_base(name_or_path)
            model = AutoModelForSequenceClassification.from_pretrained(
                path, dtype=load_dtype(path, self.device)
            )
            tokenizer = AutoTokenizer.from_pretrained(path)
        self.max_length = min(max_length, tokenizer.model_max_length)  # an encoder's positions end
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "right"  # the score head finds the last token by the pad id
        if hasattr(model, "config"):
            model.config.pad_token_id = tokenizer.pad_token_id
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer

    def _batch(self, conversations: list[list[dict]], answers: list[str]):
        if self.tokenizer.chat_template:
            texts = [
                self.tokenizer.apply_chat_template(c + [{"role": "assistant", "content": a}], tokenize=False)
                for c, a in zip(conversations, answers, strict=True)
            ]
            return self.tokenizer(
                texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt",
                add_special_tokens=False,
            )  # fmt: skip
        questions = [
            next((m["content"] for m in reversed(c) if m["role"] == "user"), "") for c in conversations
        ]
        return self.tokenizer(
            questions, answers, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )

    @torch.inference_mode()
    def score(self, conversations: list[list[dict]], answers: list[str]) -> list[float]:
        """One score per (conversation so far, answer): the model's first logit. Rows are batched by
        length, so a batch pads to its own longest row rather than to the longest of all. A progress bar
        for an evaluation's hundreds of rows, none for a reward's few at each GRPO step."""
        from tqdm.auto import tqdm

        order = sorted(
            range(len(answers)),
            key=lambda i: sum(len(m["content"]) for m in conversations[i]) + len(answers[i]),
        )
        scores = [0.0] * len(answers)
        name = f"judging ({Path(self.name).name})"
        with tqdm(total=len(order), desc=name, unit=" answer", disable=len(order) <= PROGRESS_FROM) as bar:
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                batch = self._batch([conversations[i] for i in chunk], [answers[i] for i in chunk])
                logits = self.model(**batch.to(self.device)).logits[:, 0].float().cpu().tolist()
                for i, value in zip(chunk, logits, strict=True):
                    scores[i] = value
                bar.update(len(chunk))
        return scores


class MeanOfJudges:
    """A judge made of judges: a folder whose ``judges.json`` names its members (folders relative to it)
    and a scale for each, the sd of its score margins on held-out HH-RLHF pairs. Its score is the mean
    of the members' scores, each in units of its scale, so no member outweighs another by its range.
    ``python -m study.judge_skill`` writes one when the combination is the judge it chooses."""

    def __init__(self, folder: str | Path, device: str | None = None):
        spec = json.loads((Path(folder) / "judges.json").read_text())
        self.name = str(folder)
        self.members = [
            (Scorer(str((Path(folder) / m["path"]).resolve()), device), float(m["scale"]))
            for m in spec["members"]
        ]
        self.device = self.members[0][0].device

    def score(self, conversations: list[list[dict]], answers: list[str]) -> list[float]:
        each = [[s / scale for s in judge.score(conversations, answers)] for judge, scale in self.members]
        return [sum(scores) / len(scores) for scores in zip(*each, strict=True)]


def load_judge(name_or_path: str, device: str | None = None) -> Scorer | MeanOfJudges:
    """A judge folder or Hub id: a mean of judges where the folder has ``judges.json``, else one model."""
    if (Path(name_or_path) / "judges.json").is_file():
        return MeanOfJudges(name_or_path, device)
    return Scorer(name_or_path, device)


@functools.cache
def scorer(name_or_path: str, device: str | None = None) -> Scorer:
    """One loaded copy per process (GRPO calls its reward every step)."""
    return Scorer(name_or_path, device)
