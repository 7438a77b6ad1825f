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
