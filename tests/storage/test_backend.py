import datetime
import math

import optuna
import pytest

import claims
import postgres
from lrtune import storage as storage_mod
from lrtune.errors import LRTuneError
from lrtune.storage import backend as backend_mod


def test_mask_url_hides_passwords():
    assert storage_mod.mask_url("postgresql://me:s3cret@db:5432/x") == "postgresql://me:***@db:5432/x"
    assert storage_mod.mask_url("sqlite:///studies/lrtune.db") == "sqlite:///studies/lrtune.db"


def test_sqlite_storage_is_in_wal_mode(storage_url, tmp_path):
    storage_mod.open_storage(storage_url)
    import sqlite3

    with sqlite3.connect(tmp_path / "lrtune.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _lost() -> Exception:
    import sqlalchemy

    return sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))


def test_a_lost_connection_is_retried_with_backoff_until_it_comes_back():
    calls, waits = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 4:
            raise optuna.exceptions.StorageInternalError("commit failed") from _lost()
        return "done"

    url = "postgresql+psycopg://me:s3cret@db/x"
    assert storage_mod.retrying(flaky, url=url, retry_for=60, sleep=waits.append) == "done"
    assert waits == [0.5, 1.0, 2.0]


def test_a_connection_lost_for_longer_than_the_retry_time_is_one_line_without_the_password():
    url = "postgresql+psycopg://me:s3cret@db/x"

    def down():
        raise _lost()

    with pytest.raises(LRTuneError) as info:
        storage_mod.retrying(down, url=url, retry_for=0.0, sleep=lambda s: None)
    message = str(info.value)
    assert message.startswith("storage postgresql+psycopg://me:***@db/x unreachable for 0 s: ")
    assert "s3cret" not in message and "\n" not in message


def test_errors_other_than_a_lost_connection_are_not_retried():
    def bad():
        raise ValueError("no such column")

    with pytest.raises(ValueError):
        storage_mod.retrying(bad, url="sqlite://", retry_for=60, sleep=lambda s: pytest.fail("retried"))


def _duplicate(what: str) -> Exception:
    import sqlalchemy

    return sqlalchemy.exc.IntegrityError("CREATE TYPE studydirection", {}, Exception(what))


def test_losing_the_race_to_create_the_tables_is_tried_again():
    calls, waits = [], []

    def racing():
        calls.append(1)
        if len(calls) < 3:
            raise _duplicate('duplicate key value violates unique constraint "pg_type_typname_nsp_index"')
        return "opened"

    assert backend_mod._created(racing, sleep=waits.append) == "opened"
    assert len(waits) == 2


def test_other_integrity_errors_while_opening_are_not_tried_again():
    def bad():
        raise _duplicate("null value in column violates not-null constraint")

    with pytest.raises(Exception, match="not-null"):
        backend_mod._created(bad, sleep=lambda s: pytest.fail("tried again"))


@pytest.mark.postgres
def test_workers_opening_an_empty_server_database_at_once_all_open_it():
    """Machines started together on a new database: one creates the tables, the others wait for them."""
    import threading
    import uuid

    import sqlalchemy
    from sqlalchemy.engine import make_url

    server = make_url(postgres.server_url())
    database = f"fresh_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT",
                                     poolclass=sqlalchemy.pool.NullPool)
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{database}"'))
    url = server.set(database=database).render_as_string(hide_password=False)
    workers = 6
    start, errors, opened = threading.Barrier(workers), [], []

    def open_it():
        start.wait()
        try:
            storage = storage_mod.open_storage(url, retry_for=30)
            opened.append(storage.get_all_studies())
            storage.engine.dispose()
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(str(exc))

    try:
        threads = [threading.Thread(target=open_it) for _ in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == [] and opened == [[]] * workers
        with sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool).connect() as connection:
            assert connection.execute(sqlalchemy.text("SELECT count(*) FROM version_info")).scalar() == 1
    finally:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'DROP DATABASE "{database}" WITH (FORCE)'))
        admin.dispose()


def test_server_databases_get_a_small_pool_checked_before_use():
    kwargs = backend_mod._engine_kwargs("postgresql+psycopg://me:pw@db/x")
    assert kwargs["pool_pre_ping"] is True
    assert kwargs["pool_size"] == backend_mod.POOL_SIZE == 2 and kwargs["max_overflow"] == 0


