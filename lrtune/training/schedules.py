"""Learning-rate schedules as pure functions of the global optimizer step.

The training code keeps the counters: it asks `lr(step)` before every optimizer
step, and calls `epoch_end(metric)` once per epoch with the validation macro-F1.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch

from lrtune.errors import ConfigError


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


class Schedule:
    """Base class: a linear warmup over the first `warmup_steps`, then the schedule itself."""

    def __init__(self, base_lr: float, steps_per_epoch: int, epochs: int, warmup_steps: int = 0) -> None:
        _require(base_lr > 0, f"base_lr must be > 0, got {base_lr}")
        _require(steps_per_epoch >= 1, f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        _require(epochs >= 1, f"epochs must be >= 1, got {epochs}")
        _require(warmup_steps >= 0, f"warmup_steps must be >= 0, got {warmup_steps}")
        self.base_lr = base_lr
        self.steps_per_epoch = steps_per_epoch
        self.epochs = epochs
        self.warmup_steps = warmup_steps

    def lr(self, step: int) -> float:
        """LR for the 0-based global optimizer step `step`."""
        lr = self._lr(step)
        if step < self.warmup_steps:
            lr *= (step + 1) / self.warmup_steps
        return lr

    def _lr(self, step: int) -> float:
        raise NotImplementedError

    def epoch_end(self, metric: float) -> None:
        """Take the epoch's validation macro-F1; only plateau uses it."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class StepSchedule(Schedule):
    """Multiply the LR by `step_gamma` every `step_size` epochs (torch StepLR stepped per epoch)."""

    def __init__(
        self,
        base_lr: float,
        steps_per_epoch: int,
        epochs: int,
        warmup_steps: int = 0,
        step_size: int = 1,
        step_gamma: float = 0.1,
    ) -> None:
        super().__init__(base_lr, steps_per_epoch, epochs, warmup_steps)
        _require(step_size >= 1, f"step_size must be >= 1, got {step_size}")
        _require(0 < step_gamma <= 1, f"step_gamma must be in (0, 1], got {step_gamma}")
        self.step_size = step_size
        self.step_gamma = step_gamma

    def _lr(self, step: int) -> float:
        epoch = step // self.steps_per_epoch
        return self.base_lr * self.step_gamma ** (epoch // self.step_size)


class CosineSchedule(Schedule):
    """Cosine from `base_lr` down to `eta_min` over the whole run, per optimizer step."""

    def __init__(
        self,
        base_lr: float,
        steps_per_epoch: int,
        epochs: int,
        warmup_steps: int = 0,
        eta_min: float = 0.0,
    ) -> None:
        super().__init__(base_lr, steps_per_epoch, epochs, warmup_steps)
        _require(eta_min >= 0, f"eta_min must be >= 0, got {eta_min}")
        self.eta_min = eta_min

    def _lr(self, step: int) -> float:
        total = self.epochs * self.steps_per_epoch
        # held at eta_min past the end, where torch's cosine would climb back up
        progress = min(step, total) / total
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * progress)) / 2


class PlateauSchedule(Schedule):
    """Multiply the LR by `factor` when macro-F1 has not improved for more than `patience` epochs.

    Same decisions as torch ReduceLROnPlateau(mode="max", threshold=1e-4,
    threshold_mode="rel", cooldown=0, min_lr=0).
    """

    threshold = 1e-4
    eps = 1e-8  # torch skips a reduction smaller than this

    def __init__(
        self,
        base_lr: float,
        steps_per_epoch: int,
        epochs: int,
        warmup_steps: int = 0,
        factor: float = 0.1,
        patience: int = 2,
    ) -> None:
        super().__init__(base_lr, steps_per_epoch, epochs, warmup_steps)
        _require(0 < factor < 1, f"factor must be in (0, 1), got {factor}")
        _require(patience >= 0, f"patience must be >= 0, got {patience}")
        self.factor = factor
        self.patience = patience
        self.best = -math.inf
        self.num_bad_epochs = 0
        self.n_reductions = 0

    def _lr(self, step: int) -> float:
        return self.base_lr * self.factor**self.n_reductions

    def epoch_end(self, metric: float) -> None:
        if metric > self.best * (1 + self.threshold):
            self.best = metric
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.num_bad_epochs > self.patience:
            lr = self.base_lr * self.factor**self.n_reductions
            if lr - lr * self.factor > self.eps:
                self.n_reductions += 1
            self.num_bad_epochs = 0

    def state_dict(self) -> dict[str, Any]:
        best = None if self.best == -math.inf else self.best
        return {"best": best, "num_bad_epochs": self.num_bad_epochs, "n_reductions": self.n_reductions}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = -math.inf if state["best"] is None else state["best"]
        self.num_bad_epochs = state["num_bad_epochs"]
        self.n_reductions = state["n_reductions"]


SCHEDULERS: dict[str, type[Schedule]] = {
    "step": StepSchedule,
    "cosine": CosineSchedule,
    "plateau": PlateauSchedule,
}


class ConstantSchedule(Schedule):
    """The same LR throughout (after any warmup): for an optimizer that needs no schedule (Schedule-Free)."""

    def _lr(self, step: int) -> float:
        return self.base_lr


# Schedules that only an LR-free baseline's recipe names; a search's space never offers them.
RECIPE_SCHEDULES = {"constant": ConstantSchedule}


def create_schedule(
    name: str,
    *,
    base_lr: float,
    steps_per_epoch: int,
    epochs: int,
    warmup_steps: int = 0,
    step_size: int = 1,
    step_gamma: float = 0.1,
    eta_min: float = 0.0,
    factor: float = 0.1,
    patience: int = 2,
) -> Schedule:
    """Build the schedule registered as `name`, passing only the options it takes."""
    if name not in SCHEDULERS and name not in RECIPE_SCHEDULES:
        raise ConfigError(f"unknown scheduler {name!r} (valid: {', '.join(SCHEDULERS)})")
    cls = SCHEDULERS.get(name) or RECIPE_SCHEDULES[name]
    accepted = inspect.signature(cls).parameters
    options = dict(step_size=step_size, step_gamma=step_gamma, eta_min=eta_min, factor=factor, patience=patience)
    return cls(
        base_lr=base_lr,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        warmup_steps=warmup_steps,
        **{key: value for key, value in options.items() if key in accepted},
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float, step: int | None = None) -> None:
    """Set `lr` on every param group, times the group's `lr_scale` where it has one (a fine-tune's body and
    head); at global step `step`, a group that joined late (`joins_at`) ramps up over its `ramp` steps."""
    for group in optimizer.param_groups:
        scale = group.get("lr_scale", 1.0)
        joins, ramp = group.get("joins_at", 0), group.get("ramp", 0)
        if step is not None and ramp and step < joins + ramp:
            scale *= max(0, step - joins + 1) / ramp
        group["lr"] = lr * scale
