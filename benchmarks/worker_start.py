"""Local workers started as forks of a fork server against spawned ones: wall time and CPU of one small search.

Each run is ``lrtune.search`` with ``--workers N`` in its own process, on a new
study in a temporary folder; the spawned variant replaces the workers' start
method and nothing else. The two alternate, so both see the same machine.

    python benchmarks/worker_start.py [--workers 4] [--trials 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(method: str, workers: int, trials: int, studies_dir: str) -> None:
    """One search; its start method is the product's (``forkserver``) or ``spawn``."""
    import multiprocessing
    import multiprocessing.forkserver

    from lrtune.api import search
    from lrtune.config import Config
    from lrtune.tuner import workers as workers_mod

    if method == "spawn":
        workers_mod._context = lambda: multiprocessing.get_context("spawn")
    cfg = Config(studies_dir=studies_dir, workers=workers, trials=trials, epochs=1, image_size=8, batch_size=256)
    search(config=cfg)
    if method == "forkserver":  # wait for the server (which waited for its workers), so its CPU time is counted
        multiprocessing.forkserver._forkserver._stop()


def run(method: str, workers: int, trials: int) -> dict:
    with tempfile.TemporaryDirectory() as studies_dir:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        cmd = [sys.executable, __file__, "--child", method, str(workers), str(trials), studies_dir]
        subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # Every process of the search (the fork server and its workers included) is a waited-for descendant.
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"method": method, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        method, workers, trials, studies_dir = sys.argv[2:6]
        child(method, int(workers), int(trials), studies_dir)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(f"# {platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M')}")
    print("| round | start method | wall s | CPU s (all processes) |\n|---|---|---|---|")
    for r in range(args.rounds):
        for method in ("forkserver", "spawn"):
            row = run(method, args.workers, args.trials)
            print(f"| {r} | {row['method']} | {row['wall_s']} | {row['cpu_s']} |", flush=True)
            print(json.dumps(row), file=sys.stderr)


if __name__ == "__main__":
    main()