def test_calls_through_optunas_cache_are_retried_too(storage_url, monkeypatch):
    """``study.ask`` reaches the database through a private method of the storage."""
    backend_call = "_create_new_trial"
    storage = storage_mod.open_storage(storage_url)
    study = optuna.create_study(study_name="s", storage=storage)
    original, failures = getattr(optuna.storages.RDBStorage, backend_call), []

    def once_unreachable(self, *args, **kwargs):
        if not failures:
            failures.append(backend_call)
            raise _lost()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(optuna.storages.RDBStorage, backend_call, once_unreachable)
    monkeypatch.setattr(backend_mod, "BACKOFF_FIRST", 0.0)
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    study.tell(trial, 0.5)
    assert failures == [backend_call]
    assert [t.state for t in study.get_trials()] == [optuna.trial.TrialState.COMPLETE]


def test_a_running_trials_writes_are_one_statement_each(any_url, statements_of):
    storage = storage_mod.open_storage(any_url)
    study = optuna.create_study(study_name=postgres.new_study_name(), storage=storage, direction="maximize")
    first, trial = study.ask(), study.ask()
    first.suggest_float("lr", 1e-4, 1.0, log=True)  # the study's distribution of "lr" is known from here on
    seen = statements_of(storage)
    lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
    for step, value in enumerate([0.25, math.nan, math.inf, -math.inf]):
        trial.report(value, step)
    storage.set_trial_intermediate_values(trial._trial_id, {4: 0.5, 5: math.nan, 6: -math.inf, 7: 0.75})
    storage.set_trial_user_attrs(trial._trial_id, {"seed": 3, "host": "a", "curves": {"epoch": [1, 2]}})
    storage.set_trial_user_attrs(trial._trial_id, {"seed": 4})
    storage.record_heartbeat(trial._trial_id)
    storage.record_heartbeat(trial._trial_id)
    assert len(seen) == 1 + 4 + 1 + 2 + 2, seen
    stored = storage.get_trial(trial._trial_id)
    assert stored.params == {"lr": lr}
    assert stored.intermediate_values[0] == 0.25 and math.isnan(stored.intermediate_values[1])
    assert stored.intermediate_values[2] == math.inf and stored.intermediate_values[3] == -math.inf
    assert stored.intermediate_values[4] == 0.5 and math.isnan(stored.intermediate_values[5])
    assert stored.intermediate_values[6] == -math.inf and stored.intermediate_values[7] == 0.75
    assert stored.user_attrs == {"seed": 4, "host": "a", "curves": {"epoch": [1, 2]}}
    study.tell(trial, 0.5)
    assert storage.get_trial(trial._trial_id).value == 0.5


def test_writes_to_a_finished_trial_or_an_incompatible_distribution_are_refused_as_optuna_refuses_them(any_url):
    storage = storage_mod.open_storage(any_url)
    study = optuna.create_study(study_name=postgres.new_study_name(), storage=storage)
    done, running = study.ask(), study.ask()
    done.suggest_float("lr", 1e-4, 1.0, log=True)
    done.report(0.5, 1)
    study.tell(done, 0.5)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        storage.set_trial_intermediate_value(done._trial_id, 2, 0.75)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        storage.set_trial_user_attrs(done._trial_id, {"seed": 1})
    with pytest.raises(ValueError, match="log"):
        running.suggest_float("lr", 1e-4, 1.0)
    stored = storage.get_trial(done._trial_id)
    assert stored.intermediate_values == {1: 0.5} and stored.user_attrs == {}
    assert storage.get_trial(running._trial_id).params == {}


