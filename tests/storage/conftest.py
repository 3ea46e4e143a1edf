"""What the storage tests share: the storages to run on, and the statements a storage runs."""

import time

import pytest

import postgres
from lrtune import storage as storage_mod


@pytest.fixture
def storage_url(tmp_path):
    return storage_mod.default_storage_url(tmp_path)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def any_url(request, tmp_path):
    """SQLite, and the test PostgreSQL server (skipped without one, except in CI)."""
    if request.param == "sqlite":
        return storage_mod.default_storage_url(tmp_path)
    return postgres.server_url()


@pytest.fixture
def statements_of():
    """``statements_of(storage)``: the SQL statements run on its engine from then on (a pool's pre-ping is not one)."""
    from sqlalchemy import event

    def watch(storage) -> list[str]:
        seen: list[str] = []
        event.listen(storage.engine, "before_cursor_execute", lambda conn, cursor, sql, *rest: seen.append(sql))
        return seen

    return watch


@pytest.fixture
def far_time_zone(monkeypatch):
    """Local time 5:30 ahead of UTC (a POSIX rule, so no time zone database is needed)."""
    monkeypatch.setenv("TZ", "IST-5:30")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()
