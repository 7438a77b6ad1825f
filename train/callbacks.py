"""Write every logging step's metrics (TRL's logs) to OUTPUT_DIR/metrics.jsonl, one JSON object a line.

The file follows the Trainer's own ``log_history``: on a resume the Trainer restores it from the
checkpoint's ``trainer_state.json``, so the file is rewritten from it and holds exactly the steps the
resumed run continues from. Whatever the killed run logged after that checkpoint (a line cut by the
kill included) goes, and every step appears once.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from transformers import TrainerCallback


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics.jsonl; a last line without its newline was cut by a kill and is left out."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text().split("\n")[:-1]  # the piece after the last newline is never a whole line
    return [json.loads(line) for line in lines if line.strip()]


def _clean(value):
    # JSON has no NaN: a metric TRL could not compute (e.g. std of one sample) is written as null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _record(step: int, logs: dict) -> str:
    return (
        json.dumps({"step": step, "epoch": logs.get("epoch"), **{k: _clean(v) for k, v in logs.items()}})
        + "\n"
    )


class MetricsJsonlCallback(TrainerCallback):
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.write_history(state)

    def write_history(self, state) -> None:
        """The file as the Trainer's log_history has it (empty on a fresh start), written whole."""
        from assistant.atomic import write_text

        write_text(self.path, "".join(_record(r["step"], r) for r in state.log_history))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        # Appending one line at a time: a kill loses at most the line being written.
        with open(self.path, "a") as f:
            f.write(_record(state.global_step, logs))


class GoldCheckCallback(TrainerCallback):
    """The over-optimisation curve of a GRPO run (Gao et al. 2022): every ``every`` steps, and before the
    first, the policy answers the same dev prompts (one sampled answer each, the same seed every time),
    and the run's metrics get the training reward of those answers (``gold/reward``, as the recipe weighs
    it, and ``gold/rewards/<name>``) beside the judge's mean score (``gold/judge``), its share of prompts
    where the answer beats the warm start's answer (``gold/judge_win``), the share of answers that ended
    (``gold/ended``) and their mean length (``gold/length``, tokens). A reward that keeps rising while the
    judge falls is being hacked; the step to keep is picked on this curve, on dev, never on the test.
    """

    def __init__(self, pairs: list[dict], judge, every: int, start_file, prompts: int = 16, seed: int = 0):
        first = {}  # the first pair of each prompt, in file order
        for pair in pairs:
            first.setdefault(pair.get("prompt_id") or str(pair["prompt"]), pair)
        self.candidates, self.prompts = list(first.values()), prompts
        self.pairs, self.conversations = [], []
        self.judge, self.every, self.seed = judge, every, seed
        self.start_file = Path(start_file)  # the warm start's judge scores: a resumed run compares with them
        self.trainer = None

    def bind(self, trainer, max_prompt_tokens: int | None = None) -> None:
        """Take the first ``prompts`` dev prompts that fit in ``max_prompt_tokens``, as training prompts do."""
        from train.data import prompt_messages

        self.trainer, tokenizer = trainer, trainer.processing_class
        for pair in self.candidates:
            conversation = prompt_messages(pair["prompt"])
            text = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
            if (
                max_prompt_tokens
                and len(tokenizer(text, add_special_tokens=False)["input_ids"]) > max_prompt_tokens
            ):
                continue
            self.pairs.append(pair)
            self.conversations.append(conversation)
            if len(self.pairs) == self.prompts:
                break

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:
            self.check(state)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            self.check(state)

    def answers(self) -> tuple[list[str], list[list[int]], list[bool]]:
        """One sampled answer per prompt, as GRPO samples them; the ids end at the first EOS, as TRL's."""
        import torch

        trainer = self.trainer
        model, tokenizer = trainer.accelerator.unwrap_model(trainer.model), trainer.processing_class
        eos = model.generation_config.eos_token_id
        eos = {tokenizer.eos_token_id, *([eos] if isinstance(eos, int) else eos or [])}
        texts = [
            tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
            for c in self.conversations
        ]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        was_training = model.training
        model.eval()
        with torch.random.fork_rng(), torch.no_grad():  # the trainer's own random stream is left as it was
            torch.manual_seed(self.seed)
            out = model.generate(
                **batch, max_new_tokens=trainer.max_completion_length, do_sample=True,
                temperature=trainer.temperature, top_p=1.0, top_k=0, pad_token_id=tokenizer.pad_token_id,
            )  # fmt: skip
        model.train(was_training)
        ids, ended = [], []
        for row in out[:, batch["input_ids"].shape[1] :].tolist():
            end = next((i for i, t in enumerate(row) if t in eos), None)
            ids.append(row if end is None else row[: end + 1])
            ended.append(end is not None)
        return [tokenizer.decode(i, skip_special_tokens=True) for i in ids], ids, ended

    def check(self, state) -> dict:
        import numpy as np
        from transformers import Trainer

        from train.rewards import answer

        trainer = self.trainer
        texts, ids, ended = self.answers()
        columns = {k: [p[k] for p in self.pairs] for k in ("chosen", "rejected")}
        completions = [[{"role": "assistant", "content": t}] for t in texts]
        record, total = {}, np.zeros(len(texts))
        for name, func, weight in zip(
            trainer.reward_func_names, trainer.reward_funcs, trainer.reward_weights.tolist(), strict=True
        ):
            values = func(
                prompts=self.conversations,
                completions=completions,
                completion_ids=ids,
                trainer_state=state,
                **columns,
            )
            values = np.array([np.nan if v is None else v for v in values], dtype=float)
            record[f"gold/rewards/{name}"] = float(np.nanmean(values))
            total += weight * np.nan_to_num(values)
        scores = np.array(self.judge.score(self.conversations, [answer(t) for t in texts]))
        if state.global_step == 0 or not self.start_file.exists():
            self.start_file.parent.mkdir(parents=True, exist_ok=True)
            self.start_file.write_text(
                json.dumps({"step": state.global_step, "judge": scores.tolist()}) + "\n"
            )
        start = np.array(json.loads(self.start_file.read_text())["judge"])
        record |= {
            "gold/reward": float(total.mean()),
            "gold/judge": float(scores.mean()),
            "gold/judge_win": float(np.mean(scores > start)) if state.global_step else None,
            "gold/ended": float(np.mean(ended)),
            "gold/length": float(np.mean([len(i) for i in ids])),
            "gold/prompts": len(texts),
        }
        # The Trainer's own log (not GRPO's, which would take this step's training metrics with it): the
        # record lands in log_history, so checkpoints keep it, and in metrics.jsonl through on_log. on_log
        # clears should_log, which the step's own log (right after on_step_end) still needs.
        should_log = trainer.control.should_log
        Trainer.log(trainer, {k: v for k, v in record.items() if v is not None})
        trainer.control.should_log = should_log
        return record


def gold_check(train_args, output_dir: Path):
    """The GRPO run's gold check (train.callbacks.GoldCheckCallback), or None when the recipe has none."""
    if train_args.method != "grpo" or not train_args.gold_check_every:
        return None
    from train.data import load_pairs
    from train.scorer import scorer

    pairs = load_pairs(train_args.gold_check_pairs)  # DataError names a missing or bad file
    return GoldCheckCallback(
        pairs,
        scorer(train_args.gold_check_judge),
        train_args.gold_check_every,
        output_dir / "gold_check_start.json",
        prompts=train_args.gold_check_prompts,
    )