@pytest.mark.parametrize("cached", [False, True], ids=["direct", "behind-optunas-cache"])
def test_a_parameter_on_a_finished_trial_is_refused_as_finished_whatever_its_distribution(any_url, cached):
    """Optuna checks the trial's state before the distribution: a late write from another worker says why."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    backend = storage_mod.open_storage(any_url)
    storage = optuna.storages._CachedStorage(backend) if cached else backend
    study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], postgres.new_study_name())
    trial_id = storage.create_new_trial(study_id)
    storage.set_trial_param(trial_id, "x", 0.5, FloatDistribution(0, 1))
    storage.set_trial_state_values(trial_id, optuna.trial.TrialState.COMPLETE, [1.0])
    for distribution, value in ((FloatDistribution(0, 1), 0.2), (CategoricalDistribution(["a", "b"]), 1)):
        with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
            storage.set_trial_param(trial_id, "x", value, distribution)
    running = storage.create_new_trial(study_id)
    with pytest.raises(ValueError, match="Cannot set different distribution kind"):
        storage.set_trial_param(running, "x", 1, CategoricalDistribution(["a", "b"]))
    assert backend.get_trial(trial_id).params == {"x": 0.5}


def test_many_trials_to_include_are_read_without_binding_each_id(storage_url, statements_of):
    """Optuna's cache asks for the trials it has not seen finish; databases cap a statement's parameters."""
    storage = storage_mod.open_storage(storage_url)
    study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s")
    ids = [storage.create_new_trial(study_id) for _ in range(4)]
    wanted = {ids[1]} | set(range(ids[-1] + 1, ids[-1] + 5000))  # ids that do not exist, as after deletions
    seen = statements_of(storage)
    found = storage._get_trials(study_id, None, wanted, ids[2])
    assert [t._trial_id for t in found] == [ids[1], ids[3]]
    assert len(seen) == 1


def test_trial_ids_by_state_and_their_intermediate_values(storage_url):
    storage = storage_mod.open_storage(storage_url)
    study = optuna.create_study(study_name="s", storage=storage)
    other = optuna.create_study(study_name="other", storage=storage)
    first = study.ask()
    first.report(0.5, 1)
    first.report(float("nan"), 2)
    study.tell(first, 0.5)
    study.tell(study.ask(), 0.2)
    study.tell(study.ask(), state=optuna.trial.TrialState.PRUNED)
    running = study.ask()
    other.tell(other.ask(), 0.3)
    complete = storage.trial_ids(study._study_id, (optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 2 and first._trial_id in complete
    assert storage.trial_ids(study._study_id, (optuna.trial.TrialState.RUNNING,)) == [running._trial_id]
    assert len(storage.trial_ids(other._study_id, (optuna.trial.TrialState.COMPLETE,))) == 1
    assert len(storage.trial_ids(study._study_id, storage_mod.FINISHED)) == 3
    values = storage.intermediate_values(complete)
    assert values[first._trial_id][1] == 0.5 and math.isnan(values[first._trial_id][2])
    assert [v for k, v in values.items() if k != first._trial_id] == [{}]
    assert storage.intermediate_values([]) == {}


def test_lrtunes_own_calls_are_retried_too(storage_url, monkeypatch):
    storage = storage_mod.open_storage(storage_url)
    study = optuna.create_study(study_name="s", storage=storage)
    study.set_user_attr("config", {"lr_min": 1e-5})
    trial = study.ask()
    monkeypatch.setattr(backend_mod, "BACKOFF_FIRST", 0.0)
    original, failures = storage.engine.connect, []

    def unreachable_every_other_time():
        failures.append(1)
        if len(failures) % 2:
            raise _lost()
        return original()

    monkeypatch.setattr(storage.engine, "connect", unreachable_every_other_time)
    storage.set_trial_user_attrs(trial._trial_id, {"seed": 1})
    storage._set_trial_param(trial._trial_id, "x", 0.5, optuna.distributions.FloatDistribution(0, 1), None)
    assert storage.trial_ids(study._study_id, (optuna.trial.TrialState.RUNNING,)) == [trial._trial_id]
    assert storage.get_trial(trial._trial_id).params == {"x": 0.5}
    assert [t.user_attrs for t in storage.get_all_trials(study._study_id)] == [{"seed": 1}]
    assert storage.get_study_user_attrs(study._study_id) == {"config": {"lr_min": 1e-5}}
    assert len(failures) == 2 * 7  # each call: a lost connection, then the call (the parameter: a read and a write)


def test_ask_looks_for_a_queued_trial_by_id_and_loads_trials_only_when_one_is_queued(storage_url, monkeypatch):
    storage = storage_mod.open_storage(storage_url)
    study = optuna.create_study(study_name="s", storage=storage)
    others = [study.ask() for _ in range(2)]  # running trials of other workers
    storage_mod.pop_waiting_by_id(study)
    loads = []
    original = storage_mod.ResilientStorage._get_trials
    monkeypatch.setattr(storage_mod.ResilientStorage, "_get_trials",
                        lambda self, *args, **kwargs: loads.append(1) or original(self, *args, **kwargs))
    assert study._pop_waiting_trial_id() is None
    assert loads == []
    study.enqueue_trial({"x": 0.25})
    trial = study.ask()
    assert loads and trial.suggest_float("x", 0, 1) == 0.25
    assert trial._trial_id not in [t._trial_id for t in others]
    assert study._pop_waiting_trial_id() is None


def test_a_queued_trial_is_taken_by_one_worker_only_in_one_statement(any_url, statements_of):
    first = storage_mod.open_storage(any_url)
    second = storage_mod.open_storage(any_url)
    name = postgres.new_study_name()
    study = optuna.create_study(study_name=name, storage=first)
    study.enqueue_trial({"x": 0.5})
    queued = study.get_trials(deepcopy=False)[0]._trial_id
    seen = statements_of(first)
    assert first.set_trial_state_values(queued, optuna.trial.TrialState.RUNNING) is True
    assert len(seen) == 1, seen
    assert second.set_trial_state_values(queued, optuna.trial.TrialState.RUNNING) is False
    trial = second.get_trial(queued)
    assert trial.state == optuna.trial.TrialState.RUNNING and trial.datetime_start is not None
    assert first.set_trial_state_values(queued, optuna.trial.TrialState.COMPLETE, values=[0.5]) is True
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        second.set_trial_state_values(queued, optuna.trial.TrialState.RUNNING)


def test_workers_racing_for_queued_trials_on_sqlite_take_each_once(storage_url):
    """Optuna's read-then-write lets two SQLite workers both take a queued trial; the conditional update does not."""
    import multiprocessing

    study = optuna.create_study(study_name="s", storage=storage_mod.open_storage(storage_url))
    for i in range(60):
        study.enqueue_trial({"x": i}, skip_if_exists=False)
    ids = [t._trial_id for t in study.get_trials(deepcopy=False)]
    ctx = multiprocessing.get_context("spawn")
    together, won = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=claims.claim_all, args=(storage_url, ids, together, won)) for _ in range(4)]
    for proc in procs:
        proc.start()
    taken = [won.get(timeout=300) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    assert sorted(i for batch in taken for i in batch) == sorted(ids)


def test_a_taken_trial_starts_now_in_any_time_zone(storage_url, far_time_zone):
    """Optuna stores trial times as naive UTC and gives them back in local time."""
    storage = storage_mod.open_storage(storage_url)
    study = optuna.create_study(study_name="s", storage=storage)
    study.enqueue_trial({"x": 0.5})
    queued = study.get_trials(deepcopy=False)[0]._trial_id
    assert storage.set_trial_state_values(queued, optuna.trial.TrialState.RUNNING)
    started = optuna.storages.RDBStorage.get_trial(storage, queued).datetime_start
    assert abs((datetime.datetime.now() - started).total_seconds()) < 600


def test_a_workers_first_parameter_is_checked_against_the_study_in_one_query_and_written_in_one(any_url, statements_of):
    """Optuna's cache knows only the distributions its own process wrote: another worker's first trial reads the study's."""
    name = postgres.new_study_name()
    first = optuna.create_study(study_name=name, storage=storage_mod.open_storage(any_url))
    first.ask().suggest_float("lr", 1e-4, 1.0, log=True)
    storage = storage_mod.open_storage(any_url)
    trial = optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler()).ask()
    seen = statements_of(storage)
    with pytest.raises(ValueError, match="log"):
        trial.suggest_float("lr", 1e-4, 1.0)
    assert len(seen) == 1, seen
    lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
    batch = trial.suggest_int("batch", 8, 64)  # no trial of the study has it yet
    assert len(seen) == 1 + 2 + 2, seen
    assert storage.get_trial(trial._trial_id).params == {"lr": lr, "batch": batch}


