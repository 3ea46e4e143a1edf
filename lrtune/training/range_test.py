"""The learning-rate range test (Smith, arXiv 1506.01186). Knows nothing of Optuna.

``range_test`` trains a ``TrainingRun`` for a few optimizer steps while the LR
grows exponentially from ``start`` toward ``end``, one LR per optimizer step
(the micro-batches of an accumulation group share it; a step the AMP
GradScaler skips does not advance it). The loss is smoothed by a
bias-corrected EMA and the sweep stops once the smoothed loss exceeds
``diverge`` times its minimum. Whatever happens, the run's model, optimizer,
scaler, data augmentation and the global RNGs are put back in ``finally``, so
training after a range test computes exactly what it would without one.

The curve gives three suggestions (steepest descent per log-LR, fastai's
valley, the minimum's LR / 10); the reported one is the middle of the three.
A curve without a clear descent (a drop under ``MIN_DROP`` of the starting
loss, or under ``NOISE_RATIO`` times the noise) gets no suggestion.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch

from lrtune.errors import ConfigError, DataError, RangeTestError
from lrtune.training.loaders import to_model_input
from lrtune.training.schedules import set_lr

END_LR = 10.0
STEPS = 100
MIN_STEPS = 10
BETA = 0.9  # EMA weight of the past: a lag of about 9 steps, a sixth of a 100-step sweep's 8 decades
DIVERGE = 4.0  # stop once the smoothed loss is over this multiple of its minimum
MIN_DROP = 0.1  # a clear descent drops the smoothed loss by at least this share of its start...
NOISE_RATIO = 3.0  # ...and by this many times the noise (median |raw - smoothed|)
MAX_POINTS = 200  # curve points kept in the JSON record
RULES = ("steepest", "valley", "min/10")


@dataclass
class RangeTestResult:
    """The sweep's curve and what it suggests; JSON-safe through ``to_dict``.

    ``suggestion`` is None when the curve shows no clear descent; ``rule``
    then says why, otherwise which rule chose it.
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestions: dict[str, float | None]
    suggestion: float | None
    rule: str
    stop: str  # why the sweep ended
    start: float
    end: float
    steps: int  # optimizer steps asked for
    skipped: int = 0  # optimizer steps the GradScaler skipped
    setup: dict[str, Any] = field(default_factory=dict)  # loss, accumulation, batch size of the sweep

    def to_dict(self) -> dict[str, Any]:
        """Small and JSON-safe: at most ``MAX_POINTS`` curve points, floats rounded."""
        out = asdict(self)
        keep = _thin_indices(len(self.lrs), MAX_POINTS)
        for key in ("lrs", "losses", "smoothed"):
            out[key] = [_round(out[key][i]) for i in keep]
        out["suggestions"] = {k: _round(v) for k, v in self.suggestions.items()}
        out["suggestion"] = _round(self.suggestion)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "RangeTestResult":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in values.items() if k in known})


def range_test(
    run: Any,
    *,
    start: float,
    end: float = END_LR,
    steps: int = STEPS,
    diverge: float = DIVERGE,
    beta: float = BETA,
    progress: Callable[[int, int], None] | None = None,
) -> RangeTestResult:
    """Sweep the LR of ``run`` (a ``TrainingRun``) from ``start`` toward ``end`` over ``steps`` optimizer steps.

    Raises ``ConfigError`` for a range that does not increase or too few steps,
    ``TooFewImages`` (a ``DataError``) for a training set smaller than one batch,
    and ``RangeTestError`` when the loss is non-finite from the first step.
    """
    _check_inputs(run, start=start, end=end, steps=steps, diverge=diverge, beta=beta)
    saved = _save_state(run)
    try:
        lrs, losses, stop, skipped = _sweep(run, start=start, end=end, steps=steps, diverge=diverge, beta=beta,
                                            progress=progress)
    finally:
        _restore_state(run, saved)
    smoothed = smooth(losses, beta)
    suggestions = suggest_all(lrs, smoothed)
    suggestion, rule = choose(lrs, losses, smoothed, suggestions)
    setup = {"loss": run.params.loss, "accum": run.params.accum, "batch_size": run.cfg.batch_size}
    return RangeTestResult(lrs, losses, smoothed, suggestions, suggestion, rule, stop, start, end, steps, skipped, setup)


