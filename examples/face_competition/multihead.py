"""One backbone with three heads (mask, gender, age) for the face competition, as lrtune's own model and loss.

    lrtune search --data data/faces/train.csv --model examples/face_competition/multihead.py:build \\
        --losses examples/face_competition/multihead.py:loss

``build`` is a pretrained EfficientNet-B0 from timm (downloaded once, the way
timm does it) with a 3-way mask head, a 2-way gender head and a 3-way age head;
``build_test`` is the same on timm's small ``test_efficientnet`` from scratch,
for a machine without the network. The model's output is the 18 classes'
joint log-probabilities, log p(mask) + log p(gender) + log p(age), in lrtune's
class order (the class names sorted), so macro-F1, ``lrtune predict`` and the
answers file work as with a plain 18-way head: the most likely class is the
most likely mask, gender and age together.

``loss`` is the sum of the three heads' losses, each a cross-entropy (or focal
with ``focal_gamma`` > 0) on that head's marginal of the 18 classes, with the
age head weighted by ``age_weight``; lrtune searches both. It takes any 18-way
logits, so it also trains the plain 18-way head.
"""

from __future__ import annotations

import sys
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from faces import AGES, GENDERS, MASKS  # noqa: E402

# lrtune numbers classes in the sorted order of their names: "incorrect-female-30to59" is 0.
NAMES = sorted(f"{mask}-{gender}-{age}" for mask in MASKS for gender in GENDERS for age in AGES)
HEADS = (MASKS, GENDERS, AGES)
# Row k: class k's index in each head.
PARTS = torch.tensor([[values.index(part) for values, part in zip(HEADS, name.split("-"))] for name in NAMES])


class MultiHead(nn.Module):
    """A timm backbone without its classifier, and a linear head per attribute."""

    def __init__(self, backbone: str, *, pretrained: bool) -> None:
        super().__init__()
        self.body = timm.create_model(backbone, pretrained=pretrained, num_classes=0)
        width = self.body.num_features
        self.heads = nn.ModuleList(nn.Linear(width, len(values)) for values in HEADS)
        self.register_buffer("parts", PARTS.clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.body(x)
        joint = 0
        for k, head in enumerate(self.heads):
            joint = joint + F.log_softmax(head(features).float(), dim=-1)[:, self.parts[:, k]]
        return joint


def _checked(num_classes: int) -> None:
    if num_classes != len(NAMES):
        raise ValueError(f"the multi-head model predicts the competition's {len(NAMES)} classes, not {num_classes}")


def build(num_classes: int) -> nn.Module:
    """Pretrained EfficientNet-B0 with the three heads."""
    _checked(num_classes)
    return MultiHead("efficientnet_b0", pretrained=True)


def build_test(num_classes: int) -> nn.Module:
    """timm's small ``test_efficientnet`` from scratch with the three heads: no download."""
    _checked(num_classes)
    return MultiHead("test_efficientnet", pretrained=False)


def loss(logits: torch.Tensor, targets: torch.Tensor, age_weight: float = 1.0, focal_gamma: float = 0.0) -> torch.Tensor:
    """The heads' summed losses, on each head's marginal of the 18 classes' logits."""
    parts = PARTS.to(logits.device)
    log_p = F.log_softmax(logits, dim=-1)
    total = logits.new_zeros(())
    for k, (values, weight) in enumerate(zip(HEADS, (1.0, 1.0, age_weight))):
        # log p(head = v): the log-sum of the joint probabilities of the classes with that value
        marginal = torch.stack([log_p[:, parts[:, k] == v].logsumexp(dim=-1) for v in range(len(values))], dim=-1)
        log_pt = marginal.gather(1, parts[targets, k][:, None]).squeeze(1)
        focal = (-torch.expm1(log_pt)).clamp(min=1e-12) ** focal_gamma if focal_gamma else 1.0
        total = total + weight * -(focal * log_pt).mean()
    return total


loss.space = {"age_weight": (0.5, 4.0, "log"), "focal_gamma": [0.0, 1.0, 2.0]}
