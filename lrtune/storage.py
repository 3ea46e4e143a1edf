"""The read side: opening storages, naming and listing studies, loading trials.

The report and ``lrtune show`` depend on this module and nothing heavier; it
imports neither torch nor the training code.
"""

from __future__ import annotations

import functools
import json
import re
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import bindparam, event, exists, func, select, union_all, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite

from lrtune.config import DIGITS_SETS, Config
from lrtune.errors import StorageError, first_line

DB_NAME = "lrtune.db"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
UNFINISHED = (TrialState.RUNNING, TrialState.WAITING)  # the states in which Optuna lets a trial be written


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


POOL_SIZE = 2  # connections per process to a server database: the trial's thread and its heartbeat
POOL_RECYCLE = 600  # seconds before a pooled connection is replaced, ahead of servers and firewalls that drop idle ones
RETRY_FOR = 120.0  # default seconds a lost connection to the database is retried before giving up
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 10.0  # seconds between tries: doubling from the first up to the max


def _connection_lost(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) says the database could not be reached, not that a query was bad."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, (sa_exc.OperationalError, sa_exc.InterfaceError)):
            return True
        if isinstance(seen, sa_exc.DBAPIError) and seen.connection_invalidated:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def retrying(call: Callable[[], Any], *, url: str, retry_for: float, sleep: Callable[[float], None] = time.sleep) -> Any:
    """``call()``, tried again with backoff while the database is unreachable, for up to ``retry_for`` s.

    Then a one-line ``StorageError`` (password masked). Errors that are not a
    lost connection go through at once.
    """
    deadline = time.monotonic() + retry_for
    delay = BACKOFF_FIRST
    while True:
        try:
            return call()
        except Exception as exc:
            if not _connection_lost(exc):
                raise
            if time.monotonic() + delay > deadline:
                cause = scrub(first_line(_root(exc)), url)
                raise StorageError(f"storage {mask_url(url)} unreachable for {retry_for:g} s: {cause}") from None
            sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)


