"""Run the real ``lrtune`` CLI with one fault injected, for tests of what happens then.

    python tests/inject.py nan-above-lr=0.05 search ...   # every trial with lr > 0.05 gets a NaN loss
    python tests/inject.py oom-trial=2 search ...          # trial 2 meets a CUDA out-of-memory error
    python tests/inject.py die-after-upload=1 search ...   # SIGKILL once trial 1 has uploaded a checkpoint
    python tests/inject.py die-after-checkpoint=0 search ... # SIGKILL once trial 0's last.pt is on disk
    python tests/inject.py enospc-checkpoint=2 search ...    # the disk is full from the 2nd checkpoint write on
    python tests/inject.py enospc-storage=5 search ...       # the database's disk is full from its 5th write on
    python tests/inject.py heartbeat-enospc=1 search ...     # the heartbeat thread's writes meet a full disk
    python tests/inject.py memory-error-trial=1 search ...   # trial 1's first step raises MemoryError
    python tests/inject.py eio-trial=1 search ...            # trial 1 meets an I/O error in its 2nd epoch
    python tests/inject.py progress-every-batch=1 search ... # every epoch counts as long: progress at each batch
    python tests/inject.py kill-after-trial=0:PID search ... # SIGKILL process group PID once trial 0 has ended
    python tests/inject.py lock-db-before-trial=1:12 search ... # another process holds the database's lock 12 s
    python tests/inject.py vanish-db-after-trial=0 search ... # the database file is deleted as trial 0 ends
"""

import errno
import os
import signal
import sqlite3
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from sqlalchemy import exc as sa_exc  # noqa: E402

from lrtune.storage import backend as backend_mod  # noqa: E402
from lrtune.tuner import artifacts as artifacts_mod  # noqa: E402
from lrtune.training import checkpoints as checkpoints_mod  # noqa: E402
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
elif fault == "die-after-checkpoint":
    real_keep = trial_mod.TrialFiles.keep

    def keep(self, run, *, due, **kwargs):
        real_keep(self, run, due=due, **kwargs)
        if due and self.folder.name == value:
            self.writer.wait()
            os.kill(os.getpid(), signal.SIGKILL)

    trial_mod.TrialFiles.keep = keep
elif fault == "enospc-checkpoint":
    real_torch_save = torch.save
    saves = [0]

    def save(state, path, *args, **kwargs):
        saves[0] += 1
        if saves[0] >= int(value):
            Path(path).write_bytes(b"partial")  # what a write cut short by a full disk leaves
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_torch_save(state, path, *args, **kwargs)

    checkpoints_mod.torch.save = save
elif fault in ("enospc-storage", "heartbeat-enospc"):
    real_autocommitted = backend_mod._Statements._autocommitted
    writes = [0]

    def full(conn):
        raise sa_exc.OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full"))

    def autocommitted(self, run):
        on_heartbeat = "heartbeat" in threading.current_thread().name
        if fault == "heartbeat-enospc" and on_heartbeat:
            return real_autocommitted(self, full)
        if fault == "enospc-storage" and not on_heartbeat:
            writes[0] += 1
            if writes[0] >= int(value):
                return real_autocommitted(self, full)
        return real_autocommitted(self, run)

    backend_mod._Statements._autocommitted = autocommitted
elif fault == "memory-error-trial":
    real_run = trial_mod.Objective._run
    real_train_epoch = run_mod.TrainingRun.train_epoch
    current = {}

    def run(self, trial, *args, **kwargs):
        current["trial"] = trial.number
        return real_run(self, trial, *args, **kwargs)

    def train_epoch(self, epoch):
        if current.get("trial") == int(value):
            raise MemoryError()
        return real_train_epoch(self, epoch)

    trial_mod.Objective._run = run
    run_mod.TrainingRun.train_epoch = train_epoch
elif fault == "eio-trial":
    real_epoch = trial_mod.Objective._epoch

    def epoch(self, trial, run, files, number):
        if trial.number == int(value) and number == 2:
            raise OSError(errno.EIO, "Input/output error")
        return real_epoch(self, trial, run, files, number)

    trial_mod.Objective._epoch = epoch
elif fault == "kill-after-trial":
    number, _, pid = value.partition(":")
    real_call = trial_mod.Objective.__call__

    def call(self, trial):
        result = real_call(self, trial)
        if trial.number == int(number):
            os.killpg(int(pid), signal.SIGKILL)  # the tracking server goes away
        return result

    trial_mod.Objective.__call__ = call
elif fault == "lock-db-before-trial":
    import sqlite_lock

    number, _, seconds = value.partition(":")
    real_call = trial_mod.Objective.__call__

    def call(self, trial):
        if trial.number == int(number):  # another process takes the database's lock, and holds it
            sqlite_lock.hold(f"{self.cfg.studies_dir}/lrtune.db", float(seconds))
        return real_call(self, trial)

    trial_mod.Objective.__call__ = call
elif fault == "progress-every-batch":
    from lrtune import progress as progress_mod

    progress_mod.SLOW_EPOCH_S = progress_mod.PLAIN_EVERY_S = 0.0
elif fault == "vanish-db-after-trial":
    real_call = trial_mod.Objective.__call__

    def call(self, trial):
        result = real_call(self, trial)
        if trial.number == int(value):
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.cfg.studies_dir}/lrtune.db{suffix}").unlink(missing_ok=True)
        return result

    trial_mod.Objective.__call__ = call
else:
    raise SystemExit(f"unknown fault {fault!r}")

raise SystemExit(main(sys.argv[2:]))
