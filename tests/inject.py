"""Run the real ``lrtune`` CLI with one fault injected, for tests of what happens then.

    python tests/inject.py nan-above-lr=0.05 search ...   # every trial with lr > 0.05 gets a NaN loss
    python tests/inject.py oom-trial=2 search ...          # trial 2 meets a CUDA out-of-memory error
    python tests/inject.py die-after-upload=1 search ...   # SIGKILL once trial 1 has uploaded a checkpoint
"""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from lrtune.tuner import artifacts as artifacts_mod  # noqa: E402
from lrtune.tuner import trial as trial_mod  # noqa: E402
from lrtune.training import run as run_mod  # noqa: E402
from lrtune.cli import main  # noqa: E402

fault, _, value = sys.argv[1].partition("=")

if fault == "nan-above-lr":
    real_create_loss = run_mod.create_loss
    real_create_optimizer = run_mod.create_optimizer
    current = {}

    def create_optimizer(model, **kwargs):
        current["lr"] = kwargs["lr"]
        return real_create_optimizer(model, **kwargs)

    def create_loss(*args, **kwargs):
        loss = real_create_loss(*args, **kwargs)
        if current["lr"] > float(value):
            return lambda logits, y: loss(logits, y) * float("nan")
        return loss

    run_mod.create_optimizer = create_optimizer
    run_mod.create_loss = create_loss
elif fault == "oom-trial":
    real_run = trial_mod.Objective._run

    def run(self, trial, *args, **kwargs):
        if trial.number == int(value):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
        return real_run(self, trial, *args, **kwargs)

    trial_mod.Objective._run = run
elif fault == "die-after-upload":
    real_upload_last = artifacts_mod.RemoteCheckpoints.upload_last

    def upload_last(self, trial, *args, **kwargs):
        real_upload_last(self, trial, *args, **kwargs)
        if trial.number == int(value):
            os.kill(os.getpid(), signal.SIGKILL)

    artifacts_mod.RemoteCheckpoints.upload_last = upload_last
else:
    raise SystemExit(f"unknown fault {fault!r}")

raise SystemExit(main(sys.argv[2:]))
