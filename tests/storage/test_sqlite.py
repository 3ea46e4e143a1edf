"""An SQLite study database: a file that is not one, a file that vanishes, a full disk, a lock held elsewhere."""

import os
import sqlite3
import time

import optuna
import pytest
import sqlalchemy

import sqlite_lock
from lrtune import storage as storage_mod
from lrtune.errors import NoSpaceError, StorageError
from lrtune.storage import backend as backend_mod
from lrtune.storage import sqlite


def test_a_file_that_is_not_a_database_is_refused_with_one_line_and_left_as_it_is(tmp_path):
    path = tmp_path / "lrtune.db"
    junk = os.urandom(4096)
    path.write_bytes(junk)
    with pytest.raises(StorageError) as caught:
        storage_mod.open_storage(f"sqlite:///{path}")
    assert str(caught.value).startswith(f"storage {path} is not an SQLite database (file is not a database)")
    assert "\n" not in str(caught.value)
    assert path.read_bytes() == junk
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lrtune.db"]


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_database_file_that_vanishes_stops_every_call_and_is_never_created_again(tmp_path, how):
    path = tmp_path / "lrtune.db"
    storage = storage_mod.open_storage(f"sqlite:///{path}")
    study = optuna.create_study(study_name="s", storage=storage)
    study.ask()
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"lrtune.db{suffix}").unlink(missing_ok=True)
    if how == "replaced":
        sqlite3.connect(path).close()
    with pytest.raises(StorageError, match=f"^storage {path} vanished or was replaced during the search"):
        study.ask()
    assert path.exists() == (how == "replaced")


def test_a_full_disk_is_no_space_at_once_not_a_wait(tmp_path):
    waits = []
    full = sqlalchemy.exc.OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full"))

    def call():
        raise full

    with pytest.raises(NoSpaceError) as caught:
        backend_mod.retrying(call, url=f"sqlite:///{tmp_path}/lrtune.db", retry_for=600, sleep=waits.append)
    assert str(caught.value).startswith(f"no space left under {tmp_path} for the study database (")
    assert waits == []


def test_a_heartbeat_that_cannot_write_is_kept_for_the_trials_thread(tmp_path, monkeypatch):
    storage = storage_mod.open_storage(f"sqlite:///{tmp_path}/lrtune.db")
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()

    def full(*args, **kwargs):
        raise NoSpaceError("no space left under here for the study database")

    monkeypatch.setattr(backend_mod._Statements, "_execute", full)
    storage.record_heartbeat(trial._trial_id)  # Optuna's heartbeat thread: nothing raised there
    with pytest.raises(NoSpaceError):
        storage.raise_heartbeat_fault()


def test_a_lock_held_by_another_process_is_waited_out_with_one_line(tmp_path, monkeypatch):
    path = tmp_path / "lrtune.db"
    storage_mod.open_storage(f"sqlite:///{path}")
    monkeypatch.setattr(sqlite, "BUSY_TIMEOUT_S", 0.2)
    monkeypatch.setattr(backend_mod, "BACKOFF_FIRST", 0.1)
    said = []
    storage = storage_mod.open_storage(f"sqlite:///{path}", retry_for=120, say=said.append)
    holder = sqlite_lock.hold(path, 2)
    started = time.monotonic()
    optuna.create_study(study_name="s", storage=storage)
    assert holder.wait() == 0
    assert time.monotonic() - started >= 1.0  # it waited for the lock, and did not fail
    assert len(said) == 1 and "database is locked; waiting for it, for up to 120 s (--storage-retry)" in said[0]


def test_a_lock_held_past_the_storage_retry_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "lrtune.db"
    storage_mod.open_storage(f"sqlite:///{path}")
    monkeypatch.setattr(sqlite, "BUSY_TIMEOUT_S", 0.2)
    monkeypatch.setattr(backend_mod, "BACKOFF_FIRST", 0.1)
    storage = storage_mod.open_storage(f"sqlite:///{path}", retry_for=1)
    holder = sqlite_lock.hold(path, 30)
    try:
        with pytest.raises(StorageError, match=r"locked by another process for 1 s: database is locked$"):
            optuna.create_study(study_name="s", storage=storage)
    finally:
        holder.kill()
