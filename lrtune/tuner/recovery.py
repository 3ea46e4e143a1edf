"""Recovery of trials whose worker died: on this host at once, on other hosts by heartbeat."""

from __future__ import annotations

import os
import socket

import optuna
import psutil
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from lrtune.config import Config
from lrtune.tuner import faults
from lrtune.storage import Heartbeat


def retry_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a trial whose process died again with the same parameters (the retry continues its checkpoint),
    unless a retry of it is queued already; a death counts as a fault of the machine (``faults.MAX_FAULTS``)."""
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    if any(t.user_attrs.get("retry_of") == trial.number for t in waiting):
        return
    faults.retry(study, trial, trial.user_attrs.get("seed"), fault=True)


def heartbeat(cfg: Config) -> Heartbeat:
    """Heartbeats for a searching storage: a trial silent for ``cfg.heartbeat_grace`` s is failed and queued again."""
    return Heartbeat(interval=cfg.heartbeat_interval, grace=cfg.heartbeat_grace, on_stale=retry_trial)


def _owner_is_dead(trial: FrozenTrial) -> bool:
    """True when the trial ran on this host in a process that no longer exists."""
    if trial.user_attrs.get("host") != socket.gethostname() or "pid" not in trial.user_attrs:
        return False
    pid = int(trial.user_attrs["pid"])
    if pid == os.getpid():
        return True
    try:
        status = psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return True
    return status == psutil.STATUS_ZOMBIE


def recover_orphans(study: optuna.Study) -> list[int]:
    """Fail and re-queue RUNNING trials whose process on this host is gone.

    Trials of other machines are left to the heartbeat. The state change is
    atomic in the database, so when several workers race only one re-queues.
    """
    recovered = []
    storage = study._storage
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _owner_is_dead(trial):
            continue
        spent = faults.retry_attrs(trial, None, fault=True).get("faults", 0) >= faults.MAX_FAULTS
        reason = "worker died" + (f" ({faults.MAX_FAULTS} faults of the machine: counted as failed)" if spent else "")
        try:
            storage.set_trial_user_attr(trial._trial_id, "reason", reason)
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue
        if not spent:
            retry_trial(study, trial)
            recovered.append(trial.number)
    return recovered
