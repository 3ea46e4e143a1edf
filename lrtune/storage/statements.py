"""One-statement reads and writes of Optuna's RDB schema, and the trials they read back.

Optuna's ``RDBStorage`` loads a trial with one query per table inside a
transaction, and writes by reading the trial, then the row, then writing it.
Each statement here does the same job in one round trip. They are built once
per shape, so SQLAlchemy compiles each one once.
"""

from __future__ import annotations

import datetime
import functools
import json
from typing import Any, Callable, Iterable

from optuna import distributions
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import DateTime, Float, Integer, String, Text, bindparam, cast, exists, func, literal, null, or_
from sqlalchemy import select, union_all, update
from sqlalchemy.dialects import postgresql, sqlite

UNFINISHED = (TrialState.RUNNING, TrialState.WAITING)  # the states in which Optuna lets a trial be written
INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}  # the dialects with INSERT ... ON CONFLICT

_TRIALS = models.TrialModel.__table__
_VALUE_TYPES = models.TrialValueModel.TrialValueType
_STEP_TYPES = models.TrialIntermediateValueModel.TrialIntermediateValueType


@functools.lru_cache(maxsize=32)
def upsert(insert: Callable[..., Any], table: Any, columns: tuple[str, ...], keys: tuple[str, ...], n_rows: int) -> Any:
    """``INSERT INTO table SELECT <row> WHERE <trial :trial unfinished> [UNION ALL ...] ON CONFLICT (keys) DO UPDATE``.

    Row ``i``'s values are the parameters ``<column>_<i>``, each cast to its
    column's type: PostgreSQL types a ``UNION``'s parameters as text, which it
    does not turn into an enum by itself.
    """
    unfinished = exists().where(_TRIALS.c.trial_id == bindparam("trial"), _TRIALS.c.state.in_(UNFINISHED))
    selects = [select(*(cast(bindparam(f"{c}_{i}", type_=table.c[c].type), table.c[c].type).label(c)
                        for c in columns)).where(unfinished) for i in range(n_rows)]
    statement = insert(table).from_select(list(columns), selects[0] if n_rows == 1 else union_all(*selects))
    updates = {c: statement.excluded[c] for c in columns if c not in keys}
    return statement.on_conflict_do_update(index_elements=list(keys), set_=updates)


CLAIM = (  # a queued trial, taken by whoever changes its state first; :start is naive UTC, as Optuna stores it
    update(_TRIALS)
    .where(_TRIALS.c.trial_id == bindparam("trial"), _TRIALS.c.state == TrialState.WAITING)
    .values(state=TrialState.RUNNING, datetime_start=bindparam("start"))
)


FINISH = (  # an unfinished trial ended without values (FAIL, PRUNED), by whoever changes its state first
    update(_TRIALS)
    .where(_TRIALS.c.trial_id == bindparam("trial"), _TRIALS.c.state.in_(UNFINISHED))
    .values(state=bindparam("state", type_=_TRIALS.c.state.type), datetime_complete=bindparam("complete"))
)


def utc_now() -> datetime.datetime:
    """Now as Optuna stores a trial's times: naive UTC."""
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


@functools.lru_cache(maxsize=2)
def heartbeat(insert: Callable[..., Any]) -> Any:
    """The heartbeat of trial ``:trial`` set to the database's time, inserted or updated."""
    table = models.TrialHeartbeatModel.__table__
    statement = insert(table).values(trial_id=bindparam("trial"), heartbeat=func.current_timestamp())
    return statement.on_conflict_do_update(index_elements=["trial_id"], set_={"heartbeat": statement.excluded.heartbeat})


TRIAL_IDS = (  # the ids of study :study's trials in any of :states
    select(_TRIALS.c.trial_id)
    .where(_TRIALS.c.study_id == bindparam("study"), _TRIALS.c.state.in_(bindparam("states", expanding=True)))
    .order_by(_TRIALS.c.trial_id)
)