def test_parameters_set_together_are_checked_as_they_come_and_written_in_one_statement(any_url, statements_of):
    storage = storage_mod.open_storage(any_url)
    study = optuna.create_study(study_name=postgres.new_study_name(), storage=storage,
                                sampler=optuna.samplers.RandomSampler())
    study.ask().suggest_float("lr", 1e-4, 1.0, log=True)  # Optuna's cache knows "lr" from here on
    trial = study.ask()
    seen = statements_of(storage)
    with storage.params_together(trial._trial_id):
        with pytest.raises(ValueError, match="log"):
            trial.suggest_float("lr", 1e-4, 1.0)  # refused: its trial's state is read (a finished trial says so)
        lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
        batch = trial.suggest_int("batch", 8, 64)  # new to the study: its distribution is read, none is found
        loss = trial.suggest_categorical("loss", ["ce", "focal"])
        assert len(seen) == 1 + 2, seen
    assert len(seen) == 1 + 2 + 1, seen
    assert storage.get_trial(trial._trial_id).params == {"lr": lr, "batch": batch, "loss": loss}
    study.tell(trial, 0.5)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        with storage.params_together(trial._trial_id):
            storage._set_trial_param(trial._trial_id, "x", 0.5, optuna.distributions.FloatDistribution(0, 1), None)


def test_single_user_and_system_attributes_are_one_statement_each(any_url, statements_of):
    storage = storage_mod.open_storage(any_url)
    study = optuna.create_study(study_name=postgres.new_study_name(), storage=storage)
    trial = study.ask()
    seen = statements_of(storage)
    trial.set_user_attr("reason", "pruned at epoch 2")
    storage.set_trial_system_attr(trial._trial_id, "completed_rung_0", 0.5)
    assert len(seen) == 2, seen
    stored = storage.get_trial(trial._trial_id)
    assert stored.user_attrs == {"reason": "pruned at epoch 2"} and stored.system_attrs == {"completed_rung_0": 0.5}
    study.tell(trial, 0.5)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        storage.set_trial_system_attr(trial._trial_id, "late", 1)
