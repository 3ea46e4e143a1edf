"""Synthetic lrtune studies with the attributes a real search stores, for tests and benchmarks."""

from __future__ import annotations

import datetime
import math
import random
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

CLASSES = [str(i) for i in range(10)]
SCHEDULERS = ["step", "cosine", "plateau"]
LOSSES = ["ce", "focal", "label_smoothing", "f1"]
ACCUM = [1, 2, 4, 8]
BASELINE = {"lr": 0.001, "scheduler": "cosine", "loss": "ce", "accum": 1}
START = datetime.datetime(2026, 1, 5, 9, 0, 0)

DISTRIBUTIONS = {
    "lr": FloatDistribution(1e-5, 1.0, log=True),
    "scheduler": CategoricalDistribution(SCHEDULERS),
    "loss": CategoricalDistribution(LOSSES),
    "accum": CategoricalDistribution(ACCUM),
    "step_size": IntDistribution(1, 10),
    "step_gamma": FloatDistribution(0.1, 0.9),
    "plateau_factor": FloatDistribution(0.1, 0.9),
    "plateau_patience": IntDistribution(1, 5),
    "focal_gamma": FloatDistribution(0.5, 5.0),
    "smoothing": FloatDistribution(0.0, 0.3),
}


def study_attrs(classes: list[str] = CLASSES, *, epochs: int = 10, batch_size: int = 32) -> dict[str, Any]:
    n = len(classes)
    train_counts = [max(5, 200 // (i + 1)) for i in range(n)]
    val_counts = [max(2, c // 4) for c in train_counts]
    config = {
        "data": "digits-lt",
        "model": "test_resnet",
        "epochs": epochs,
        "batch_size": batch_size,
        "image_size": 16,
        "optimizer": "adamw",
        "weight_decay": 0.01,
        "warmup_epochs": 0.0,
        "lr_min": 1e-5,
        "lr_max": 1.0,
        "schedulers": SCHEDULERS,
        "losses": LOSSES,
        "accum": ACCUM,
        "sampler": "tpe",
        "pruner": "median",
        "seed": 0,
        "storage": "postgresql://lrtune:hunter2@db.example/lrtune",
    }
    return {
        "config": config,
        "fingerprint": "0123456789abcdef",
        "dataset": {
            "name": "digits-lt",
            "classes": list(classes),
            "n_train": sum(train_counts),
            "n_val": sum(val_counts),
            "train_counts": train_counts,
            "val_counts": val_counts,
            "image_size": 16,
        },
        "baseline": dict(BASELINE),
        "lr_range": lr_range_record(),
    }


def lr_range_record(steps: int = 100) -> dict[str, Any]:
    """A range test as ``lrtune search --lr-range auto`` stores it: falling fastest near 3e-3, diverging past 0.3."""
    lrs = [1e-7 * 1e8 ** (i / (steps - 1)) for i in range(steps)]
    losses = [2.3 - 1.8 / (1 + math.exp(-2.5 * (math.log10(lr) + 2.5))) + 4 * max(0.0, math.log10(lr) + 0.5) ** 2
              for lr in lrs]
    smoothed, avg = [], 0.0
    for i, loss in enumerate(losses):
        avg = 0.9 * avg + 0.1 * loss
        smoothed.append(avg / (1 - 0.9 ** (i + 1)))
    return {
        "lrs": lrs,
        "losses": losses,
        "smoothed": smoothed,
        "suggestions": {"steepest": 4e-3, "valley": 2e-3, "min/10": 2.5e-2},
        "suggestion": 4e-3,
        "rule": "steepest (the middle of valley, steepest, min/10)",
        "stop": "stopped at LR 0.9: smoothed loss over 4x its minimum",
        "start": 1e-7,
        "end": 10.0,
        "steps": steps,
        "skipped": 0,
        "setup": {"loss": "ce", "accum": 1, "batch_size": 32},
        "bounds": [4e-4, 4e-2],
    }


def _quality(params: dict[str, Any]) -> float:
    """A smooth made-up macro-F1 that peaks near an effective LR of 3e-3."""
    log_lr = math.log10(params["lr"] / math.sqrt(params["accum"]))
    bonus = {"cosine": 0.03, "step": 0.0, "plateau": 0.01}[params["scheduler"]]
    return max(0.02, 0.9 - 0.12 * (log_lr + 2.5) ** 2 + bonus)


def make_trial(
    number: int,
    *,
    state: TrialState = TrialState.COMPLETE,
    params: dict[str, Any] | None = None,
    value: float | None = None,
    epochs: int = 10,
    classes: list[str] = CLASSES,
    batch_size: int = 32,
    baseline: bool = False,
    reason: str | None = None,
    stop_epoch: int | None = None,
    bare: bool = False,
    distributions: dict[str, Any] | None = None,
    rng: random.Random | None = None,
) -> FrozenTrial:
    """One trial as lrtune's objective leaves it; ``bare`` drops every user attribute.

    A given ``value`` is stored exactly (the curves only approach it).
    """
    rng = rng or random.Random(number)
    params = dict(params) if params else random_params(rng)
    target = value if value is not None else _quality(params) * rng.uniform(0.9, 1.0)
    if state == TrialState.PRUNED:
        stop_epoch = stop_epoch or rng.randint(2, max(2, epochs - 1))
        reason = reason or f"pruned at epoch {stop_epoch}"
    elif state == TrialState.FAIL:
        stop_epoch = stop_epoch if stop_epoch is not None else rng.choice([0, 2])
        reason = reason or ("out of memory" if stop_epoch == 0 else f"diverged: non-finite loss at epoch {stop_epoch}")
    elif state in (TrialState.RUNNING, TrialState.WAITING):
        stop_epoch = stop_epoch if stop_epoch is not None else (0 if state == TrialState.WAITING else epochs // 2)
    n_epochs = epochs if stop_epoch is None else min(stop_epoch, epochs)

    val_f1 = [
        round(target * (1 - 0.8 * math.exp(-0.6 * e)) + rng.uniform(-0.01, 0.01), 4) for e in range(1, epochs + 1)
    ]
    best_epoch = max(range(epochs), key=lambda i: val_f1[i]) + 1
    val_f1 = val_f1[:n_epochs]
    intermediate = {e + 1: v for e, v in enumerate(val_f1)}
    lrs = [params["lr"] * 0.5 * (1 + math.cos(math.pi * e / epochs)) for e in range(n_epochs)]
    curves = {
        "epoch": list(range(1, n_epochs + 1)),
        "train_loss": [round(2.3 * math.exp(-0.3 * e), 4) for e in range(n_epochs)],
        "val_loss": [round(2.3 * math.exp(-0.25 * e) + 0.1, 4) for e in range(n_epochs)],
        "val_f1": val_f1,
        "val_acc": [min(1.0, v + 0.05) for v in val_f1],
        "lr": lrs,
    }
    steps_per_epoch = 50 // params["accum"]
    total = n_epochs * steps_per_epoch
    every = max(1, math.ceil(total / 500))
    cosine = [0.5 * (1 + math.cos(math.pi * s / max(1, epochs * steps_per_epoch))) for s in range(0, total, every)]
    lr_steps = [[s, params["lr"] * c] for s, c in zip(range(0, total, every), cosine)]

    user_attrs: dict[str, Any] = {}
    if not bare:
        user_attrs = {"effective_batch": batch_size * params["accum"], "host": "node-1", "pid": 4242}
        if n_epochs:
            user_attrs["curves"] = curves
            user_attrs["lr_steps"] = lr_steps
        if baseline:
            user_attrs["baseline"] = True
        if reason:
            user_attrs["reason"] = reason
        if state == TrialState.COMPLETE:
            macro_f1 = value if value is not None else val_f1[best_epoch - 1]
            user_attrs["best"] = best_scores(classes, macro_f1, best_epoch, rng)

    final_value = None
    if state == TrialState.COMPLETE:
        final_value = value if value is not None else max(val_f1)
    elif state == TrialState.PRUNED and val_f1:
        final_value = val_f1[-1]
    trial = optuna.trial.create_trial(
        state=state,
        value=final_value,
        params=params,
        distributions={k: (distributions or {}).get(k) or DISTRIBUTIONS[k] for k in params},
        user_attrs=user_attrs,
        intermediate_values=intermediate,
    )
    if state != TrialState.WAITING:
        trial.datetime_start = START + datetime.timedelta(minutes=3 * number)
    if state.is_finished():
        trial.datetime_complete = trial.datetime_start + datetime.timedelta(seconds=20 + 15 * n_epochs)
    return trial


def random_params(rng: random.Random) -> dict[str, Any]:
    params: dict[str, Any] = {
        "lr": 10 ** rng.uniform(-5, 0),
        "scheduler": rng.choice(SCHEDULERS),
        "loss": rng.choice(LOSSES),
        "accum": rng.choice(ACCUM),
    }
    if params["scheduler"] == "step":
        params["step_size"] = rng.randint(1, 10)
        params["step_gamma"] = rng.uniform(0.1, 0.9)
    elif params["scheduler"] == "plateau":
        params["plateau_factor"] = rng.uniform(0.1, 0.9)
        params["plateau_patience"] = rng.randint(1, 5)
    if params["loss"] == "focal":
        params["focal_gamma"] = rng.uniform(0.5, 5.0)
    elif params["loss"] == "label_smoothing":
        params["smoothing"] = rng.uniform(0.0, 0.3)
    return params


def best_scores(classes: list[str], macro_f1: float, epoch: int, rng: random.Random) -> dict[str, Any]:
    n = len(classes)
    support = [max(2, 50 // (i + 1)) for i in range(n)]
    recall = [min(1.0, max(0.0, macro_f1 + rng.uniform(-0.15, 0.1))) for _ in range(n)]
    precision = [min(1.0, max(0.0, macro_f1 + rng.uniform(-0.15, 0.1))) for _ in range(n)]
    f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in zip(precision, recall)]
    confusion = []
    for i in range(n):
        hit = round(support[i] * recall[i])
        row = [0] * n
        row[i] = hit
        row[(i + 1) % n] += support[i] - hit
        confusion.append(row)
    return {
        "epoch": epoch,
        "macro_f1": macro_f1,
        "accuracy": sum(confusion[i][i] for i in range(n)) / sum(support),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support,
        "confusion": confusion,
    }


def make_study(
    storage: str | optuna.storages.BaseStorage,
    name: str,
    trials: int | list[dict[str, Any]] = 0,
    *,
    classes: list[str] = CLASSES,
    epochs: int = 10,
    seed: int = 0,
    start_offset_min: int = 0,
) -> optuna.Study:
    """A maximize study with lrtune's study attributes and ``trials``.

    ``trials`` is a count (a realistic mix: the baseline first, then mostly
    complete, some pruned, a few failed) or a list of keyword dicts for
    :func:`make_trial`, ``number`` filled in.
    """
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    for key, value in study_attrs(classes, epochs=epochs).items():
        study.set_user_attr(key, value)
    rng = random.Random(seed)
    if isinstance(trials, int):
        specs: list[dict[str, Any]] = []
        for i in range(trials):
            if i == 0:
                specs.append({"params": dict(BASELINE), "baseline": True})
                continue
            roll = rng.random()
            state = TrialState.COMPLETE if roll < 0.7 else TrialState.PRUNED if roll < 0.95 else TrialState.FAIL
            specs.append({"state": state})
    else:
        specs = trials
    frozen = []
    for i, spec in enumerate(specs):
        spec = {"epochs": epochs, "classes": classes, "rng": random.Random(seed * 100_003 + i), **spec}
        trial = make_trial(i, **spec)
        if trial.datetime_start is not None:
            trial.datetime_start += datetime.timedelta(minutes=start_offset_min)
        if trial.datetime_complete is not None:
            trial.datetime_complete += datetime.timedelta(minutes=start_offset_min)
        frozen.append(trial)
    study.add_trials(frozen)
    return study
