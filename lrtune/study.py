"""Storages, samplers, pruners and the budget of trials."""

from __future__ import annotations

import os
import re
import socket
import sqlite3
from pathlib import Path
from typing import Any, Callable

import optuna
import psutil
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import event

from lrtune import config as config_mod
from lrtune.config import DIGITS_SETS, Config
from lrtune.errors import LRTuneError

DB_NAME = "lrtune.db"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
HEARTBEAT_INTERVAL = 10  # seconds between a running trial's heartbeats
GRACE_PERIOD = 60  # a trial silent this long on another machine is taken as dead
MEDIAN_STARTUP_TRIALS = 5


def default_storage_url(studies_dir: str | Path) -> str:
    return f"sqlite:///{Path(studies_dir) / DB_NAME}"


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***``, fit for logs and reports."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def _prepare_sqlite(url: str) -> None:
    """Create the file's folder and switch the database to WAL.

    WAL lets readers (``lrtune report``) work while a search writes, and lets
    several local workers share one file without "database is locked".
    """
    path = url.removeprefix("sqlite:///")
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(path, timeout=60) as conn:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
    except (sqlite3.Error, OSError) as exc:
        raise LRTuneError(f"cannot open storage {url}: {exc}") from None


def open_storage(url: str, *, heartbeat: bool = False) -> RDBStorage:
    """Open (creating if needed) the study database at ``url``.

    With ``heartbeat``, running trials send heartbeats, and a trial whose
    worker went silent is failed and re-queued by whichever worker notices.
    """
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:"):
        _prepare_sqlite(url)
        engine_kwargs = {"connect_args": {"timeout": 120}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    try:
        extra: dict[str, Any] = {}
        if heartbeat:
            extra = {
                "heartbeat_interval": HEARTBEAT_INTERVAL,
                "grace_period": GRACE_PERIOD,
                "heartbeat_stale_trial_callback": retry_trial,
            }
        storage = RDBStorage(url, engine_kwargs=engine_kwargs, **extra)
    except Exception as exc:  # SQLAlchemy and drivers raise many types for a bad URL
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LRTuneError(f"cannot open storage {mask_url(url)}: {reason}") from None
    if url.startswith("sqlite:"):
        # WAL with synchronous=NORMAL: a commit survives any crash of the process,
        # and costs half as much as with a sync of the file on every commit.
        event.listen(storage.engine, "connect", _sqlite_normal_sync)
        storage.engine.dispose()
    return storage


def _sqlite_normal_sync(connection: Any, record: Any) -> None:
    connection.execute("PRAGMA synchronous=NORMAL")



def study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    return [s.study_name for s in storage.get_all_studies()]


def latest_study_name(storage: optuna.storages.BaseStorage) -> str | None:
    """The study whose last trial started or finished most recently; studies without trials come last."""
    best: tuple[float, int, str] | None = None
    for order, summary in enumerate(storage.get_all_studies()):
        stamps = [
            (t.datetime_complete or t.datetime_start).timestamp()
            for t in storage.get_all_trials(summary._study_id, deepcopy=False)
            if (t.datetime_complete or t.datetime_start) is not None
        ]
        key = (max(stamps) if stamps else float("-inf"), order, summary.study_name)
        if best is None or key > best:
            best = key
    return best[2] if best else None


def load_study(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study:
    names = study_names(storage)
    if name not in names:
        listed = ", ".join(names) if names else "none"
        raise LRTuneError(f"unknown study {name!r} (existing studies: {listed})")
    return optuna.load_study(study_name=name, storage=storage)


def default_study_name(cfg: Config) -> str:
    data = cfg.data if cfg.data in DIGITS_SETS else Path(cfg.data.rstrip("/\\")).stem or "data"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{data}-{cfg.model}")


def study_dir(studies_dir: str | Path, study_name: str) -> Path:
    """Artifacts of one study (report, trial checkpoints and weights), always inside ``studies_dir``."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", study_name).lstrip(".") or "_"
    return Path(studies_dir) / safe


# -- samplers and pruners ----------------------------------------------------


def _tpe(seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=10)


SAMPLERS: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    "tpe": _tpe,
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
    "gp": lambda seed: optuna.samplers.GPSampler(seed=seed, n_startup_trials=10),
    "qmc": lambda seed: optuna.samplers.QMCSampler(seed=seed, scramble=True),
}


def create_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name not in SAMPLERS:
        raise LRTuneError(f"unknown sampler {name!r} (valid: {', '.join(SAMPLERS)})")
    return SAMPLERS[name](seed)


PRUNERS: dict[str, Callable[[int, int], optuna.pruners.BasePruner]] = {
    "median": lambda warmup, epochs: optuna.pruners.MedianPruner(
        n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=warmup
    ),
    "hyperband": lambda warmup, epochs: optuna.pruners.HyperbandPruner(
        min_resource=1, max_resource=epochs, reduction_factor=3
    ),
    "none": lambda warmup, epochs: optuna.pruners.NopPruner(),
}


def create_pruner(name: str, *, warmup: int, epochs: int) -> optuna.pruners.BasePruner:
    if name not in PRUNERS:
        raise LRTuneError(f"unknown pruner {name!r} (valid: {', '.join(PRUNERS)})")
    return PRUNERS[name](warmup, epochs)


def check_names(cfg: Config) -> None:
    create_sampler(cfg.sampler, cfg.seed)
    create_pruner(cfg.pruner, warmup=cfg.pruner_warmup, epochs=cfg.epochs)


# -- budget and recovery -------------------------------------------------------


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def retry_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a failed trial again with the same parameters; the retry continues its checkpoint."""
    attrs = {"retry_of": trial.number}
    if "seed" in trial.user_attrs:
        attrs["seed"] = trial.user_attrs["seed"]
    study.enqueue_trial(dict(trial.params), user_attrs=attrs)


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
        try:
            storage.set_trial_user_attr(trial._trial_id, "reason", "worker died")
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue
        retry_trial(study, trial)
        recovered.append(trial.number)
    return recovered


def check_config(study: optuna.Study, cfg: Config) -> None:
    """Store the resolved config on a new study; refuse a resume with another one unless ``force``."""
    stored = study.user_attrs.get("config")
    current = config_mod.to_dict(cfg)
    if stored is not None and config_mod.fingerprint(stored) != config_mod.fingerprint(current):
        changes = config_mod.diff(stored, current)
        if not cfg.force:
            raise LRTuneError(
                f"study {study.study_name!r} was made with another config ({'; '.join(changes)}); "
                "use the same options to resume it, --force to resume anyway, or --study NAME for a new study"
            )
        history = list(study.user_attrs.get("config_history", []))
        history.append({"config": stored, "changes": changes})
        study.set_user_attr("config_history", history)
    if stored is None or config_mod.fingerprint(stored) != config_mod.fingerprint(current):
        study.set_user_attr("config", current)
        study.set_user_attr("fingerprint", config_mod.fingerprint(current))


# -- running a search ----------------------------------------------------------


def top_trials(study: optuna.Study, n: int = 10) -> list[FrozenTrial]:
    """Finished trials with a value, best first."""
    return _best_first(study.get_trials(deepcopy=False, states=FINISHED))[:n]


def _best_first(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    return sorted((t for t in trials if t.value is not None), key=lambda t: (-t.value, t.number))


def keep_weights(cfg: Config, folder: Path) -> Callable[[optuna.Study, FrozenTrial], None]:
    """Study callback: with ``keep=best`` only the study's best trial keeps its weights."""
    from lrtune import checkpoints

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        if cfg.keep != "best":
            return
        files = checkpoints.weight_files(folder)
        if len(files) < 2:
            return
        # The best of the finished trials that have weights: a pruned trial may
        # have a higher value than every complete one, but no weights to keep.
        finished = [t for t in study.get_trials(deepcopy=False, states=FINISHED) if t.number in files]
        best = _best_first(finished)
        for t in best[1:]:
            checkpoints.remove(folder, t.number)

    return callback


def prepare_study(cfg: Config, *, objective: Any, storage: RDBStorage) -> optuna.Study:
    """Create or load the study, check its config, record the dataset and queue the baseline."""
    from lrtune.data import class_counts
    from lrtune.space import baseline_params

    name = cfg.study or default_study_name(cfg)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction="maximize",
        sampler=create_sampler(cfg.sampler, cfg.seed),
        pruner=create_pruner(cfg.pruner, warmup=cfg.pruner_warmup, epochs=cfg.epochs),
        load_if_exists=True,
    )
    study.sampler = create_sampler(cfg.sampler, sampler_seed(cfg, study))
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise LRTuneError(f"study {name!r} exists and does not maximize; pick another --study")
    check_config(study, cfg)
    if "dataset" not in study.user_attrs:
        imageset = objective.imageset
        n = len(imageset.classes)
        study.set_user_attr(
            "dataset",
            {
                "name": imageset.name,
                "classes": list(imageset.classes),
                "n_train": int(len(objective.train_idx)),
                "n_val": int(len(objective.val_idx)),
                "train_counts": class_counts(imageset.labels[objective.train_idx], n).tolist(),
                "val_counts": class_counts(imageset.labels[objective.val_idx], n).tolist(),
                "image_size": int(imageset.images.shape[1]),
                "skipped": list(imageset.skipped),
            },
        )
    if not study.get_trials(deepcopy=False):
        baseline = baseline_params(cfg)
        study.set_user_attr("baseline", baseline)
        study.enqueue_trial(baseline, user_attrs={"baseline": True})
    return study


def sampler_seed(cfg: Config, study: optuna.Study, worker: int = 0) -> int:
    """A seed that differs per run and per worker, so a resumed random sampler does not replay old points."""
    return cfg.seed + len(study.get_trials(deepcopy=False)) + 7919 * worker


def optimize(
    study: optuna.Study,
    objective: Any,
    cfg: Config,
    *,
    stop: Callable[[], bool],
    progress: Any,
) -> None:
    """Run trials until the study holds ``cfg.trials`` finished ones, the timeout passes, or a stop."""
    from lrtune.objective import TrialFailed

    def stop_when_asked(study: optuna.Study, trial: FrozenTrial) -> None:
        if stop():
            study.stop()

    study.optimize(
        objective,
        timeout=cfg.timeout or None,
        catch=(TrialFailed,),
        callbacks=[
            progress,
            keep_weights(cfg, study_dir(cfg.studies_dir, study.study_name)),
            optuna.study.MaxTrialsCallback(cfg.trials, states=FINISHED),
            stop_when_asked,
        ],
    )
