"""Classification losses by name: cross-entropy, focal, label smoothing and soft macro-F1.

Each loss takes logits (B, C) and int64 targets (B,) and returns the batch mean.
Logits are cast to float32 first, so bf16/fp16 outputs under autocast are safe.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from lrtune.errors import ConfigError, first_line
from lrtune.training.references import is_user_part, resolve


class CrossEntropyLoss(nn.Module):
    """Plain cross-entropy."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target)


class FocalLoss(nn.Module):
    """Cross-entropy weighted by (1 - p_t) ** focal_gamma, so easy examples count less.

    focal_gamma=0 is plain cross-entropy.
    """

    def __init__(self, focal_gamma: float = 2.0) -> None:
        super().__init__()
        if focal_gamma < 0:
            raise ConfigError(f"focal_gamma must be >= 0, got {focal_gamma}")
        self.focal_gamma = focal_gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_pt = F.log_softmax(logits.float(), dim=-1).gather(1, target[:, None]).squeeze(1)
        # expm1 keeps 1 - p_t exact near p_t = 1; the clamp keeps d(x ** gamma)/dx finite at x = 0 for focal_gamma < 1
        weight = (-torch.expm1(log_pt)).clamp(min=1e-12) ** self.focal_gamma
        return -(weight * log_pt).mean()


class LabelSmoothingLoss(nn.Module):
    """Cross-entropy against (1 - smoothing) * one_hot + smoothing / C."""

    def __init__(self, smoothing: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= smoothing < 1.0:
            raise ConfigError(f"label smoothing must be in [0, 1), got {smoothing}")
        self.smoothing = smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=-1)
        nll = -log_p.gather(1, target[:, None]).squeeze(1)
        uniform = -log_p.mean(dim=-1)
        return ((1 - self.smoothing) * nll + self.smoothing * uniform).mean()


class SoftF1Loss(nn.Module):
    """1 - macro-F1 computed on softmax probabilities instead of hard predictions.

    Every class counts in the mean, including classes absent from the batch.
    """

    def __init__(self, eps: float = 1e-7) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = logits.float().softmax(dim=-1)
        y = F.one_hot(target, p.shape[1]).float()
        tp = (p * y).sum(dim=0)
        fp = (p * (1 - y)).sum(dim=0)
        fn = ((1 - p) * y).sum(dim=0)
        f1 = 2 * tp / (2 * tp + fp + fn + self.eps)
        return 1 - f1.mean()


LOSSES: dict[str, Callable[..., nn.Module]] = {
    "ce": CrossEntropyLoss,
    "focal": FocalLoss,
    "label_smoothing": LabelSmoothingLoss,
    "f1": SoftF1Loss,
}


class UserLoss(nn.Module):
    """A user's loss ``(logits, targets, **options) -> scalar``, on float32 logits like the built-in ones."""

    def __init__(self, fn: Callable[..., torch.Tensor], options: Mapping[str, Any]) -> None:
        super().__init__()
        self.fn, self.options = fn, dict(options)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.fn(logits.float(), target, **self.options)


def loss_space(name: str) -> dict[str, Any]:
    """The parameters a user's loss declares in its ``space`` attribute (``{}`` for the built-in ones): each
    ``(low, high)``, ``(low, high, "log")`` or a list of choices; ``ConfigError`` for any other form."""
    if name in LOSSES:
        return {}
    space = getattr(resolve(name, kind="loss"), "space", None) or {}
    if not isinstance(space, Mapping):
        raise ConfigError(f"loss {name!r}: its space is a {type(space).__name__}, not a dict of parameters")
    for key, spec in space.items():
        if not (isinstance(key, str) and key.isidentifier()) or not _valid_spec(spec):
            raise ConfigError(f"loss {name!r}: parameter {key!r} = {spec!r} is not (low, high), (low, high, 'log') "
                              "or a list of choices")
    return dict(space)


def _valid_spec(spec: Any) -> bool:
    if isinstance(spec, list):
        return bool(spec)
    if not isinstance(spec, tuple) or len(spec) not in (2, 3):
        return False
    low, high, *log = spec
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
    return numbers and low < high and log in ([], ["log"]) and (not log or low > 0)


def probe_value(spec: Any) -> Any:
    """A parameter's value for the probe batch: the first choice, or the middle of the range."""
    if isinstance(spec, list):
        return spec[0]
    low, high, *log = spec
    middle = math.sqrt(low * high) if log else (low + high) / 2
    return round(middle) if isinstance(low, int) and isinstance(high, int) and not log else middle


def check_losses(names: list[str], logits: torch.Tensor, targets: torch.Tensor) -> None:
    """``ConfigError`` naming the loss and what it returned, for a loss that gives no finite scalar on a probe
    batch (at the middle of its parameters' ranges)."""
    for name in names:
        if name in LOSSES:
            continue
        options = {key: probe_value(spec) for key, spec in loss_space(name).items()}
        try:
            value = create_loss(name, options=options)(logits, targets)
        except Exception as exc:  # the user's loss may raise anything
            raise ConfigError(f"loss {name!r} fails on a probe batch (logits {list(logits.shape)}, targets "
                              f"{list(targets.shape)}): {type(exc).__name__}: {first_line(exc)}") from exc
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            what = f"shape {list(value.shape)}" if isinstance(value, torch.Tensor) else f"a {type(value).__name__}"
            raise ConfigError(f"loss {name!r} returned {what} on a probe batch (logits {list(logits.shape)}); "
                              "a loss returns a scalar tensor")
        if not torch.isfinite(value.detach()).all():
            raise ConfigError(f"loss {name!r} returned {value.item()} on a probe batch (logits {list(logits.shape)}); "
                              "a loss returns a finite scalar")


def create_loss(name: str, *, focal_gamma: float = 2.0, smoothing: float = 0.1,
                options: Mapping[str, Any] | None = None) -> nn.Module:
    """Build the loss registered as `name`, passing only the options it takes; a user's loss (a reference or
    a given object) with its searched ``options``."""
    if is_user_part(name):
        return UserLoss(resolve(name, kind="loss"), options or {})
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r} (valid: {', '.join(LOSSES)}, or a 'module:callable' reference)")
    factory = LOSSES[name]
    accepted = inspect.signature(factory).parameters
    options = {"focal_gamma": focal_gamma, "smoothing": smoothing}
    return factory(**{key: value for key, value in options.items() if key in accepted})
