"""A user's own model and losses, as the tests name them by reference: ``tests/userparts.py:small``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def small(num_classes: int) -> nn.Module:
    """A small convolutional net with BatchNorm: what a team writes for itself."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
    )


def other(num_classes: int) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, num_classes))


def wrong_shape(num_classes: int) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 7))


def not_a_module(num_classes: int) -> list:
    return [num_classes]


def tempered_ce(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                reduce: str = "mean") -> torch.Tensor:
    """Cross-entropy on logits divided by a searched temperature."""
    return F.cross_entropy(logits / temperature, targets, reduction=reduce)


tempered_ce.space = {"temperature": (0.5, 2.0, "log"), "reduce": ["mean"]}


def per_image(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, targets, reduction="none")


def nan_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, targets) * float("nan")


def bad_space(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    return F.cross_entropy(logits, targets) * alpha


bad_space.space = {"alpha": (2.0, 1.0)}

not_callable = 3
