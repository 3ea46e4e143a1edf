"""The optimizer: AdamW, or SGD with Nesterov momentum, fused into one kernel where the device has one;
and the LR-free optimizers a search can run as fixed baselines (``--baselines``), each with its authors' settings.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import itertools
from dataclasses import dataclass
from typing import Any, Iterable

import torch

from lrtune.errors import ConfigError

OPTIMIZERS = ("adamw", "sgd")

# Where PyTorch has fused AdamW and SGD kernels: CUDA and the CPU since torch
# 2.4, used from 2.8, the first release where other projects found them mature.
FUSED_DEVICES = ("cpu", "cuda") if torch.__version__ >= "2.8" else ()


@dataclass(frozen=True)
class LrFree:
    """An optimizer that sets its own step size, and the recipe its authors recommend; nothing of it is tuned."""

    package: str  # on the package index, and the module it installs
    lr: float  # its own default
    scheduler: str  # cosine (Prodigy's authors recommend annealing) or constant (Schedule-Free needs none)
    warmup_share: float = 0.0  # of all optimizer steps, warmed up by the optimizer itself


LR_FREE: dict[str, LrFree] = {
    "prodigy": LrFree("prodigyopt", lr=1.0, scheduler="cosine"),
    "schedulefree": LrFree("schedulefree", lr=0.0025, scheduler="constant", warmup_share=0.05),
}
BN_BATCHES = 50  # training batches that refresh BatchNorm statistics for Schedule-Free's averaged weights


def check_lr_free(names: Iterable[str]) -> None:
    """Unknown names, or a package that is not installed, fail with one line before any trial."""
    for name in names:
        if name not in LR_FREE:
            raise ConfigError(f"unknown baseline {name!r} (valid: {', '.join(LR_FREE)})")
        _module(name)


def _module(name: str) -> Any:
    package = LR_FREE[name].package
    try:
        return importlib.import_module(package)
    except ImportError:
        raise ConfigError(f"the {name} baseline needs the {package} package: pip install -e '.[baselines]'") from None


def create_optimizer(
    model: torch.nn.Module,
    *,
    name: str,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    total_steps: int = 0,
) -> torch.optim.Optimizer:
    """The fused step does the same update as the default per-parameter loop,
    several times faster (about 8x for AdamW on a small model on the CPU).

    ``total_steps`` sizes an LR-free optimizer's own warmup.
    """
    if name in LR_FREE:
        return _lr_free(model, name, lr=lr, weight_decay=weight_decay, total_steps=total_steps)
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r} (valid: {', '.join(OPTIMIZERS)})")
    device = next(model.parameters()).device.type
    fused = {"fused": True} if device in FUSED_DEVICES else {}
    if name == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay, **fused
        )
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, **fused)


def _lr_free(model: torch.nn.Module, name: str, *, lr: float, weight_decay: float, total_steps: int) -> Any:
    module = _module(name)
    if name == "prodigy":
        with contextlib.redirect_stdout(io.StringIO()):  # it prints a line about its weight decay
            return module.Prodigy(model.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = round(LR_FREE[name].warmup_share * total_steps)
    optimizer = module.AdamWScheduleFree(model.parameters(), lr=lr, weight_decay=weight_decay, warmup_steps=warmup)
    optimizer.train()
    return optimizer


def for_training(optimizer: torch.optim.Optimizer) -> None:
    """Before training steps: an optimizer with train/eval modes (Schedule-Free) puts its training weights back."""
    if callable(getattr(optimizer, "train", None)):
        optimizer.train()


def for_evaluation(optimizer: torch.optim.Optimizer, model: torch.nn.Module, batches: Iterable[Any],
                   prepare: Any) -> None:
    """After an epoch: an optimizer with train/eval modes (Schedule-Free) puts its averaged weights in the model,
    which evaluation, checkpoints and the kept weights then hold.

    BatchNorm statistics were gathered with the training weights; the authors
    refresh them with the averaged ones from up to ``BN_BATCHES`` training
    batches (``prepare`` turns a batch into model input).
    """
    if not callable(getattr(optimizer, "eval", None)):
        return
    optimizer.eval()
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return
    training = model.training
    model.train()
    with torch.no_grad():
        for images, _ in itertools.islice(batches, BN_BATCHES):
            model(prepare(images))
    model.train(training)
