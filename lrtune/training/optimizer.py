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
    groups: list[dict[str, Any]] | None = None,
) -> torch.optim.Optimizer:
    """The fused step does the same update as the default per-parameter loop,
    several times faster (about 8x for AdamW on a small model on the CPU).

    ``total_steps`` sizes an LR-free optimizer's own warmup; ``groups`` (``param_groups``) give parts of the
    model their own share of the LR.
    """
    if name in LR_FREE:
        return _lr_free(model, name, lr=lr, weight_decay=weight_decay, total_steps=total_steps)
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r} (valid: {', '.join(OPTIMIZERS)})")
    device = next(model.parameters()).device.type
    fused = {"fused": True} if device in FUSED_DEVICES else {}
    params: Any = groups if groups is not None else model.parameters()
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay, **fused
        )
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **fused)


def head_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The classifier's parameters (timm's ``get_classifier``); the rest of the model is its body."""
    classifier = model.get_classifier() if callable(getattr(model, "get_classifier", None)) else None
    if not isinstance(classifier, torch.nn.Module) or not list(classifier.parameters()):
        raise ConfigError(f"{type(model).__name__} has no classifier head to tell from its body")
    return list(classifier.parameters())


def param_groups(model: torch.nn.Module, *, body_ratio: float = 1.0, layer_decay: float = 1.0, joins_at: int = 0,
                 ramp: int = 0) -> list[dict[str, Any]] | None:
    """The optimizer's groups of a fine-tune: the head at the LR (``lr_scale`` 1), the body at ``body_ratio`` of
    it, or each of timm's layer groups at ``layer_decay`` to the power of its distance from the head. A body
    that joins after ``joins_at`` steps (head-only epochs) ramps up over ``ramp`` steps from then. None when
    every parameter trains at the LR."""
    if body_ratio == 1.0 and layer_decay == 1.0:
        return None
    head = head_parameters(model)
    ids = {id(p) for p in head}
    body: list[dict[str, Any]]
    if layer_decay != 1.0:
        from timm.optim._param_groups import param_groups_layer_decay

        decayed = param_groups_layer_decay(model, weight_decay=0.0, layer_decay=layer_decay,
                                           weight_decay_exclude_1d=False)
        body = [{"params": kept, "lr_scale": g["lr_scale"]} for g in decayed
                if (kept := [p for p in g["params"] if id(p) not in ids])]
    else:
        body = [{"params": [p for p in model.parameters() if id(p) not in ids], "lr_scale": body_ratio}]
    for group in body:
        group.update(joins_at=joins_at, ramp=ramp if joins_at else 0)
    return [*body, {"params": head, "lr_scale": 1.0, "head": True}]


def train_body(model: torch.nn.Module, on: bool) -> None:
    """Let the body (all but the head) train, or hold it still: its parameters get no gradient, so the optimizer
    leaves them and their state as they are."""
    ids = {id(p) for p in head_parameters(model)}
    for p in model.parameters():
        if id(p) not in ids:
            p.requires_grad_(on)


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
