"""The PostgreSQL server the many-machines tests run against, and a second "machine".

``LRTUNE_TEST_POSTGRES`` names the server (``.ci/run`` starts one); without it
these tests are skipped, unless ``LRTUNE_REQUIRE_POSTGRES`` (set by ``.ci/run``)
or ``CI=true`` makes its absence a failure. ``LRTUNE_TEST_PGDATA`` and
``LRTUNE_TEST_PGBIN`` let a test restart the server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any, Iterator

import optuna
import pytest

import launcher
import netns
from helpers import ROOT, cli_env, lrtune_cmd

URL_VAR = "LRTUNE_TEST_POSTGRES"


def required() -> bool:
    return bool(os.environ.get("LRTUNE_REQUIRE_POSTGRES")) or os.environ.get("CI", "").lower() == "true"


def server_url() -> str:
    url = os.environ.get(URL_VAR, "")
    if not url:
        if required():
            pytest.fail(f"{URL_VAR} is not set, but CI needs the PostgreSQL tests to run (see .ci/run)")
        pytest.skip(f"needs a PostgreSQL server: set {URL_VAR}=postgresql+psycopg://user:pass@host:port/db")
    pytest.importorskip("psycopg", reason="needs psycopg 3: pip install -e '.[postgres]'")
    return url


def password(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).password or ""


def new_study_name() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def load(url: str, name: str) -> optuna.Study:
    """Study ``name``, read through a storage that holds no connection between calls.

    It may be opened while a worker creates the tables: it waits for them as lrtune does.
    """
    import sqlalchemy

    from lrtune.storage.backend import _created

    storage = _created(lambda: optuna.storages.RDBStorage(url, engine_kwargs={"poolclass": sqlalchemy.pool.NullPool}))
    return optuna.load_study(study_name=name, storage=storage)


def can_unshare() -> bool:
    """Whether this process may give a child its own hostname (root, util-linux's unshare)."""
    return os.geteuid() == 0 and shutil.which("unshare") is not None


def machine_cmd(host: str | None, *args: str, inject: str | None = None) -> list[str]:
    """The real CLI (with a fault ``inject``ed, if given), on "machine" ``host`` when one is given.

    A machine has its own hostname (a UTS namespace) and, where one can be made,
    its own network (``netns``); :func:`machine_env` points it at the server through that.
    """
    cmd = lrtune_cmd(*args, inject=inject)
    if host is None:
        return cmd
    if not can_unshare():
        pytest.skip("simulating a second machine needs root and unshare (util-linux)")
    inner = f"hostname {host} && exec \"$@\""
    cmd = ["unshare", "--uts", "sh", "-c", inner, "sh", *cmd]
    network = netns.join(host, server_url())
    return ["ip", "netns", "exec", network.namespace, *cmd] if network else cmd


def machine_env(host: str | None, env: dict[str, str]) -> dict[str, str]:
    """``env`` with the server as machine ``host`` reaches it (over its own network, where one can be made)."""
    network = netns.join(host, server_url()) if host is not None and can_unshare() else None
    if network is None or env.get("LRTUNE_STORAGE") != server_url():
        return env
    return {**env, "LRTUNE_STORAGE": network.url}


def wait_for_study(url: str, name: str, proc: Any, timeout: float = 600) -> None:
    """Until study ``name`` holds a trial (or ``proc`` ends): workers that join later find it set up."""
    import time

    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if load(url, name).get_trials(deepcopy=False):
                return
        except KeyError:
            pass
        time.sleep(0.2)


def start(host: str | None, *args: str, log: Path, inject: str | None = None, **env: str) -> Any:
    """A worker in the background; its stdout and stderr go to ``log``. On this machine it is forked from
    the CLI server (``launcher``); another machine's is a new interpreter in namespaces of its own."""
    out = open(log, "w")
    if host is None:
        with out:
            return launcher.launch(list(args), env=cli_env(**env), cwd=ROOT, inject=inject, stdout=out, stderr=out)
    return subprocess.Popen(
        machine_cmd(host, *args, inject=inject), stdout=out, stderr=subprocess.STDOUT, text=True,
        env=cli_env(**machine_env(host, env)), cwd=ROOT,
    )


def pg_ctl(*args: str) -> subprocess.CompletedProcess:
    """Run pg_ctl on the test server's cluster, as its (unprivileged) owner when we are root."""
    data, bindir = os.environ.get("LRTUNE_TEST_PGDATA"), os.environ.get("LRTUNE_TEST_PGBIN", "")
    if not data:
        if required():
            pytest.fail("LRTUNE_TEST_PGDATA is not set, but CI needs the server-restart test")
        pytest.skip("restarting the server needs LRTUNE_TEST_PGDATA (its data folder)")
    exe = str(Path(bindir) / "pg_ctl") if bindir else "pg_ctl"
    # The server's output goes to a log file: a pipe to this process would keep
    # pg_ctl's caller waiting for as long as the server runs.
    log = Path(data).parent / "server.log"
    cmd = [exe, "-D", data, "-l", str(log), *args]
    if os.geteuid() == 0:
        owner = Path(data).owner()
        cmd = ["su", owner, "-s", "/bin/sh", "-c", " ".join(cmd)]
    return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)


@contextlib.contextmanager
def fresh_schema() -> Iterator[str]:
    """A URL of the test server whose tables live in a new, empty schema of their own, dropped afterwards."""
    import sqlalchemy

    url = server_url()
    schema = f"s_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in url else "?"
    try:
        yield f"{url}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
