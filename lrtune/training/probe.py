"""A short probe of a run's training step: its time and its peak device memory. Knows nothing of Optuna.

``--workers auto`` reads it to choose how many trials share a GPU.
"""

from __future__ import annotations

import itertools
import time

import torch

from lrtune.training import memory
from lrtune.training.loaders import to_model_input

WARMUP_STEPS = 3  # cuDNN autotuning, the allocator, a compile: not what a trial's steady state costs
STEPS = 10


def probe_step(run: object, *, steps: int = STEPS) -> tuple[float, int]:
    """(seconds per optimizer step, peak device memory in bytes) of ``run`` (a fresh ``TrainingRun``), whose
    weights and optimizer the probe changes: throw it away afterwards."""
    amp, model, optimizer, scaler = run.amp, run.net, run.optimizer, run.scaler  # type: ignore[attr-defined]
    model.train()
    memory.peak_bytes(amp.device)  # resets the peak
    batches = itertools.cycle(list(itertools.islice(iter(run.loader), WARMUP_STEPS + steps)))  # type: ignore[attr-defined]

    def step() -> None:
        images, targets = next(batches)
        x = to_model_input(images, amp.device, channels_last=amp.channels_last)
        with amp.autocast():
            loss = run.loss_fn(model(x), targets.to(amp.device, non_blocking=True))  # type: ignore[attr-defined]
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(WARMUP_STEPS):
        step()
    _sync(amp.device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(amp.device)
    return (time.perf_counter() - start) / steps, memory.peak_bytes(amp.device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