def sweep_lr(start: float, end: float, steps: int, index: int) -> float:
    """The LR of optimizer step ``index``: exponential from ``start`` (index 0) to ``end`` (index steps-1)."""
    return start * (end / start) ** (index / max(steps - 1, 1))


def smooth(losses: list[float], beta: float = BETA) -> list[float]:
    """Bias-corrected exponential moving average (the first value is the first loss itself)."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** (i + 1)))
    return out


# --------------------------------------------------------------------------- suggestions


def _trimmed(n: int) -> slice:
    """The points the rules look at: as fastai, the first tenth and the last five are left out."""
    return slice(n // 10, max(n // 10 + 2, n - 5))


def suggest_all(lrs: list[float], smoothed: list[float]) -> dict[str, float | None]:
    """Each rule's LR: steepest descent per log-LR, fastai's valley, the minimum's LR / 10."""
    window = _trimmed(len(lrs))
    x, y = np.log10(np.asarray(lrs[window])), np.asarray(smoothed[window])
    if len(x) < 3:
        return {rule: None for rule in RULES}
    lowest = int(np.argmin(y))
    descent = np.gradient(y[: lowest + 1], x[: lowest + 1]) if lowest >= 2 else None
    steepest = float(10 ** x[int(np.argmin(descent))]) if descent is not None and descent.min() < 0 else None
    return {
        "steepest": steepest,
        "valley": float(10 ** x[valley_index(list(y))]),
        "min/10": float(10 ** x[lowest] / 10),
    }


def valley_index(losses: list[float]) -> int:
    """fastai's valley: the longest run of decreasing loss, and a point 2/3 of the way down it (here 1/2 + 1/6)."""
    n = len(losses)
    lds = [1] * n
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end, max_start = i, i - lds[i]
    sections = (max_end - max_start) / 3
    return min(n - 1, max_start + int(sections) + int(sections / 2))


