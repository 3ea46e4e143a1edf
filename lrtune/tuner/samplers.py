"""Samplers and pruners by name: plain-dict registries and their factories."""

from __future__ import annotations

import os
import socket
import zlib
from typing import Callable

import optuna

from lrtune.config import Config
from lrtune.errors import ConfigError

MEDIAN_STARTUP_TRIALS = 5
HYPERBAND_MIN_EPOCHS = 2  # the shortest rung: a trial trains at least this many epochs
STARTUP_TRIALS = 10  # random trials before TPE or GP model the space


def tpe(seed: int, startup: int = STARTUP_TRIALS) -> optuna.samplers.BaseSampler:
    """Multivariate TPE over the space's conditional groups, after ``startup`` random trials."""
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=startup)


SAMPLERS: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    "tpe": tpe,
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
    "gp": lambda seed: optuna.samplers.GPSampler(seed=seed, n_startup_trials=STARTUP_TRIALS),
    "qmc": lambda seed: optuna.samplers.QMCSampler(seed=seed, scramble=True),
}


def create_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r} (valid: {', '.join(SAMPLERS)})")
    return SAMPLERS[name](seed)


PRUNERS: dict[str, Callable[[int, int], optuna.pruners.BasePruner]] = {
    "median": lambda warmup, epochs: optuna.pruners.MedianPruner(
        n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=warmup
    ),
    "hyperband": lambda warmup, epochs: optuna.pruners.HyperbandPruner(
        min_resource=min(HYPERBAND_MIN_EPOCHS, epochs), max_resource=epochs, reduction_factor=3
    ),
    "none": lambda warmup, epochs: optuna.pruners.NopPruner(),
}


def create_pruner(name: str, *, warmup: int, epochs: int) -> optuna.pruners.BasePruner:
    if name not in PRUNERS:
        raise ConfigError(f"unknown pruner {name!r} (valid: {', '.join(PRUNERS)})")
    return PRUNERS[name](warmup, epochs)


def check_names(cfg: Config) -> None:
    """An unknown sampler or pruner fails before anything is opened or loaded."""
    create_sampler(cfg.sampler, cfg.seed)
    create_pruner(cfg.pruner, warmup=cfg.pruner_warmup, epochs=cfg.epochs)


def sampler_seed(cfg: Config, study: optuna.Study, worker: int = 0) -> int:
    """A seed that differs per run and per worker, so a resumed random sampler does not replay old points.

    A process that joins a study other processes (on any machine) are running
    adds its host and process id, so it does not draw their points.
    """
    trials = study.get_trials(deepcopy=False)
    seed = cfg.seed + len(trials) + 7919 * worker
    if any(t.state == optuna.trial.TrialState.RUNNING for t in trials):
        seed += zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode()) % 1_000_003
    return seed


def attach(study: optuna.Study, cfg: Config, worker: int = 0) -> None:
    """Give a loaded study this run's sampler and pruner (neither is stored with a study)."""
    study.sampler = create_sampler(cfg.sampler, sampler_seed(cfg, study, worker))
    study.pruner = create_pruner(cfg.pruner, warmup=cfg.pruner_warmup, epochs=cfg.epochs)
