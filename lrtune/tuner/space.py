"""The search space. The only module that calls ``trial.suggest_*``."""

from __future__ import annotations

import math
from typing import Any

import optuna

from lrtune.config import Config, finetune_space, head_epochs_max
from lrtune.errors import ConfigError
from lrtune.training.losses import LOSSES, loss_space, probe_value
from lrtune.training.references import is_user_part, short_name
from lrtune.tuner.lr_range import lr_bounds
from lrtune.training.optimizer import LR_FREE, check_lr_free
from lrtune.training.run import Hyperparams
from lrtune.training.schedules import SCHEDULERS

# The default a user would train with and no search: the first trial of every study.
BASELINE: dict[str, Any] = {"lr": 1e-3, "scheduler": "cosine", "loss": "ce", "accum": 1}

# Ranges of the conditional parameters.
STEP_GAMMA = (0.1, 0.9)
PLATEAU_FACTOR = (0.1, 0.7)
PLATEAU_PATIENCE = (0, 3)
FOCAL_GAMMA = (0.5, 5.0)
SMOOTHING = (0.01, 0.3)


def check_space(cfg: Config) -> None:
    """Unknown scheduler, loss or baseline names (or a baseline's missing package), and a user's loss that does
    not import or declares a malformed space, fail before the first trial."""
    for kind, names, registry in (("scheduler", cfg.schedulers, SCHEDULERS), ("loss", cfg.losses, LOSSES)):
        for name in names:
            if kind == "loss" and is_user_part(name):
                loss_space(name)
            elif name not in registry:
                more = ", or a 'module:callable' reference" if kind == "loss" else ""
                raise ConfigError(f"unknown {kind} {name!r} (valid: {', '.join(registry)}{more})")
    check_lr_free(cfg.baselines)


def suggest(trial: optuna.Trial, cfg: Config) -> Hyperparams:
    """Sample one point: LR, scheduler and loss with their conditional parameters, accumulation.

    An LR-free baseline's trial (queued with its ``lr_free`` attribute) has one
    parameter, its optimizer; its recipe sets the rest.
    """
    if trial.user_attrs.get("lr_free"):
        return Hyperparams.from_dict({"optimizer": trial.suggest_categorical("optimizer", list(LR_FREE))})
    lr = trial.suggest_float("lr", *lr_bounds(trial, cfg), log=True)
    scheduler = trial.suggest_categorical("scheduler", list(cfg.schedulers))
    loss = trial.suggest_categorical("loss", list(cfg.losses))
    accum = trial.suggest_categorical("accum", list(cfg.accum))
    extra: dict[str, Any] = {}
    if scheduler == "step":
        extra["step_size"] = trial.suggest_int("step_size", 1, max(1, cfg.epochs // 2))
        extra["step_gamma"] = trial.suggest_float("step_gamma", *STEP_GAMMA)
    elif scheduler == "plateau":
        extra["plateau_factor"] = trial.suggest_float("plateau_factor", *PLATEAU_FACTOR)
        extra["plateau_patience"] = trial.suggest_int("plateau_patience", *PLATEAU_PATIENCE)
    if loss == "focal":
        extra["focal_gamma"] = trial.suggest_float("focal_gamma", *FOCAL_GAMMA)
    elif loss == "label_smoothing":
        extra["smoothing"] = trial.suggest_float("smoothing", *SMOOTHING)
    elif is_user_part(loss):
        extra["loss_options"] = _user_loss(trial, loss)
    if finetune_space(cfg):
        extra.update(_finetune(trial, cfg))
    return Hyperparams(lr=lr, scheduler=scheduler, loss=loss, accum=int(accum), **extra)


def _user_loss(trial: optuna.Trial, loss: str) -> tuple[tuple[str, Any], ...]:
    """A user's loss's declared parameters, each named ``<loss>.<parameter>`` in the trial."""
    options = []
    for key, spec in sorted(loss_space(loss).items()):
        name = f"{short_name(loss)}.{key}"
        if isinstance(spec, list):
            value = trial.suggest_categorical(name, spec)
        elif len(spec) == 2 and all(isinstance(v, int) for v in spec):
            value = trial.suggest_int(name, *spec)
        else:
            value = trial.suggest_float(name, spec[0], spec[1], log=len(spec) == 3)
        options.append((key, value))
    return tuple(options)


def _finetune(trial: optuna.Trial, cfg: Config) -> dict[str, Any]:
    """The fine-tune's dimensions: the body's LRs (``lr`` is the head's), warmup epochs, head-only epochs."""
    extra: dict[str, Any] = {}
    if cfg.body_lrs == "ratio":
        extra["body_ratio"] = trial.suggest_float("body_ratio", *cfg.body_ratio, log=True)
    else:
        extra["layer_decay"] = trial.suggest_float("layer_decay", *cfg.layer_decay)
    extra["warmup_epochs"] = trial.suggest_float("warmup_epochs", 0.0, cfg.warmup_max)
    extra["head_epochs"] = trial.suggest_int("head_epochs", 0, head_epochs_max(cfg))
    return extra


def range_test_body(cfg: Config) -> dict[str, float]:
    """Where the range test holds the body while it sweeps the head's LR: the middle of the searched range
    (geometric for the ratio); nothing outside the fine-tune space."""
    if not finetune_space(cfg):
        return {}
    if cfg.body_lrs == "ratio":
        low, high = cfg.body_ratio
        return {"body_ratio": math.sqrt(low * high)}
    low, high = cfg.layer_decay
    return {"layer_decay": (low + high) / 2}


def baseline_params(cfg: Config) -> dict[str, Any]:
    """BASELINE moved into the configured space where the space excludes it. In the fine-tune space, the
    baseline fine-tunes as a user would without a search: one LR for all, the config's warmup, no head-only
    epochs."""
    params = {
        "lr": min(max(BASELINE["lr"], cfg.lr_min), cfg.lr_max),
        "scheduler": BASELINE["scheduler"] if BASELINE["scheduler"] in cfg.schedulers else cfg.schedulers[0],
        "loss": BASELINE["loss"] if BASELINE["loss"] in cfg.losses else cfg.losses[0],
        "accum": BASELINE["accum"] if BASELINE["accum"] in cfg.accum else min(cfg.accum),
    }
    if is_user_part(params["loss"]):  # a user's loss's parameters at the middle of their ranges
        params.update({f"{short_name(params['loss'])}.{key}": probe_value(spec)
                       for key, spec in loss_space(params["loss"]).items()})
    if finetune_space(cfg):
        body = {"body_ratio": cfg.body_ratio[1]} if cfg.body_lrs == "ratio" else {"layer_decay": cfg.layer_decay[1]}
        params.update(body, warmup_epochs=min(cfg.warmup_epochs, cfg.warmup_max), head_epochs=0)
    return params
