"""A short probe of a run's training step: its time and its peak device memory. Knows nothing of Optuna.

``--workers auto`` reads it to choose how many trials share a GPU.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import torch

from lrtune.training import memory
from lrtune.training.loop import train_one_epoch

WARMUP_STEPS = 3  # cuDNN autotuning, the allocator, a compile: not what a trial's steady state costs
STEPS = 10


def probe_step(run: Any, *, steps: int = STEPS) -> tuple[float, int]:
    """(seconds per optimizer step, peak device memory in bytes) of ``run`` (a fresh ``TrainingRun``), whose
    weights and optimizer the probe changes: throw it away afterwards."""
    device = run.amp.device
    batches = list(itertools.islice(itertools.cycle(list(itertools.islice(iter(run.loader), steps))),
                                    WARMUP_STEPS + steps))
    memory.peak_bytes(device)  # resets the peak

    def train(part: list[Any]) -> None:
        train_one_epoch(run.net, part, run.optimizer, run.loss_fn, schedule=run.schedule, step=0, accum_steps=1,
                        amp=run.amp, scaler=run.scaler)

    train(batches[:WARMUP_STEPS])
    _sync(device)
    start = time.perf_counter()
    train(batches[WARMUP_STEPS:])  # one step per batch, one read of the loss at the end
    _sync(device)
    return (time.perf_counter() - start) / steps, memory.peak_bytes(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
