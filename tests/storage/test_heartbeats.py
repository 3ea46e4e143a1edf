"""Optuna's heartbeat and stale-trial contract, on lrtune's storage.

Optuna keeps these tests in its repository, not in the wheel; these follow
``tests/storages_tests/test_heartbeat.py`` there: ``fail_stale_trials``
fails a silent RUNNING trial once, its callback runs once, and
``RetryFailedTrialCallback`` (or lrtune's own retry) queues a retry that
knows the trial it continues. Every storage lrtune opens runs them.
"""

from __future__ import annotations

import datetime
import threading
import time
from typing import Iterator

import optuna
import pytest
from optuna.storages import RetryFailedTrialCallback
from optuna.trial import TrialState

import postgres
from lrtune.storage import Heartbeat, open_storage
from lrtune.tuner import recovery

INTERVAL, GRACE = 1, 2


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'heartbeats.db'}"
        return
    with postgres.fresh_schema() as schema_url:
        yield schema_url


def worker(url: str, on_stale) -> optuna.storages.RDBStorage:
    """One worker's storage, as ``lrtune search`` opens it: heartbeats on, ``on_stale`` for silent trials."""
    return open_storage(url, heartbeat=Heartbeat(interval=INTERVAL, grace=GRACE, on_stale=on_stale))


def fall_silent(storage, trial_ids) -> None:
    """Move the trials' last heartbeat past the grace period, as if that much time had passed."""
    from optuna.storages._rdb.models import TrialHeartbeatModel
    from sqlalchemy import select, update

    table = TrialHeartbeatModel.__table__
    with storage.engine.begin() as conn:
        rows = conn.execute(select(table.c.trial_id, table.c.heartbeat).where(table.c.trial_id.in_(list(trial_ids))))
        for trial_id, beat in rows.all():
            earlier = beat - datetime.timedelta(seconds=GRACE + 2)
            conn.execute(update(table).where(table.c.trial_id == trial_id).values(heartbeat=earlier))


def silent_trials(storage, n: int, name: str = "s") -> optuna.Study:
    """A study with ``n`` RUNNING trials whose last heartbeat is older than the grace period."""
    study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True)
    ids = []
    for i in range(n):
        trial = study.ask()
        trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        trial.report(0.5, 1)
        trial.set_user_attr("seed", i)
        storage.record_heartbeat(trial._trial_id)
        ids.append(trial._trial_id)
    fall_silent(storage, ids)
    return study


def test_a_trial_with_a_fresh_heartbeat_stays_running_and_a_silent_one_fails(url):
    calls = []
    storage = worker(url, lambda study, trial: calls.append(trial.number))
    study = silent_trials(storage, 1)
    storage.record_heartbeat(study.trials[0]._trial_id)
    optuna.storages.fail_stale_trials(study)
    assert study.trials[0].state == TrialState.RUNNING and calls == []
    assert storage._get_stale_trial_ids(study._study_id) == []
    time.sleep(GRACE + 1)  # once by the clock: the storage's own idea of stale
    assert storage._get_stale_trial_ids(study._study_id) == [study.trials[0]._trial_id]
    optuna.storages.fail_stale_trials(study)
    assert study.trials[0].state == TrialState.FAIL and calls == [0]


def test_two_workers_checking_at_once_fail_each_silent_trial_once_and_queue_one_retry(url, monkeypatch):
    """Both workers read every trial as RUNNING before either writes: the worst interleaving, forced."""
    calls = []
    lock = threading.Lock()

    def on_stale(study, trial):
        with lock:
            calls.append(trial.number)
        recovery.retry_trial(study, trial)

    a, b = worker(url, on_stale), worker(url, on_stale)
    n = 4
    silent_trials(a, n)
    both_read = threading.Barrier(2)
    check = optuna.storages.RDBStorage.check_trial_is_updatable

    def after_both_read(self, trial_id, state):
        try:
            both_read.wait(timeout=2)  # a storage that locks the row makes the other wait instead
        except threading.BrokenBarrierError:
            pass
        return check(self, trial_id, state)

    monkeypatch.setattr(optuna.storages.RDBStorage, "check_trial_is_updatable", after_both_read)
    studies = [optuna.load_study(study_name="s", storage=storage) for storage in (a, b)]
    errors = []

    def run(study):
        try:
            optuna.storages.fail_stale_trials(study)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(study,)) for study in studies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    trials = studies[0].get_trials(deepcopy=False)
    assert [t.state for t in trials[:n]] == [TrialState.FAIL] * n
    assert sorted(calls) == list(range(n))  # each trial's callback once, whichever worker ran it
    retries = [t for t in trials[n:]]
    assert sorted(t.user_attrs["retry_of"] for t in retries) == list(range(n))
    assert all(t.state == TrialState.WAITING for t in retries)
    assert [t.user_attrs["seed"] for t in sorted(retries, key=lambda t: t.user_attrs["retry_of"])] == list(range(n))


@pytest.mark.parametrize("max_retry", [None, 0, 1])
def test_optunas_retry_callback_queues_the_retry_with_the_trial_it_continues(url, max_retry):
    storage = worker(url, RetryFailedTrialCallback(max_retry=max_retry))
    study = silent_trials(storage, 1)
    study.optimize(lambda trial: trial.suggest_float("lr", 1e-4, 1e-1, log=True), n_trials=1)
    trials = study.trials
    assert trials[0].state == TrialState.FAIL
    assert RetryFailedTrialCallback.retried_trial_number(trials[1]) == (None if max_retry == 0 else 0)
    if max_retry != 0:
        assert trials[1].params == trials[0].params and trials[1].distributions == trials[0].distributions
        assert trials[1].user_attrs == trials[0].user_attrs
        assert trials[1].intermediate_values == {}


def test_lrtunes_retry_carries_retry_of_and_the_seed(url):
    storage = worker(url, recovery.retry_trial)
    study = silent_trials(storage, 1)
    optuna.storages.fail_stale_trials(study)
    (retry,) = study.get_trials(states=(TrialState.WAITING,))
    assert retry.user_attrs == {"retry_of": 0, "seed": 0, "faults": 1}  # a death is a fault of the machine
    assert retry.system_attrs["fixed_params"] == study.trials[0].params
