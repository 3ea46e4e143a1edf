"""Faults of the machine in a search: what stops it, what a trial is retried for, and the disk it needs.

A fault outside a trial's hyperparameters is not the trial's failure:
- a full disk (``NoSpaceError``) or a storage that is gone (``StorageError``)
  stops the search at once, with the running trial queued to continue from its
  last checkpoint;
- any other fault of the machine (an ``OSError`` such as an I/O error, a
  killed process) queues the trial again, up to ``MAX_FAULTS`` times; then it
  counts as failed;
- a checkpoint that cannot be read is set aside and its trial starts again
  from epoch 0, within the same trial.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import FrozenTrial

from lrtune.config import Config
from lrtune.errors import NoSpaceError, StorageError, first_line, free_bytes, size_text

MAX_FAULTS = 3  # a trial hit by this many faults of the machine counts as failed
CARRIED = ("baseline", "lr_free", "confirm_of", "seed_index", "tracking")  # what a trial is (and its tracked runs), which its retry is too
FATAL = (NoSpaceError, StorageError)  # the search stops: no trial can run until it is fixed
OPTIMIZER_COPIES = 2  # AdamW's two moments beside the weights: what last.pt holds at most


def retry_attrs(trial: optuna.Trial | FrozenTrial, seed: int | None, *, fault: bool = False) -> dict:
    """The user attributes of a queued retry: the trial it continues, its seed, what the trial is (the baseline,
    an LR-free baseline, a confirmation run), and with ``fault`` one more fault of the machine counted."""
    attrs: dict = {"retry_of": trial.number}
    if seed is not None:
        attrs["seed"] = seed
    attrs.update({key: trial.user_attrs[key] for key in CARRIED if key in trial.user_attrs})
    faults = int(trial.user_attrs.get("faults", 0)) + int(fault)
    if faults:
        attrs["faults"] = faults
    return attrs


def retry(study: optuna.Study, trial: optuna.Trial | FrozenTrial, seed: int | None, *, fault: bool) -> bool:
    """Queue ``trial`` again with the same parameters (it continues its checkpoint). With ``fault``, not once it
    has met ``MAX_FAULTS`` faults of the machine: False then, and it counts as failed."""
    attrs = retry_attrs(trial, seed, fault=fault)
    if attrs.get("faults", 0) >= MAX_FAULTS:
        return False
    study.enqueue_trial(dict(trial.params), user_attrs=attrs)
    return True


def fatal_cause(exc: BaseException) -> BaseException | None:
    """The fault in ``FATAL`` that ``exc`` was raised while handling, if any (``exc`` itself included)."""
    seen: BaseException | None = exc
    for _ in range(16):
        if seen is None or isinstance(seen, FATAL):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def failure(exc: BaseException, *, requeued: bool) -> str:
    """The one-line reason of a failed trial; for a fault of the machine, whether it runs again."""
    text = out_of_memory(exc) or f"{type(exc).__name__}: {first_line(exc)}".removesuffix(f": {type(exc).__name__}")
    if isinstance(exc, OSError):
        text += (f" (a fault of the machine: queued to run again, at most {MAX_FAULTS} times)" if requeued
                 else f" ({MAX_FAULTS} faults of the machine: counted as failed)")
    return text


def out_of_memory(exc: BaseException) -> str | None:
    """The reason for a trial that ran out of CPU memory, or None when ``exc`` is something else."""
    if isinstance(exc, MemoryError):
        return "out of memory on the CPU (MemoryError)"
    text = str(exc)
    if isinstance(exc, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in text:
        return f"out of memory on the CPU ({text.splitlines()[0].strip()})"
    return None


def disk_needed(cfg: Config, model_bytes: int) -> tuple[int, str]:
    """About what a search writes under its studies folder at most, and how that adds up.

    Each trial running at once holds a ``last.pt`` (the weights and the
    optimizer's state); ``--keep`` keeps ``best.pt`` weights: of every trial
    (``all``), of the best and the baseline (``best``), or none.
    """
    last = model_bytes * (1 + OPTIMIZER_COPIES)
    running = max(cfg.workers, 1) * max(cfg.fuse, 1)
    kept = {"all": cfg.trials, "best": 2, "none": 0}.get(cfg.keep, 2)
    need = last * running + model_bytes * (kept + running)  # a running trial's best.pt is written beside its last.pt
    how = (f"{size_text(last)} checkpoints of {running} trial{'s' if running > 1 else ''} at once, "
           f"{kept} kept weights of {size_text(model_bytes)} with --keep {cfg.keep}")
    return need, how


def check_free_space(cfg: Config, folder: Path, model_bytes: int, say: Callable[[str], None]) -> None:
    """Warn, before any trial, when the studies folder's disk has less room than the search may write."""
    need, how = disk_needed(cfg, model_bytes)
    free = free_bytes(folder)
    if free is not None and free < need:
        say(f"warning: {size_text(free)} free under {folder}, and this search may write about {size_text(need)} "
            f"({how}); free space, use --keep best, or point --studies-dir at a larger disk")
