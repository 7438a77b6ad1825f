"""python tests/_killed_run.py POINT ARG...: ``python -m train ARG...``, SIGKILLed by itself at POINT.

  log:N          at step N, the metrics line written, then cut short as a kill mid-write leaves it
  checkpoint:N   while checkpoint-N is saved: its adapter written, its optimizer state not yet
  card           while our card is written: the new README.md made, not yet put in place

Each hook wraps the real function that does the writing; everything up to the kill is the real run,
and the kill is a real SIGKILL: no cleanup, no finally blocks, no atexit.
"""

import os
import signal
import sys


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str) -> None:
    name, _, step = point.partition(":")
    if name == "log":
        from train.callbacks import MetricsJsonlCallback

        on_log = MetricsJsonlCallback.on_log

        def cut_on_log(self, args, state, control, logs=None, **kwargs):
            on_log(self, args, state, control, logs=logs, **kwargs)
            if state.global_step == int(step):
                os.truncate(self.path, self.path.stat().st_size - 10)
                die()

        MetricsJsonlCallback.on_log = cut_on_log
    elif name == "checkpoint":
        import torch

        save = torch.save

        def killing_save(obj, f, *args, **kwargs):
            if str(f).endswith(os.path.join(f"checkpoint-{step}", "optimizer.pt")):
                die()
            return save(obj, f, *args, **kwargs)

        torch.save = killing_save
    elif name == "card":
        replace = os.replace

        def killing_replace(src, dst, *args, **kwargs):
            if str(dst).endswith("README.md") and ".README." in str(src):
                die()
            return replace(src, dst, *args, **kwargs)

        os.replace = killing_replace
    else:
        raise SystemExit(f"unknown kill point {point!r}")


if __name__ == "__main__":
    arm(sys.argv[1])
    from train.train import main

    sys.exit(main(sys.argv[2:]))
