"""Optuna's own storage conformance suite, run against every storage lrtune opens.

``optuna.testing.pytest_storages.StorageTestCase`` is the suite Optuna runs
against its own storages. lrtune's storage writes Optuna's tables with
statements of its own, so it is a second implementation of that contract:
the optuna CLI, optuna-dashboard, ``optuna.load_study`` and every sampler
and pruner rely on it. Optuna skips none of these tests for ``RDBStorage``,
so none are skipped here. The suite is the one in the Optuna that
``pip install -e .`` resolved, so a later Optuna that breaks lrtune's
statements fails here first.

After it, two tests of ``_get_trials`` (which lrtune answers in one query)
that Optuna keeps in its repository rather than in the wheel.
"""

from __future__ import annotations

from typing import Iterator

import pytest
from optuna.storages import BaseStorage, _CachedStorage
from optuna.study import StudyDirection
from optuna.testing.pytest_storages import StorageTestCase

import postgres
from lrtune.storage import open_storage
from lrtune.storage.backend import ResilientStorage

MODES = ["sqlite", "sqlite-cached", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=MODES)
def storage(request: pytest.FixtureRequest, tmp_path) -> Iterator[BaseStorage]:
    """lrtune's storage on SQLite, the same behind Optuna's cache (as ``optuna.load_study`` wraps it), and on
    PostgreSQL in a fresh schema per test."""
    if request.param == "postgresql":
        with postgres.fresh_schema() as url:
            backend = open_storage(url)
            yield backend
            backend.engine.dispose()
        return
    backend = open_storage(f"sqlite:///{tmp_path / 'contract.db'}")
    yield _CachedStorage(backend) if request.param == "sqlite-cached" else backend
    backend.engine.dispose()


class TestLrtuneStorage(StorageTestCase):
    """Every test of Optuna's suite, unchanged."""


def _backend(storage: BaseStorage) -> ResilientStorage:
    backend = getattr(storage, "_backend", storage)
    assert isinstance(backend, ResilientStorage)
    return backend


def test_get_trials_with_a_large_set_of_trials_to_include(storage):
    backend = _backend(storage)
    study_id = backend.create_new_study(directions=[StudyDirection.MINIMIZE])
    trial_id = backend.create_new_trial(study_id)
    after = trial_id + 500_000
    assert backend._get_trials(study_id, states=None, included_trial_ids=set(), trial_id_greater_than=after) == []
    included = backend._get_trials(study_id, states=None, included_trial_ids=set(range(500_000)),
                                   trial_id_greater_than=after)
    assert [t._trial_id for t in included] == [trial_id]


def test_get_trials_after_a_trial_id(storage):
    backend = _backend(storage)
    study_id = backend.create_new_study(directions=[StudyDirection.MINIMIZE])
    backend.create_new_trial(study_id)
    assert len(backend._get_trials(study_id, states=None, included_trial_ids=set(), trial_id_greater_than=-1)) == 1
    assert backend._get_trials(study_id, states=None, included_trial_ids=set(), trial_id_greater_than=500_001) == []
