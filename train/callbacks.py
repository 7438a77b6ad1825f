"""Write every logging step's metrics (TRL's logs) to OUTPUT_DIR/metrics.jsonl, one JSON object a line."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from transformers import TrainerCallback


def read_metrics(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _clean(value):
    # JSON has no NaN: a metric TRL could not compute (e.g. std of one sample) is written as null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsJsonlCallback(TrainerCallback):
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        # A resumed run starts again at the checkpoint's step: drop what the killed run logged after it,
        # so the file holds one record per step. Rewritten atomically.
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= state.global_step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".metrics.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, self.path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, **{k: _clean(v) for k, v in logs.items()}}
        # Appending one line at a time: a kill loses at most the line being written.
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
