"""A study database in an SQLite file: opened in WAL mode, never created twice, never overwritten.

A file that is not a database is refused and left as it is. Once open, every
connection checks that the file is still the one it opened: a file deleted or
replaced mid-search stops the search with one line, where SQLite would create
an empty database in its place or go on writing to the deleted one.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from lrtune.errors import StorageError, is_no_space, no_space

BUSY_TIMEOUT_S = 10  # SQLite waits this long for another process's lock, then the caller's retries take over


def sqlite_path(url: str) -> str | None:
    """The file behind a ``sqlite:///`` URL; None for memory databases and other storages."""
    if not url.startswith("sqlite:///"):
        return None
    path = url.removeprefix("sqlite:///")
    return None if not path or path == ":memory:" or path.startswith("file:") else path


def prepare(url: str) -> None:
    """Create the file's folder and switch the database to WAL.

    WAL lets readers (``lrtune report``) work while a search writes, and lets
    several local workers share one file without "database is locked".
    """
    path = sqlite_path(url)
    if path is None:
        return
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(path, timeout=BUSY_TIMEOUT_S) as conn:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.DatabaseError as exc:
        if "not a database" in str(exc) or "malformed" in str(exc):
            raise StorageError(f"storage {path} is not an SQLite database ({exc}); it was left as it is: move it "
                               "away, or pick another --storage or --studies-dir") from None
        if is_no_space(exc):
            raise no_space(Path(path).parent, what="the study database",
                           fix="free space there, or pick another --storage or --studies-dir") from None
        raise StorageError(f"cannot open storage {url}: {exc}") from None
    except OSError as exc:
        if is_no_space(exc):
            raise no_space(Path(path).parent, what="the study database",
                           fix="free space there, or pick another --storage or --studies-dir") from None
        raise StorageError(f"cannot open storage {url}: {exc}") from None


def engine_kwargs() -> dict[str, Any]:
    return {"connect_args": {"timeout": BUSY_TIMEOUT_S}}


def guard(engine: Engine, url: str) -> None:
    """From now on, every connection of ``engine`` checks that the database file is the one open now; and
    commits with ``synchronous=NORMAL``, which in WAL mode survives any crash of the process at half the cost."""
    path = sqlite_path(url)
    event.listen(engine, "connect", _normal_sync)
    if path is None:
        return
    identity = _identity(path)

    def check(*_: Any) -> None:
        if _identity(path) != identity:
            raise StorageError(f"storage {path} vanished or was replaced during the search; nothing was written "
                               "in its place: put the file back (or pick another --storage) and run the same "
                               "search again to resume")

    event.listen(engine, "do_connect", check)  # before SQLite would create an empty file in its place
    event.listen(engine, "checkout", check)  # before a pooled connection writes to a deleted file


def _identity(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _normal_sync(connection: Any, record: Any) -> None:
    connection.execute("PRAGMA synchronous=NORMAL")
