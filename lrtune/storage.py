"""The read side: opening storages, naming and listing studies, loading trials.

The report and ``lrtune show`` depend on this module and nothing heavier; it
imports neither torch nor the training code.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import event

from lrtune.config import DIGITS_SETS, Config
from lrtune.errors import StorageError, first_line

DB_NAME = "lrtune.db"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def default_storage_url(studies_dir: str | Path) -> str:
    return f"sqlite:///{Path(studies_dir) / DB_NAME}"


def storage_url(cfg: Config) -> str:
    """``cfg.storage``, or the default SQLite file under ``cfg.studies_dir``."""
    return cfg.storage or default_storage_url(cfg.studies_dir)


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***``, fit for logs and reports."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def _sqlite_path(url: str) -> str | None:
    """The file behind a ``sqlite:///`` URL; None for memory databases and other storages."""
    if not url.startswith("sqlite:///"):
        return None
    path = url.removeprefix("sqlite:///")
    return None if not path or path == ":memory:" or path.startswith("file:") else path


def _prepare_sqlite(url: str) -> None:
    """Create the file's folder and switch the database to WAL.

    WAL lets readers (``lrtune report``) work while a search writes, and lets
    several local workers share one file without "database is locked".
    """
    path = _sqlite_path(url)
    if path is None:
        return
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(path, timeout=60) as conn:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
    except (sqlite3.Error, OSError) as exc:
        raise StorageError(f"cannot open storage {url}: {exc}") from None


@dataclass(frozen=True)
class Heartbeat:
    """Running trials send a heartbeat every ``interval`` s; one silent for ``grace`` s is dead."""

    interval: int
    grace: int
    on_stale: Callable[[optuna.Study, FrozenTrial], None]


def open_storage(url: str, *, heartbeat: Heartbeat | None = None) -> RDBStorage:
    """Open (creating if needed) the study database at ``url``."""
    if url.startswith("sqlite:"):
        _prepare_sqlite(url)
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 120}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    extra: dict[str, Any] = {}
    if heartbeat is not None:
        extra = {
            "heartbeat_interval": heartbeat.interval,
            "grace_period": heartbeat.grace,
            "heartbeat_stale_trial_callback": heartbeat.on_stale,
        }
    try:
        storage = RDBStorage(url, engine_kwargs=engine_kwargs, **extra)
    except Exception as exc:  # SQLAlchemy and drivers raise many types for a bad URL
        raise StorageError(f"cannot open storage {mask_url(url)}: {first_line(exc)}") from None
    if url.startswith("sqlite:"):
        # WAL with synchronous=NORMAL: a commit survives any crash of the process,
        # and costs half as much as with a sync of the file on every commit.
        event.listen(storage.engine, "connect", _sqlite_normal_sync)
        storage.engine.dispose()
    return storage


def _sqlite_normal_sync(connection: Any, record: Any) -> None:
    connection.execute("PRAGMA synchronous=NORMAL")


def open_existing_storage(url: str) -> RDBStorage:
    """Open a storage to read it; a missing SQLite file is an error, never created."""
    path = _sqlite_path(url)
    if path is not None and not Path(path).is_file():
        raise StorageError(f"no study database at {path}; run `lrtune search` first")
    return open_storage(url)


def storage_label(study: optuna.Study) -> str:
    """The study's storage URL with any password masked, or its type when it has no URL."""
    storage = study._storage
    backend = getattr(storage, "_backend", storage)  # Optuna wraps an RDBStorage in a cache
    url = getattr(backend, "url", None)
    return mask_url(str(url)) if url else type(backend).__name__


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


def load_study(storage: optuna.storages.BaseStorage, name: str | None = None) -> optuna.Study:
    """Study ``name``, or the most recently active one when ``name`` is None."""
    names = study_names(storage)
    if name is None:
        name = latest_study_name(storage)
        if name is None:
            raise StorageError(f"no studies in {mask_url(str(storage.url))}")
    if name not in names:
        listed = ", ".join(names) if names else "none"
        raise StorageError(f"unknown study {name!r} (existing studies: {listed})")
    return optuna.load_study(study_name=name, storage=storage)


def default_study_name(cfg: Config) -> str:
    data = cfg.data if cfg.data in DIGITS_SETS else Path(cfg.data.rstrip("/\\")).stem or "data"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{data}-{cfg.model}")


def study_dir(studies_dir: str | Path, study_name: str) -> Path:
    """Artifacts of one study (report, trial checkpoints and weights), always inside ``studies_dir``."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", study_name).lstrip(".") or "_"
    return Path(studies_dir) / safe


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def best_first(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Trials with a value, highest first; ties go to the earlier trial."""
    return sorted((t for t in trials if t.value is not None), key=lambda t: (-t.value, t.number))


def top_trials(study: optuna.Study, n: int = 10) -> list[FrozenTrial]:
    """Finished trials with a value, best first."""
    return best_first(study.get_trials(deepcopy=False, states=FINISHED))[:n]


def summarize_studies(storage: optuna.storages.BaseStorage) -> list[dict[str, Any]]:
    """One row per study: finished, pruned, failed and running counts, and the best value."""
    rows = []
    for summary in storage.get_all_studies():
        trials = storage.get_all_trials(summary._study_id, deepcopy=False)
        done = [t for t in trials if t.state in FINISHED]
        values = [t.value for t in done if t.value is not None]
        rows.append(
            {
                "study": summary.study_name,
                "finished": len(done),
                "pruned": sum(t.state == TrialState.PRUNED for t in trials),
                "failed": sum(t.state == TrialState.FAIL for t in trials),
                "running": sum(t.state == TrialState.RUNNING for t in trials),
                "best": max(values) if values else None,
            }
        )
    return rows
