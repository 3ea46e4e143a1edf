"""The server that ``launcher.py`` forks CLI processes from: it imports lrtune once and runs nothing else.

    python tests/zygote.py SOCKET

A request on the Unix socket is a length-prefixed JSON object (arguments,
environment, working folder, fault to inject) with the child's stdin, stdout
and stderr as file descriptors. The server forks; the child takes those
descriptors, environment and folder and runs the CLI; the server answers with
the child's pid, then, once it has exited, with its exit code (negative: the
signal that ended it, as ``subprocess`` reports it). One thread, no torch op
run here: a fork of this process is as clean as a new interpreter.
"""

from __future__ import annotations

import json
import os
import runpy
import select
import signal
import socket
import sys
import traceback

INJECT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "inject.py")
PRELOAD = ("torch", "timm", "albumentations", "optuna", "sklearn.metrics", "plotly.graph_objects",
           "lrtune.cli", "lrtune.tuner.driver", "lrtune.tuner.trial", "lrtune.tuner.workers",
           "lrtune.deploy.functions", "lrtune.report")


def _child(request: dict, fds: list[int]) -> None:
    """In the forked child: become the CLI process the request describes, and exit with its code."""
    code: int = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        if request["inject"]:
            sys.argv = [INJECT, request["inject"], *request["args"]]
            runpy.run_path(INJECT, run_name="__main__")
            code = 0
        else:
            from lrtune.cli import main

            sys.argv = ["lrtune", *request["args"]]
            code = main(request["args"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int) and exc.code is not None:
            print(exc.code, file=sys.stderr)
    except BaseException:  # what an uncaught exception does to a Python process
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    msg, fds, _, _ = socket.recv_fds(conn, 8 + 65536, 4)
    size = int.from_bytes(msg[:8], "big")
    body = msg[8:]
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ConnectionError("request cut short")
        body += chunk
    return json.loads(body), list(fds)


def serve(path: str) -> None:
    parent = os.getppid()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".tmp")
    listener.listen(64)
    os.rename(path + ".tmp", path)  # the launcher waits for this name
    waiting: dict[int, socket.socket] = {}
    while os.getppid() == parent:
        ready, _, _ = select.select([listener], [], [], 0.05)
        if ready:
            conn, _ = listener.accept()
            request, fds = _receive(conn)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                listener.close()
                for other in waiting.values():
                    other.close()
                conn.close()
                _child(request, fds)
            for fd in fds:
                os.close(fd)
            conn.sendall(f"{pid}\n".encode())
            waiting[pid] = conn
        while waiting:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            conn = waiting.pop(pid, None)
            if conn is not None:
                try:
                    conn.sendall(str(os.waitstatus_to_exitcode(status)).encode())
                except OSError:
                    pass
                conn.close()


def main() -> None:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    serve(sys.argv[1])


if __name__ == "__main__":
    main()