def choose(
    lrs: list[float], losses: list[float], smoothed: list[float], suggestions: Mapping[str, float | None]
) -> tuple[float | None, str]:
    """The middle of the rules' LRs and the rule that gave it; None and the reason without a clear descent."""
    window = _trimmed(len(lrs))
    raw, smooth_w = np.asarray(losses[window]), np.asarray(smoothed[window])
    if len(raw) < 3:
        return None, f"no suggestion: only {len(lrs)} steps before the sweep stopped"
    first, lowest = float(smooth_w[0]), float(smooth_w.min())
    drop = first - lowest
    noise = float(np.median(np.abs(raw - smooth_w)))
    if drop < MIN_DROP * abs(first):
        return None, (
            f"no suggestion: the smoothed loss drops only {drop:.3g} from {first:.3g} "
            f"(under {MIN_DROP:.0%}): no clear descent"
        )
    if drop < NOISE_RATIO * noise:
        return None, (
            f"no suggestion: the loss is too noisy (its drop {drop:.3g} is under {NOISE_RATIO:g}x "
            f"the noise {noise:.3g}); try a larger --batch-size or more --steps"
        )
    found = sorted((lr, rule) for rule, lr in suggestions.items() if lr is not None)
    lr, rule = found[(len(found) - 1) // 2]
    return lr, f"{rule} (the middle of {', '.join(r for _, r in found)})"


# --------------------------------------------------------------------------- the sweep


class TooFewImages(DataError):
    """The training set is smaller than one batch: a sweep would see the same few images every step."""

    def __init__(self, images: int, batch: int) -> None:
        self.reason = f"the training set has {images} images, fewer than one batch of {batch}"
        super().__init__(f"{self.reason}; lower --batch-size")


def check_sweep(*, start: float, end: float, steps: int) -> None:
    """A range that increases from a positive start, and enough steps for the rules; else ``ConfigError``."""
    if not (math.isfinite(start) and math.isfinite(end)) or start <= 0 or end <= start:
        raise ConfigError(f"the LR range must increase from a positive start: --start {start:g} --end {end:g}")
    if steps < MIN_STEPS:
        raise ConfigError(f"--steps {steps} is too few for a range test; use at least {MIN_STEPS}")


def _check_inputs(run: Any, *, start: float, end: float, steps: int, diverge: float, beta: float) -> None:
    check_sweep(start=start, end=end, steps=steps)
    if diverge <= 1 or not 0 <= beta < 1:
        raise ConfigError(f"diverge must be > 1 and beta in [0, 1), got {diverge:g} and {beta:g}")
    n_images, batch = run.loader.images_per_epoch, run.loader.batch_size
    if n_images < batch:
        raise TooFewImages(n_images, batch)


def _batches(loader: Any):
    """The loader's batches, pass after pass, for as long as the sweep needs."""
    while True:
        yield from loader


def _sweep(run: Any, *, start: float, end: float, steps: int, diverge: float, beta: float,
           progress: Callable[[int, int], None] | None) -> tuple[list[float], list[float], str, int]:
    model, optimizer, scaler = run.model, run.optimizer, run.scaler
    accum = run.params.accum
    model.train()
    optimizer.zero_grad(set_to_none=True)
    lrs: list[float] = []
    losses: list[float] = []
    avg, best, skipped = 0.0, math.inf, 0
    batches = _batches(run.loader)
    while len(lrs) < steps:
        lr = sweep_lr(start, end, steps, len(lrs))
        set_lr(optimizer, lr)
        loss = _group_loss(run, batches, accum)
        if not math.isfinite(loss):
            optimizer.zero_grad(set_to_none=True)
            if not losses:
                raise RangeTestError(f"the loss is non-finite ({loss}) from the first step, at LR {lr:.3g}; "
                                     "check the data, the model and the loss")
            return lrs, losses, f"stopped at LR {lr:.3g}: non-finite loss", skipped
        if scaler is not None:
            scale = scaler.get_scale()
            scaler.step(optimizer)
            scaler.update()
            if scaler.get_scale() < scale:  # inf/NaN gradients: the step was skipped, the LR stays
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
                if skipped > steps:
                    return lrs, losses, f"stopped: the GradScaler skipped {skipped} steps", skipped
                continue
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        lrs.append(lr)
        losses.append(loss)
        avg = beta * avg + (1 - beta) * loss
        smoothed = avg / (1 - beta ** len(losses))
        best = min(best, smoothed)
        if progress is not None:
            progress(len(lrs), steps)
        if smoothed > diverge * best:
            return lrs, losses, f"stopped at LR {lr:.3g}: smoothed loss over {diverge:g}x its minimum", skipped
    return lrs, losses, f"reached LR {lrs[-1]:.3g} after {steps} steps", skipped


def _group_loss(run: Any, batches: Any, accum: int) -> float:
    """Forward and backward ``accum`` micro-batches; their mean loss (one CPU-GPU sync per optimizer step)."""
    amp, scaler = run.amp, run.scaler
    total = 0.0
    for _ in range(accum):
        images, targets = next(batches)
        x = to_model_input(images, amp.device, channels_last=amp.channels_last)
        y = targets.to(amp.device, non_blocking=True)
        with amp.autocast():
            loss = run.loss_fn(run.model(x), y)
        scaled = loss / accum
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
        total += float(loss.detach())
    return total / accum


# --------------------------------------------------------------------------- state


def _save_state(run: Any) -> dict[str, Any]:
    """Copies of everything the sweep changes: weights, optimizer, scaler, augmentation and global RNGs."""
    return {
        "model": copy.deepcopy(run.model.state_dict()),
        "optimizer": copy.deepcopy(run.optimizer.state_dict()),
        "scaler": copy.deepcopy(run.scaler.state_dict()) if run.scaler is not None else None,
        "training": run.model.training,
        "augment": run.loader.rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
    }


def _restore_state(run: Any, saved: dict[str, Any]) -> None:
    run.model.load_state_dict(saved["model"])
    run.optimizer.load_state_dict(saved["optimizer"])
    run.optimizer.zero_grad(set_to_none=True)
    if saved["scaler"] is not None:
        run.scaler.load_state_dict(saved["scaler"])
    run.model.train(saved["training"])
    run.loader.set_rng_state(saved["augment"])
    random.setstate(saved["python"])
    np.random.set_state(saved["numpy"])
    torch.set_rng_state(saved["torch"])
    if saved["cuda"] is not None:
        torch.cuda.set_rng_state_all(saved["cuda"])


def _thin_indices(n: int, limit: int) -> list[int]:
    if n <= limit:
        return list(range(n))
    stride = math.ceil(n / limit)
    kept = list(range(0, n, stride))
    return kept if kept[-1] == n - 1 else kept + [n - 1]


def _round(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.6g}")