def _root(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def scrub(text: str, url: str) -> str:
    """``text`` with the password of ``url`` (if any) replaced by ``***``."""
    match = re.search(r"://[^:/@]+:([^@]*)@", url)
    return text.replace(match.group(1), "***") if match and match.group(1) else text


class ResilientStorage(RDBStorage):
    """An ``RDBStorage`` whose every call is retried while the database server is unreachable.

    Calls of its own spare round trips that Optuna's API would make: several
    user attributes at once; the ids of a study's trials in some states, and
    the intermediate values of given trials, each in one query. On PostgreSQL
    and SQLite, what a running trial writes (an intermediate value, a
    parameter, attributes, a heartbeat) is one statement outside a
    transaction, where Optuna reads the trial, then the row, then writes it.
    """

    retry_for: float = RETRY_FOR

    def set_trial_user_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        """Set several user attributes of an unfinished trial at once."""
        rows = [{"trial_id": trial_id, "key": key, "value_json": json.dumps(value)} for key, value in attrs.items()]
        if rows and self._upsert_unfinished(models.TrialUserAttributeModel, rows, ("trial_id", "key")):
            return

        def write() -> None:
            with _create_scoped_session(self.scoped_session, True) as session:
                for key, value in attrs.items():
                    self._set_trial_attr_without_commit(session, models.TrialUserAttributeModel, trial_id, key, value)

        retrying(write, url=self.url, retry_for=self.retry_for)

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        stored, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(intermediate_value)
        row = {"trial_id": trial_id, "step": step, "intermediate_value": stored, "intermediate_value_type": kind}
        if not self._upsert_unfinished(models.TrialIntermediateValueModel, [row], ("trial_id", "step")):
            self._optuna("set_trial_intermediate_value", trial_id, step, intermediate_value)

    def _set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                         distribution: Any, previous_distribution: Any) -> None:
        if previous_distribution is not None:  # Optuna's cache knows the study's distribution: checked here
            optuna.distributions.check_distribution_compatibility(previous_distribution, distribution)
            row = {"trial_id": trial_id, "param_name": param_name, "param_value": param_value_internal,
                   "distribution_json": optuna.distributions.distribution_to_json(distribution)}
            if self._upsert_unfinished(models.TrialParamModel, [row], ("trial_id", "param_name")):
                return
        self._optuna("_set_trial_param", trial_id, param_name, param_value_internal, distribution, previous_distribution)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        """As Optuna's; taking a queued trial (WAITING to RUNNING) is one conditional ``UPDATE``.

        Optuna reads the state, then writes it. On SQLite the read is outside
        the write's transaction, so two workers could both take one queued
        trial; the conditional update lets exactly one of them have it.
        """
        if state != TrialState.RUNNING or values is not None:
            return self._optuna("set_trial_state_values", trial_id, state, values)
        if self._execute(_CLAIM, {"trial": trial_id, "start": datetime.now()}):
            return True
        return self._optuna("set_trial_state_values", trial_id, state, values)  # False, or Optuna's error

    def record_heartbeat(self, trial_id: int) -> None:
        insert = _INSERTS.get(self.engine.dialect.name)
        if insert is None:
            return self._optuna("record_heartbeat", trial_id)
        self._execute(_heartbeat_statement(insert), {"trial": trial_id})

    def _upsert_unfinished(self, model: Any, rows: list[dict[str, Any]], keys: tuple[str, ...]) -> bool:
        """Insert ``rows`` of ``model`` or update them on ``keys``, if their trial is unfinished, in one statement.

        False when the trial is finished or missing (nothing written; Optuna's
        call then says why) and on databases other than PostgreSQL and SQLite.
        """
        insert = _INSERTS.get(self.engine.dialect.name)
        if insert is None:
            return False
        columns = tuple(rows[0])
        statement = _upsert_statement(insert, model.__table__, columns, keys, len(rows))
        params = {f"{column}_{i}": row[column] for i, row in enumerate(rows) for column in columns}
        return self._execute(statement, {"trial": rows[0]["trial_id"], **params}) > 0

    def _execute(self, statement: Any, params: dict[str, Any]) -> int:
        """One statement on its own (autocommitted): its row count. Retried as every call is; it is idempotent."""

        def run() -> int:
            with self.engine.connect() as conn:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT", preserve_rowcount=True)
                return conn.execute(statement, params).rowcount

        return retrying(run, url=self.url, retry_for=self.retry_for)

    def _optuna(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Optuna's own ``name``, retried."""
        method = getattr(super(), name)
        return retrying(lambda: method(*args, **kwargs), url=self.url, retry_for=self.retry_for)

    def trial_ids(self, study_id: int, states: tuple[TrialState, ...]) -> list[int]:
        """The ids of the study's trials in any of ``states``, in one query."""

        def read() -> list[int]:
            with _create_scoped_session(self.scoped_session) as session:
                query = session.query(models.TrialModel.trial_id)
                rows = query.filter(models.TrialModel.study_id == study_id, models.TrialModel.state.in_(states)).all()
                return sorted(row[0] for row in rows)

        return retrying(read, url=self.url, retry_for=self.retry_for)

    def intermediate_values(self, trial_ids: list[int]) -> dict[int, dict[int, float]]:
        """Trial id -> step -> intermediate value, for the given trials, in one query."""

        def read() -> dict[int, dict[int, float]]:
            values: dict[int, dict[int, float]] = {trial_id: {} for trial_id in trial_ids}
            model = models.TrialIntermediateValueModel
            with _create_scoped_session(self.scoped_session) as session:
                for row in session.query(model).filter(model.trial_id.in_(trial_ids)).all():
                    value = model.stored_repr_to_intermediate_value(row.intermediate_value, row.intermediate_value_type)
                    values[row.trial_id][row.step] = value
            return values

        return retrying(read, url=self.url, retry_for=self.retry_for) if trial_ids else {}


def resilient(storage: Any) -> ResilientStorage | None:
    """lrtune's storage, behind Optuna's cache or not; None for any other storage."""
    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, ResilientStorage) else None


def pop_waiting_by_id(study: optuna.Study) -> None:
    """Let ``study.ask`` look for a queued trial by id first, on lrtune's storage.

    Optuna's ``ask`` loads every unfinished trial of the study (all the
    workers' running ones, with their values) to find a queued one. Here one
    query of ids comes first, and Optuna's way runs only when a trial is queued.
    """
    backend = resilient(study._storage)
    if backend is None:
        return
    optunas = study._pop_waiting_trial_id

    def pop() -> int | None:
        return optunas() if backend.trial_ids(study._study_id, (TrialState.WAITING,)) else None

    study._pop_waiting_trial_id = pop  # type: ignore[method-assign]


def _retried(name: str) -> Callable[..., Any]:
    def call(self: ResilientStorage, *args: Any, **kwargs: Any) -> Any:
        return self._optuna(name, *args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = getattr(RDBStorage, name).__doc__
    return call


# Optuna's cache in front of an RDBStorage also calls these private methods of it.
BACKEND_CALLS = ("_create_new_trial", "_get_best_trial_id", "_get_stale_trial_ids", "_get_trials", "_set_trial_param")

_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}  # the dialects with INSERT ... ON CONFLICT


@functools.lru_cache(maxsize=32)
def _upsert_statement(insert: Callable[..., Any], table: Any, columns: tuple[str, ...], keys: tuple[str, ...],
                      n_rows: int) -> Any:
    """``INSERT INTO table SELECT <row> WHERE <trial :trial unfinished> [UNION ALL ...] ON CONFLICT (keys) DO UPDATE``.

    Row ``i``'s values are the parameters ``<column>_<i>``. Built once per shape.
    """
    trials = models.TrialModel
    unfinished = exists().where(trials.trial_id == bindparam("trial"), trials.state.in_(UNFINISHED))
    selects = [select(*(bindparam(f"{c}_{i}", type_=table.c[c].type).label(c) for c in columns)).where(unfinished)
               for i in range(n_rows)]
    statement = insert(table).from_select(list(columns), selects[0] if n_rows == 1 else union_all(*selects))
    updates = {c: statement.excluded[c] for c in columns if c not in keys}
    return statement.on_conflict_do_update(index_elements=list(keys), set_=updates)


_TRIALS = models.TrialModel.__table__
_CLAIM = (  # a queued trial, taken by whoever changes its state first
    update(_TRIALS)
    .where(_TRIALS.c.trial_id == bindparam("trial"), _TRIALS.c.state == TrialState.WAITING)
    .values(state=TrialState.RUNNING, datetime_start=bindparam("start"))
)


@functools.lru_cache(maxsize=2)
def _heartbeat_statement(insert: Callable[..., Any]) -> Any:
    """The heartbeat of trial ``:trial`` set to the database's time, inserted or updated."""
    table = models.TrialHeartbeatModel.__table__
    statement = insert(table).values(trial_id=bindparam("trial"), heartbeat=func.current_timestamp())
    return statement.on_conflict_do_update(index_elements=["trial_id"], set_={"heartbeat": statement.excluded.heartbeat})

for _name in [*dir(RDBStorage), *BACKEND_CALLS]:
    if _name in ResilientStorage.__dict__:  # lrtune's own, retried already
        continue
    if (not _name.startswith("_") or _name in BACKEND_CALLS) and callable(getattr(RDBStorage, _name, None)):
        setattr(ResilientStorage, _name, _retried(_name))


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite:"):
        return {"connect_args": {"timeout": 120}}
    # At most POOL_SIZE connections per process, each checked before use.
    return {"pool_pre_ping": True, "pool_size": POOL_SIZE, "max_overflow": 0, "pool_recycle": POOL_RECYCLE}


def open_storage(url: str, *, heartbeat: Heartbeat | None = None, retry_for: float = RETRY_FOR) -> RDBStorage:
    """Open (creating if needed) the study database at ``url``.

    A server database (PostgreSQL, MySQL) is reached through at most
    ``POOL_SIZE`` connections per process; while it is unreachable every call
    is retried with backoff for ``retry_for`` seconds, then raises ``StorageError``.
    """
    if url.startswith("sqlite:"):
        _prepare_sqlite(url)
    extra: dict[str, Any] = {}
    if heartbeat is not None:
        extra = {
            "heartbeat_interval": heartbeat.interval,
            "grace_period": heartbeat.grace,
            "heartbeat_stale_trial_callback": heartbeat.on_stale,
        }

    def create() -> RDBStorage:
        return ResilientStorage(url, engine_kwargs=_engine_kwargs(url), **extra)

    try:
        storage = retrying(create, url=url, retry_for=retry_for)
    except StorageError:
        raise
    except Exception as exc:  # SQLAlchemy and drivers raise many types for a bad URL
        raise StorageError(f"cannot open storage {mask_url(url)}: {scrub(first_line(exc), url)}") from None
    storage.retry_for = retry_for
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
    """Complete and pruned trials: one query on lrtune's storage, which need not load them."""
    backend = resilient(study._storage)
    if backend is not None:
        return len(backend.trial_ids(study._study_id, FINISHED))
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