_PARAMS, _OF_TRIAL = models.TrialParamModel.__table__, _TRIALS.alias("of_trial")
TRIAL_STATE = select(cast(_TRIALS.c.state, String)).where(_TRIALS.c.trial_id == bindparam("trial"))  # trial :trial's
STUDY_DISTRIBUTION = (  # the distribution of parameter :name in any trial of trial :trial's study, and that trial's state
    select(_PARAMS.c.distribution_json,
           select(cast(_OF_TRIAL.c.state, String)).where(_OF_TRIAL.c.trial_id == bindparam("trial")).scalar_subquery())
    .join(_TRIALS, _PARAMS.c.trial_id == _TRIALS.c.trial_id)
    .where(_TRIALS.c.study_id == select(_OF_TRIAL.c.study_id).where(_OF_TRIAL.c.trial_id == bindparam("trial"))
           .scalar_subquery(), _PARAMS.c.param_name == bindparam("name"))
    .limit(1)
)

_STUDY_ATTRS = models.StudyUserAttributeModel.__table__
STUDY_USER_ATTRS = select(_STUDY_ATTRS.c.key, _STUDY_ATTRS.c.value_json).where(  # study :study's user attributes
    _STUDY_ATTRS.c.study_id == bindparam("study"))

_STEPS = models.TrialIntermediateValueModel.__table__
INTERMEDIATE_VALUES = select(  # the intermediate values of trials :trials
    _STEPS.c.trial_id, _STEPS.c.step, _STEPS.c.intermediate_value, _STEPS.c.intermediate_value_type
).where(_STEPS.c.trial_id.in_(bindparam("trials", expanding=True)))


def intermediate_value_rows(trial_id: int, values: dict[int, float]) -> list[dict[str, Any]]:
    """Rows of ``trial_intermediate_values`` for the values, by step, of one trial."""
    rows = []
    for step, value in values.items():
        stored, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(value)
        rows.append({"trial_id": trial_id, "step": step, "intermediate_value": stored, "intermediate_value_type": kind})
    return rows


def intermediate_value(stored: float | None, kind: Any) -> float:
    return models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(stored, kind)


# What a row of ``trials()`` is: the study itself, a trial, or one of the trial's rows in another table.
_STUDY, _TRIAL, _PARAM, _VALUE, _STEP, _USER_ATTR, _SYSTEM_ATTR = range(-1, 6)


@functools.lru_cache(maxsize=16)
def trials(shape: tuple[bool, bool, bool] | None) -> Any:
    """Whole trials, each table's rows of them in one ``UNION ALL``, ordered by trial id.

    ``shape`` None: trial ``:trial``. Otherwise the trials of study ``:study``
    (and a row that says the study exists), filtered as Optuna's
    ``_get_trials`` filters them: ``(in :states, id > :after, or id in :included)``.
    """
    if shape is None:
        where = [_TRIALS.c.trial_id == bindparam("trial")]
    else:
        by_state, after, included = shape
        where = [_TRIALS.c.study_id == bindparam("study")]
        if by_state:
            where.append(_TRIALS.c.state.in_(bindparam("states", expanding=True)))
        newer = _TRIALS.c.trial_id > bindparam("after")
        if included:
            where.append(or_(_TRIALS.c.trial_id.in_(bindparam("included", expanding=True)), newer))
        elif after:
            where.append(newer)
    ids = select(select(_TRIALS.c.trial_id).where(*where).cte("ids").c.trial_id)
    params, values = _PARAMS, models.TrialValueModel.__table__
    user, system = models.TrialUserAttributeModel.__table__, models.TrialSystemAttributeModel.__table__
    branches = [
        _row(_TRIAL, _TRIALS.c.trial_id, _TRIALS.c.trial_id, name=cast(_TRIALS.c.state, String), number=_TRIALS.c.number,
             start=_TRIALS.c.datetime_start, complete=_TRIALS.c.datetime_complete).where(_TRIALS.c.trial_id.in_(ids)),
        _row(_PARAM, params.c.trial_id, params.c.param_id, name=params.c.param_name, value=params.c.param_value,
             text=params.c.distribution_json).where(params.c.trial_id.in_(ids)),
        _row(_VALUE, values.c.trial_id, values.c.trial_value_id, name=cast(values.c.value_type, String),
             number=values.c.objective, value=values.c.value).where(values.c.trial_id.in_(ids)),
        _row(_STEP, _STEPS.c.trial_id, _STEPS.c.trial_intermediate_value_id,
             name=cast(_STEPS.c.intermediate_value_type, String), number=_STEPS.c.step,
             value=_STEPS.c.intermediate_value).where(_STEPS.c.trial_id.in_(ids)),
        _row(_USER_ATTR, user.c.trial_id, user.c.trial_user_attribute_id, name=user.c.key,
             text=user.c.value_json).where(user.c.trial_id.in_(ids)),
        _row(_SYSTEM_ATTR, system.c.trial_id, system.c.trial_system_attribute_id, name=system.c.key,
             text=system.c.value_json).where(system.c.trial_id.in_(ids)),
    ]
    if shape is not None:
        study = models.StudyModel.__table__
        branches.append(_row(_STUDY, cast(null(), Integer), study.c.study_id).where(study.c.study_id == bindparam("study")))
    rows = union_all(*branches).subquery()
    return select(rows).order_by(rows.c.trial_id, rows.c.kind, rows.c.row_id)


