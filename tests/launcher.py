"""The real CLI in a process of its own, forked from one that imported lrtune once.

Importing torch, timm, albumentations and Optuna costs a new Python process
about 4 s of CPU, several times what a tiny test search trains. So the CLI
tests start ``lrtune`` the way ``--workers`` starts its workers: as a fork of
a server process (``zygote.py``, one per test process) that imported
everything once and touches nothing else. The child gets its own pid,
arguments, environment, working folder, stdin, stdout and stderr, runs
``lrtune.cli.main`` (or ``tests/inject.py``) and exits with its code; signals
go to it directly. ``python -m lrtune`` itself still runs where it must
(``fresh=True``): a new interpreter, for what only applies at startup.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

ZYGOTE = Path(__file__).resolve().parent / "zygote.py"
_server: dict[str, object] = {}
_lock = threading.Lock()


def _socket_path() -> str:
    """The server of this process, started on first use; its socket's path."""
    with _lock:
        proc = _server.get("proc")
        if proc is not None and proc.poll() is None:  # type: ignore[union-attr]
            return str(_server["path"])
        folder = tempfile.mkdtemp(prefix="lrtune-zygote-")
        path = os.path.join(folder, "socket")
        env = {**os.environ, "PYTHONPATH": str(ZYGOTE.parent.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        proc = subprocess.Popen([sys.executable, str(ZYGOTE), path], env=env, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 600
        while not os.path.exists(path):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the CLI server did not start (exit code {proc.poll()})")
            time.sleep(0.02)
        _server.update(proc=proc, path=path)
        atexit.register(proc.kill)
        return path


class Launched:
    """What ``subprocess.Popen`` offers a test, for a CLI process forked from the server."""

    def __init__(self, conn: socket.socket, pid: int, stdout: IO[str] | None, stderr: IO[str] | None) -> None:
        self._conn, self.pid, self.stdout, self.stderr = conn, pid, stdout, stderr
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self._conn.setblocking(False)
            try:
                self._read_status()
            except BlockingIOError:
                self._conn.setblocking(True)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self._conn.settimeout(timeout)
            try:
                self._read_status()
            except TimeoutError:
                self._conn.settimeout(None)
                raise subprocess.TimeoutExpired(f"lrtune (pid {self.pid})", timeout) from None
        return self.returncode  # type: ignore[return-value]

    def _read_status(self) -> None:
        data = self._conn.recv(64)
        if not data:
            raise RuntimeError(f"the CLI server lost process {self.pid}")
        self.returncode = int(data.decode())
        self._conn.close()

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(9)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Read both pipes to their end, then wait."""
        results: dict[str, str] = {}

        def drain(name: str, stream: IO[str] | None) -> None:
            results[name] = stream.read() if stream is not None else ""

        readers = [threading.Thread(target=drain, args=item, daemon=True)
                   for item in (("out", self.stdout), ("err", self.stderr))]
        for reader in readers:
            reader.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        for reader in readers:
            reader.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if reader.is_alive():
                raise subprocess.TimeoutExpired(f"lrtune (pid {self.pid})", timeout)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return results["out"], results["err"]


def launch(args: list[str], *, env: dict[str, str], cwd: str | Path, inject: str | None = None,
           stdout: int | IO | None = None, stderr: int | IO | None = None) -> Launched:
    """Start ``lrtune ARGS`` (or ``tests/inject.py INJECT ARGS``) forked from the server.

    ``stdout`` and ``stderr`` are ``subprocess.PIPE`` (readable text on the result), ``subprocess.DEVNULL``,
    an open file, or None (this process's own).
    """
    ends, ours = [], {}
    for name, target, default in (("stdout", stdout, 1), ("stderr", stderr, 2)):
        if target == subprocess.PIPE:
            read, write = os.pipe()
            ours[name] = os.fdopen(read, "r")
            ends.append(write)
        elif target is None:
            ends.append(os.dup(default))
        elif target == subprocess.DEVNULL:
            ends.append(os.open(os.devnull, os.O_WRONLY))
        else:
            ends.append(os.dup(target.fileno()))  # type: ignore[union-attr]
    stdin = os.open(os.devnull, os.O_RDONLY)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(_socket_path())
        request = json.dumps({"args": list(args), "env": env, "cwd": str(cwd), "inject": inject}).encode()
        socket.send_fds(conn, [len(request).to_bytes(8, "big") + request], [stdin, *ends])
        pid = int(_read_line(conn))
    finally:
        for fd in (stdin, *ends):
            os.close(fd)
    return Launched(conn, pid, ours.get("stdout"), ours.get("stderr"))


def _read_line(conn: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(1)
        if not chunk:
            raise RuntimeError("the CLI server closed the connection")
        data += chunk
    return data.decode().strip()


def run(args: list[str], *, env: dict[str, str], cwd: str | Path, inject: str | None = None,
        timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``lrtune ARGS`` to its end, as ``subprocess.run(..., capture_output=True, text=True)`` would."""
    proc = launch(args, env=env, cwd=cwd, inject=inject, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return subprocess.CompletedProcess(["lrtune", *args], proc.returncode, out, err)
