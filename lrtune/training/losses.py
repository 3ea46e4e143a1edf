"""Classification losses by name: cross-entropy, focal, label smoothing and soft macro-F1.

Each loss takes logits (B, C) and int64 targets (B,) and returns the batch mean.
Logits are cast to float32 first, so bf16/fp16 outputs under autocast are safe.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lrtune.errors import ConfigError


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


def create_loss(name: str, *, focal_gamma: float = 2.0, smoothing: float = 0.1) -> nn.Module:
    """Build the loss registered as `name`, passing only the options it takes."""
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r} (valid: {', '.join(LOSSES)})")
    factory = LOSSES[name]
    accepted = inspect.signature(factory).parameters
    options = {"focal_gamma": focal_gamma, "smoothing": smoothing}
    return factory(**{key: value for key, value in options.items() if key in accepted})
