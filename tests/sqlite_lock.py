"""Another process that takes an SQLite database's exclusive lock and holds it, for the tests of waiting on it."""

from __future__ import annotations

import subprocess
import sys

HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


def hold(path: object, seconds: float) -> subprocess.Popen:
    """A process holding ``path``'s exclusive lock for ``seconds``, returned once it has the lock."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc
