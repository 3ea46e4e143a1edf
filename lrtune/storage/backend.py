"""Opening a study database, and the storage lrtune reads and writes it through.

``ResilientStorage`` is Optuna's ``RDBStorage`` with every call retried while
a database server is unreachable, and with one statement (``statements``)
where Optuna's calls make several round trips.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Container, Iterator

import optuna
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import exc as sa_exc

from lrtune.errors import LRTuneError, StorageError, first_line, is_no_space, no_space
from lrtune.storage import sqlite, statements
from lrtune.storage.sqlite import sqlite_path


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***``, fit for logs and reports."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


@dataclass(frozen=True)
class Heartbeat:
    """Running trials send a heartbeat every ``interval`` s; one silent for ``grace`` s is dead."""

    interval: int
    grace: int
    on_stale: Callable[[optuna.Study, FrozenTrial], None]


MAX_BOUND_IDS = 1000  # trial ids bound into one statement at most (SQLite allows 32766 parameters, PostgreSQL 65535)
POOL_SIZE = 2  # connections per process to a server database: the trial's thread and its heartbeat
POOL_RECYCLE = 600  # seconds before a pooled connection is replaced, ahead of servers and firewalls that drop idle ones
RETRY_FOR = 120.0  # default seconds a lost connection to the database is retried before giving up
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 10.0  # seconds between tries: doubling from the first up to the max
SCHEMA_TRIES = 8  # tries at creating the tables while other processes create them at the same moment


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what caused it, eight deep at most."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return
        yield seen
        seen = seen.__cause__ or seen.__context__


def _connection_lost(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) says the database could not be reached, not that a query was bad."""
    return any(isinstance(seen, (sa_exc.OperationalError, sa_exc.InterfaceError))
               or (isinstance(seen, sa_exc.DBAPIError) and seen.connection_invalidated) for seen in _causes(exc))


def _schema_race(exc: BaseException) -> bool:
    """True when creating the tables failed because another process was creating them at the same moment."""
    for seen in _causes(exc):
        if isinstance(seen, (sa_exc.IntegrityError, sa_exc.ProgrammingError)):
            text = str(seen).lower()
            return "already exists" in text or "duplicate key" in text
    return False


def _created(create: Callable[[], Any], sleep: Callable[[float], None] = time.sleep) -> Any:
    """``create()``, tried again while it loses a race to create the tables to another process.

    Several workers started at once on an empty server database all find no
    tables, and all but one fail on creating them; a try after that one has
    finished finds them made.
    """
    for attempt in range(1, SCHEMA_TRIES + 1):
        try:
            return create()
        except Exception as exc:
            if attempt == SCHEMA_TRIES or not _schema_race(exc):
                raise
            sleep(0.05 * attempt)


def retrying(call: Callable[[], Any], *, url: str, retry_for: float, sleep: Callable[[float], None] = time.sleep,
             say: Callable[[str], None] | None = None) -> Any:
    """``call()``, tried again with backoff while the database is unreachable or locked, for up to ``retry_for`` s.

    Then a one-line ``StorageError`` (password masked). ``say`` hears one line
    when the wait begins. A full disk is not a blip: it raises ``NoSpaceError``
    at once. Other errors that are not a lost connection go through at once.
    """
    deadline = time.monotonic() + retry_for
    delay = BACKOFF_FIRST
    while True:
        try:
            return call()
        except Exception as exc:
            if is_no_space(exc):
                path = sqlite_path(url)
                raise no_space(Path(path).parent if path else mask_url(url), what="the study database",
                               fix="free space there, or pick another --storage or --studies-dir") from exc
            if not _connection_lost(exc):
                raise
            cause = scrub(first_line(_root(exc)), url)
            if time.monotonic() + delay > deadline:
                what = "locked by another process" if "locked" in cause else "unreachable"
                raise StorageError(f"storage {mask_url(url)} {what} for {retry_for:g} s: {cause}") from None
            if say is not None and delay == BACKOFF_FIRST:
                say(f"storage {mask_url(url)}: {cause}; waiting for it, for up to {retry_for:g} s (--storage-retry)")
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


class _Statements(RDBStorage):
    """What ``ResilientStorage`` runs its calls on: one statement on its own, or Optuna's call; each retried."""

    retry_for: float = RETRY_FOR
    say: Callable[[str], None] | None = None  # hears one line when a wait for the database begins

    def _upsert_unfinished(self, model: Any, rows: list[dict[str, Any]], keys: tuple[str, ...]) -> bool:
        """Insert ``rows`` of ``model`` or update them on ``keys``, if their trial is unfinished, in one statement.

        False when the trial is finished or missing (nothing written; Optuna's
        call then says why) and on databases other than PostgreSQL and SQLite.
        """
        insert = statements.INSERTS.get(self.engine.dialect.name)
        if insert is None:
            return False
        columns = tuple(rows[0])
        statement = statements.upsert(insert, model.__table__, columns, keys, len(rows))
        params = {f"{column}_{i}": row[column] for i, row in enumerate(rows) for column in columns}
        return self._execute(statement, {"trial": rows[0]["trial_id"], **params}) > 0

    def _execute(self, statement: Any, params: dict[str, Any]) -> int:
        """One statement on its own (autocommitted): its row count. Retried as every call is; it is idempotent."""
        return self._autocommitted(lambda conn: conn.execute(statement, params).rowcount)

    def _read(self, statement: Any, params: dict[str, Any]) -> list[Any]:
        """The rows of one query on its own (autocommitted), retried as every call is."""
        return self._autocommitted(lambda conn: conn.execute(statement, params).all())

    def _autocommitted(self, run: Callable[[Any], Any]) -> Any:
        def connected() -> Any:
            with self.engine.connect() as conn:
                return run(conn.execution_options(isolation_level="AUTOCOMMIT", preserve_rowcount=True))

        return retrying(connected, url=self.url, retry_for=self.retry_for, say=self.say)

    def _check_param(self, trial_id: int, name: str, distribution: Any, previous: Any) -> Any:
        """Parameter ``name``'s distribution in the study (``previous``, or read with the trial's state in one
        query), once ``distribution`` is known to be compatible with it; raises as Optuna does."""
        state = None
        if previous is None:
            stored = self._read(statements.STUDY_DISTRIBUTION, {"trial": trial_id, "name": name})
            previous = optuna.distributions.json_to_distribution(stored[0][0]) if stored else None
            state = stored[0][1] if stored else None
        if previous is not None:
            try:
                optuna.distributions.check_distribution_compatibility(previous, distribution)
            except ValueError:
                # Optuna checks the trial first: a finished trial is refused as finished, whatever the distribution.
                if state is None:
                    state = next(iter(self._read(statements.TRIAL_STATE, {"trial": trial_id})), [None])[0]
                if state is not None:
                    self.check_trial_is_updatable(trial_id, TrialState[state])
                raise
        return previous

    def _optuna(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Optuna's own ``name``, retried."""
        method = getattr(super(), name)
        return retrying(lambda: method(*args, **kwargs), url=self.url, retry_for=self.retry_for, say=self.say)


class ResilientStorage(_Statements):
    """An ``RDBStorage`` whose every call is retried while the database server is unreachable.

    On PostgreSQL and SQLite, what a running trial writes (intermediate
    values, parameters, attributes, a heartbeat) is one statement outside a
    transaction, where Optuna reads the trial, then the row, then writes it;
    a trial, or a study's trials, load in one query, where Optuna makes one
    per table. Calls of its own write several values or attributes at once.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held: dict[int, list[tuple[dict[str, Any], Any]]] = {}  # by trial: parameters ``params_together`` holds
        self.heartbeat_fault: BaseException | None = None  # what stopped the heartbeat thread's writes

    def set_trial_user_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        """Set several user attributes of an unfinished trial at once."""
        self._set_attrs(models.TrialUserAttributeModel, "set_trial_user_attr", trial_id, attrs)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._set_attrs(models.TrialUserAttributeModel, "set_trial_user_attr", trial_id, {key: value})

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._set_attrs(models.TrialSystemAttributeModel, "set_trial_system_attr", trial_id, {key: value})

    def _set_attrs(self, model: Any, call: str, trial_id: int, attrs: dict[str, Any]) -> None:
        rows = [{"trial_id": trial_id, "key": key, "value_json": json.dumps(value)} for key, value in attrs.items()]
        if rows and self._upsert_unfinished(model, rows, ("trial_id", "key")):
            return
        for key, value in attrs.items():  # Optuna's calls, and Optuna's error for a finished trial
            self._optuna(call, trial_id, key, value)

    @contextlib.contextmanager
    def params_together(self, trial_id: int) -> Iterator[None]:
        """Within: trial ``trial_id``'s parameters are checked as they are set, and written together at the end."""
        self._held[trial_id] = held = []
        try:
            yield
        finally:
            del self._held[trial_id]
            if held and not self._upsert_unfinished(models.TrialParamModel, [row for row, _ in held],
                                                    ("trial_id", "param_name")):
                for row, distribution in held:  # Optuna's error for a finished trial
                    self._optuna("_set_trial_param", trial_id, row["param_name"], row["param_value"], distribution, None)

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        self.set_trial_intermediate_values(trial_id, {step: intermediate_value})

    def set_trial_intermediate_values(self, trial_id: int, values: dict[int, float]) -> None:
        """Several intermediate values of an unfinished trial at once."""
        rows = statements.intermediate_value_rows(trial_id, values)
        if rows and self._upsert_unfinished(models.TrialIntermediateValueModel, rows, ("trial_id", "step")):
            return
        for step, value in values.items():  # Optuna's calls, and Optuna's error for a finished trial
            self._optuna("set_trial_intermediate_value", trial_id, step, value)

    def _set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                         distribution: Any, previous_distribution: Any) -> None:
        """As Optuna's, checked against the study's distribution (one query when Optuna's cache does not pass
        it), then written in one statement."""
        if self.engine.dialect.name not in statements.INSERTS:
            return self._optuna("_set_trial_param", trial_id, param_name, param_value_internal, distribution,
                                previous_distribution)
        previous_distribution = self._check_param(trial_id, param_name, distribution, previous_distribution)
        row = {"trial_id": trial_id, "param_name": param_name, "param_value": param_value_internal,
               "distribution_json": optuna.distributions.distribution_to_json(distribution)}
        if trial_id in self._held:
            self._held[trial_id].append((row, distribution))
        elif not self._upsert_unfinished(models.TrialParamModel, [row], ("trial_id", "param_name")):
            self._optuna("_set_trial_param", trial_id, param_name, param_value_internal, distribution,
                         previous_distribution)  # Optuna's error for a finished or missing trial

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        """As Optuna's; taking a queued trial (WAITING to RUNNING) and ending an unfinished one without
        values (FAIL, PRUNED) are one conditional ``UPDATE`` each.

        Optuna reads the state, then writes it. On SQLite the read is outside
        the write's transaction, so two workers could both take one queued
        trial, or both fail one stale trial and each run its callback (two
        retries); the conditional update lets exactly one of them change it.
        """
        if values is not None:
            return self._optuna("set_trial_state_values", trial_id, state, values)
        if state == TrialState.RUNNING:
            if self._execute(statements.CLAIM, {"trial": trial_id, "start": statements.utc_now()}):
                return True
        elif state.is_finished():
            if self._execute(statements.FINISH, {"trial": trial_id, "state": state, "complete": statements.utc_now()}):
                return True
        return self._optuna("set_trial_state_values", trial_id, state, values)  # False, or Optuna's error

    def record_heartbeat(self, trial_id: int) -> None:
        """As Optuna's, in one statement; a fault (a full disk, a storage gone) is kept for the trial's own thread
        to raise (``raise_heartbeat_fault``), never a traceback from Optuna's heartbeat thread."""
        insert = statements.INSERTS.get(self.engine.dialect.name)
        try:
            if self.heartbeat_fault is None:
                self._execute(statements.heartbeat(insert), {"trial": trial_id}) if insert else self._optuna(
                    "record_heartbeat", trial_id)
        except Exception as exc:
            self.heartbeat_fault = exc

    def raise_heartbeat_fault(self) -> None:
        """Raise, on the caller's thread, the fault that stopped the heartbeats, if any."""
        fault = self.heartbeat_fault
        if fault is not None:
            raise fault

    def get_trial(self, trial_id: int) -> FrozenTrial:
        """As Optuna's, in one query."""
        _, found = statements.frozen_trials(self._read(statements.trials(None), {"trial": trial_id}))
        return found[0] if found else self._optuna("get_trial", trial_id)  # Optuna's KeyError

    def _get_trials(self, study_id: int, states: Container[TrialState] | None, included_trial_ids: set[int],
                    trial_id_greater_than: int) -> list[FrozenTrial]:
        """As Optuna's (what ``get_all_trials`` and Optuna's cache call), in one query.

        More than ``MAX_BOUND_IDS`` trials to include are not bound one by one
        (databases cap a statement's parameters): the trials from the lowest of
        them on are read, and those not asked for are left out.
        """
        included = sorted(i for i in included_trial_ids if i <= trial_id_greater_than)
        after, many = trial_id_greater_than, len(included) > MAX_BOUND_IDS
        if many:
            after, included = included[0] - 1, []
        shape = (states is not None, after > -1, bool(included))
        params = {"study": study_id, "states": list(states or ()), "after": after, "included": included}
        exists, found = statements.frozen_trials(self._read(statements.trials(shape), params))
        if not exists:  # Optuna's KeyError
            return self._optuna("_get_trials", study_id, states, included_trial_ids, trial_id_greater_than)
        if many:
            found = [t for t in found if t._trial_id in included_trial_ids or t._trial_id > trial_id_greater_than]
        return found

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        """As Optuna's, in one query (a study without any asks Optuna's call, which checks that it exists)."""
        rows = self._read(statements.STUDY_USER_ATTRS, {"study": study_id})
        return {key: json.loads(value) for key, value in rows} if rows else self._optuna("get_study_user_attrs", study_id)

    def trial_ids(self, study_id: int, states: tuple[TrialState, ...]) -> list[int]:
        """The ids of the study's trials in any of ``states``, in one query."""
        return [row[0] for row in self._read(statements.TRIAL_IDS, {"study": study_id, "states": list(states)})]

    def intermediate_values(self, trial_ids: list[int]) -> dict[int, dict[int, float]]:
        """Trial id -> step -> intermediate value, for the given trials, in one query."""
        values: dict[int, dict[int, float]] = {trial_id: {} for trial_id in trial_ids}
        if trial_ids:
            for trial_id, step, stored, kind in self._read(statements.INTERMEDIATE_VALUES, {"trials": trial_ids}):
                values[trial_id][step] = statements.intermediate_value(stored, kind)
        return values


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

for _name in [*dir(RDBStorage), *BACKEND_CALLS]:
    if _name in ResilientStorage.__dict__:  # lrtune's own, retried already
        continue
    if (not _name.startswith("_") or _name in BACKEND_CALLS) and callable(getattr(RDBStorage, _name, None)):
        setattr(ResilientStorage, _name, _retried(_name))


def _engine_kwargs(url: str, trials: int = 1) -> dict[str, Any]:
    if url.startswith("sqlite:"):
        return sqlite.engine_kwargs()
    # At most POOL_SIZE connections per trial running at once in this process, each checked before use.
    return {"pool_pre_ping": True, "pool_size": POOL_SIZE * trials, "max_overflow": 0, "pool_recycle": POOL_RECYCLE}


def open_storage(url: str, *, heartbeat: Heartbeat | None = None, retry_for: float = RETRY_FOR,
                 trials: int = 1, say: Callable[[str], None] | None = None) -> RDBStorage:
    """Open (creating if needed) the study database at ``url``.

    A server database (PostgreSQL, MySQL) is reached through at most
    ``POOL_SIZE`` connections per process and trial it runs at once (``trials``: ``--fuse``'s group);
    while it is unreachable (or locked) every call is retried with backoff for ``retry_for`` seconds, then
    raises ``StorageError``; ``say`` hears one line when such a wait begins.
    """
    if url.startswith("sqlite:"):
        sqlite.prepare(url)
    extra: dict[str, Any] = {}
    if heartbeat is not None:
        extra = {
            "heartbeat_interval": heartbeat.interval,
            "grace_period": heartbeat.grace,
            "heartbeat_stale_trial_callback": heartbeat.on_stale,
        }

    def create() -> RDBStorage:
        return ResilientStorage(url, engine_kwargs=_engine_kwargs(url, trials), **extra)

    try:
        storage = retrying(lambda: _created(create), url=url, retry_for=retry_for, say=say)
    except LRTuneError:
        raise
    except Exception as exc:  # SQLAlchemy and drivers raise many types for a bad URL
        raise StorageError(f"cannot open storage {mask_url(url)}: {scrub(first_line(exc), url)}") from None
    storage.retry_for, storage.say = retry_for, say
    if url.startswith("sqlite:"):
        sqlite.guard(storage.engine, url)
        storage.engine.dispose()
    return storage


