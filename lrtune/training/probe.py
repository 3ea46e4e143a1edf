"""Short probes of a run's training step: its time and peak device memory, and its speed at several thread
counts. Knows nothing of Optuna.

``--workers auto`` reads the first to choose how many trials share a GPU;
``--threads auto`` reads the second to choose a trial process's CPU threads;
a search's estimate reads ``probe_epoch``, a few batches of a real epoch.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable

import torch

from lrtune.training import memory
from lrtune.training.loop import evaluate, train_one_epoch

WARMUP_STEPS = 3  # cuDNN autotuning, the allocator, a compile: not what a trial's steady state costs
STEPS = 10
THREAD_ROUNDS = 2  # each count measured this often, interleaved, its best kept: a short stall elsewhere is not its
THREAD_SECONDS = 0.1  # each measurement runs steps for about this long (at least one step)
THREAD_STEPS = 8  # and at most this many


def probe_step(run: Any, *, steps: int = STEPS) -> tuple[float, int]:
    """(seconds per optimizer step, peak device memory in bytes) of ``run`` (a fresh ``TrainingRun``), whose
    weights and optimizer the probe changes: throw it away afterwards."""
    device = run.amp.device
    batches = list(itertools.islice(itertools.cycle(list(itertools.islice(iter(run.loader), steps))),
                                    WARMUP_STEPS + steps))
    memory.peak_bytes(device)  # resets the peak
    _train(run, batches[:WARMUP_STEPS])
    _sync(device)
    start = time.perf_counter()
    _train(run, batches[WARMUP_STEPS:])  # one step per batch, one read of the loss at the end
    _sync(device)
    return (time.perf_counter() - start) / steps, memory.peak_bytes(device)


def probe_threads(run: Any, counts: list[int], *, apply: Callable[[int], None]) -> dict[int, float]:
    """Training images per second of ``run`` (a fresh ``TrainingRun``, changed by the probe) at each thread
    count, ``apply`` setting the count. The batches are drawn once, so the loader's cost is not measured.

    The fewest threads go first and warm up the kernels. A count far slower
    than the best in the first round (a busy core: its steps can take
    seconds) is not measured again.
    """
    counts = sorted(counts)
    batches = list(itertools.islice(iter(run.loader), THREAD_STEPS))
    apply(counts[0])
    _train(run, batches[:2])  # the first steps allocate and pick kernels
    rates: dict[int, float] = {}
    for round_ in range(THREAD_ROUNDS):
        for count in counts:
            if round_ and rates[count] < 0.5 * max(rates.values()):
                continue
            apply(count)
            images, start = 0, time.perf_counter()
            for batch in itertools.cycle(batches):
                images += _train(run, [batch])
                elapsed = time.perf_counter() - start
                if elapsed >= THREAD_SECONDS or images >= THREAD_STEPS * len(batch[1]):
                    break
            rates[count] = max(rates.get(count, 0.0), images / elapsed)
    return rates


def probe_epoch(run: Any, *, batches: int = 2, budget_s: float = 10.0) -> tuple[float, float]:
    """(training images/s with the loader's work, validation images/s) of ``run`` (a fresh ``TrainingRun``,
    changed by the probe), from up to ``batches`` batches of each after one to warm up; fewer once
    ``budget_s`` has passed, so a slow job is not kept waiting for its estimate."""
    loader = iter(run.loader)
    started = time.perf_counter()
    _train(run, [next(loader)])  # the first step allocates and picks kernels
    images, start = 0, time.perf_counter()
    for batch in itertools.islice(loader, batches):
        images += _train(run, [batch])
        if time.perf_counter() - started > budget_s:
            break
    train_rate = images / max(time.perf_counter() - start, 1e-9)
    if not len(run.data.val_idx):
        return train_rate, 0.0
    val = list(itertools.islice(run.val_batches(), 1 + batches))
    amp, n_classes = run.amp, run.data.n_classes
    evaluate(run.net, val[:1], n_classes=n_classes, amp=amp)
    start = time.perf_counter()
    timed = val[1:] or val
    evaluate(run.net, timed, n_classes=n_classes, amp=amp)
    return train_rate, sum(len(y) for _, y in timed) / max(time.perf_counter() - start, 1e-9)


def _train(run: Any, batches: list[Any]) -> int:
    result = train_one_epoch(run.net, batches, run.optimizer, run.loss_fn, schedule=run.schedule, step=0,
                             accum_steps=1, amp=run.amp, scaler=run.scaler)
    return result.images


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
