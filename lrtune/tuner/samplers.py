"""Samplers and pruners by name: plain-dict registries and their factories."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import optuna

from lrtune.config import Config
from lrtune.errors import ConfigError
from lrtune.storage import resilient

MEDIAN_STARTUP_TRIALS = 5
HYPERBAND_MIN_EPOCHS = 2  # the shortest rung: a trial trains at least this many epochs
STARTUP_TRIALS = 10  # random trials before TPE or GP model the space


def tpe(seed: int, startup: int = STARTUP_TRIALS) -> optuna.samplers.BaseSampler:
    """Multivariate TPE over the space's conditional groups, after ``startup`` random trials."""
    return TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=startup)


class TPESampler(optuna.samplers.TPESampler):
    """Optuna's TPE, reading the study's trials once per trial.

    With ``constant_liar`` (on by default), Optuna's TPE reads every trial of
    the study again for each group of the space and for each parameter it
    samples on its own, so that other workers' running trials count. Here all
    of them use the list the trial's ``ask`` read, running trials included,
    which is at most the trial's own suggestions old. With one worker the
    samples are the same as Optuna's.
    """

    def sample_relative(self, study: optuna.Study, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
        return super().sample_relative(_ReadOnce(study), trial, search_space)  # type: ignore[arg-type]

    def sample_independent(self, study: optuna.Study, trial: Any, param_name: str, param_distribution: Any) -> Any:
        return super().sample_independent(_ReadOnce(study), trial, param_name, param_distribution)  # type: ignore[arg-type]


class _ReadOnce:
    """A study whose trials, however asked for, come from the list this thread's ``ask`` read."""

    def __init__(self, study: optuna.Study) -> None:
        self._study = study

    def _get_trials(self, deepcopy: bool = False, states: Any = None, use_cache: bool = False) -> list[Any]:
        return self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


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


@dataclass(frozen=True)
class _Curve:
    """A complete trial as the median pruner reads it: its intermediate values."""

    intermediate_values: dict[int, float]


class _CompleteTrials:
    """A study whose complete trials, as the median pruner asks for them, are given."""

    def __init__(self, study: optuna.Study, complete: list[_Curve]) -> None:
        self._study, self._complete = study, complete

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[Any]:
        if states is not None and tuple(states) == (optuna.trial.TrialState.COMPLETE,) and not deepcopy:
            return self._complete
        return self._study.get_trials(deepcopy=deepcopy, states=states)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


class MedianPruner(optuna.pruners.MedianPruner):
    """Optuna's median pruner, reading only what it needs: the complete trials' intermediate values.

    On lrtune's storage it reads the ids of the study's complete trials at a
    trial's first decision and then at most every ``REREAD_S`` seconds, and
    the curve of each complete trial once: a complete trial never changes.
    Optuna's pruner loads every unfinished trial of the study, with all its
    attributes, at every decision. With one worker the decisions are Optuna's;
    with several, a trial another worker completes counts from the next read.

    In a fused group (``ahead``) a trial is also judged against the group's
    running trials numbered before it, as if complete: a solo search would
    have finished those before starting it. A decision at an epoch reads only
    that epoch's values, which such a trial, a pass or more ahead, already has.
    So the first ``startup`` trials (which a solo search never prunes: fewer
    are complete before each) count from their first epoch, and the trials
    beside them are judged as a solo search judges them; later, a running
    trial that the pruner would still stop counts as if it were not. Without
    this, a group's short pruned trials would all be judged against the few
    trials complete when they began, while its long ones still run.
    """

    REREAD_S = 10.0

    def __init__(self, *, n_startup_trials: int = MEDIAN_STARTUP_TRIALS, **kwargs: Any) -> None:
        super().__init__(n_startup_trials=n_startup_trials, **kwargs)
        self._lock = threading.Lock()
        self._curves: dict[tuple[int, int], _Curve] = {}  # (study id, trial id) -> its curve
        self._complete: dict[int, list[int]] = {}  # study id -> ids of its complete trials, when last read
        self._read: tuple[int, int, float] | None = None  # (study id, trial number, time) of the last read
        self._ahead: dict[tuple[int, int], Callable[[], dict[int, float]]] = {}  # (study id, number) -> its curve

    @contextlib.contextmanager
    def ahead(self, study_id: int, number: int, curve: Callable[[], dict[int, float]]) -> Iterator[None]:
        """Within, trial ``number`` runs in a fused group: later-numbered trials' decisions count ``curve()``."""
        with self._lock:
            self._ahead[study_id, number] = curve
        try:
            yield
        finally:
            with self._lock:
                self._ahead.pop((study_id, number), None)

    def reread(self) -> None:
        """Read the complete trials again at the next decision: a trial of this process's fused group ended.

        (A fused group's decisions read them only then, or after ``REREAD_S``: its running trials are ``ahead``.)
        """
        with self._lock:
            self._read = None

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        complete = self._complete_curves(study, trial)
        with self._lock:
            running = [curve for (study_id, number), curve in self._ahead.items()
                       if study_id == study._study_id and number < trial.number]
        return super().prune(_CompleteTrials(study, [*complete, *(_Curve(curve()) for curve in running)]), trial)

    def _complete_curves(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> list[Any]:
        backend = resilient(study._storage)
        if backend is None:
            return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        study_id, now = study._study_id, time.monotonic()
        with self._lock:
            if (self._read is None or self._read[0] != study_id or now - self._read[2] >= self.REREAD_S
                    or (self._read[1] != trial.number and not self._ahead)):
                ids = backend.trial_ids(study_id, (optuna.trial.TrialState.COMPLETE,))
                new = [i for i in ids if (study_id, i) not in self._curves]
                for trial_id, values in backend.intermediate_values(new).items():
                    self._curves[study_id, trial_id] = _Curve(values)
                self._complete[study_id], self._read = ids, (study_id, trial.number, now)
            return [self._curves[study_id, i] for i in self._complete[study_id]]


PRUNERS: dict[str, Callable[[int, int], optuna.pruners.BasePruner]] = {
    "median": lambda warmup, epochs: MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=warmup),
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