def _row(kind: int, trial_id: Any, row_id: Any, *, name: Any = None, number: Any = None, value: Any = None,
         text: Any = None, start: Any = None, complete: Any = None) -> Any:
    """A ``SELECT`` of the columns every branch of ``trials()`` has, typed NULL where a table has none."""
    def typed(column: Any, kind_of: Any) -> Any:
        return cast(null(), kind_of) if column is None else column

    return select(literal(kind).label("kind"), trial_id.label("trial_id"), row_id.label("row_id"),
                  typed(name, String).label("name"), typed(number, Integer).label("number"),
                  typed(value, Float(precision=53)).label("value"), typed(text, Text).label("text"),
                  typed(start, DateTime).label("start"), typed(complete, DateTime).label("complete"))


def frozen_trials(rows: Iterable[Any]) -> tuple[bool, list[FrozenTrial]]:
    """The trials in the rows of ``trials()``, as Optuna's ``RDBStorage`` builds them, and whether the study exists."""
    found, parts = False, {}
    for kind, trial_id, _, name, number, value, text, start, complete in rows:
        if kind == _STUDY:
            found = True
            continue
        if kind == _TRIAL:
            parts[trial_id] = {"number": number, "state": TrialState[name], "start": _local(start),
                               "complete": _local(complete), "params": {}, "values": {}, "steps": {}, "user": {},
                               "system": {}}
            continue
        trial = parts[trial_id]
        if kind == _PARAM:
            trial["params"][name] = (value, distributions.json_to_distribution(text))
        elif kind == _VALUE:
            trial["values"][number] = models.TrialValueModel.stored_repr_to_value(value, _VALUE_TYPES[name])
        elif kind == _STEP:
            trial["steps"][number] = intermediate_value(value, _STEP_TYPES[name])
        else:
            trial["user" if kind == _USER_ATTR else "system"][name] = json.loads(text)
    return found or bool(parts), [_frozen(trial_id, part) for trial_id, part in parts.items()]


def _frozen(trial_id: int, part: dict[str, Any]) -> FrozenTrial:
    values = part["values"]
    return FrozenTrial(
        number=part["number"], state=part["state"], value=None,
        values=[values[objective] for objective in sorted(values)] if values else None,
        datetime_start=part["start"], datetime_complete=part["complete"],
        params={name: dist.to_external_repr(value) for name, (value, dist) in part["params"].items()},
        distributions={name: dist for name, (_, dist) in part["params"].items()},
        user_attrs=part["user"], system_attrs=part["system"], intermediate_values=part["steps"], trial_id=trial_id,
    )


def _local(utc: datetime.datetime | None) -> datetime.datetime | None:
    """A stored time (naive UTC) as Optuna gives it: naive local time."""
    return None if utc is None else utc.replace(tzinfo=datetime.timezone.utc).astimezone().replace(tzinfo=None)
