"""Wall time, peak memory (RSS) and outcome of the default search, `lrtune search --trials 50`.

Runs the real CLI in a fresh studies folder and samples the resident memory of
its whole process tree every 0.1 s.

    python benchmarks/search_memory.py [--trials 50] [extra search flags...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import optuna
import psutil

ROOT = Path(__file__).resolve().parent.parent


def tree_rss(proc: psutil.Process) -> int:
    """The resident memory of ``proc`` and its descendants (0 for one that has just ended)."""
    return _tree_sum(proc, lambda p: p.memory_info().rss)


def tree_pss(proc: psutil.Process) -> int:
    """The proportional set size of ``proc`` and its descendants: each page shared by n of them counts 1/n in
    each, so a forked child's pages shared with its parent count once (0 for one that has just ended)."""
    return _tree_sum(proc, lambda p: p.memory_full_info().pss)


def _tree_sum(proc: psutil.Process, size: Callable[[psutil.Process], int]) -> int:
    try:
        tree = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in tree:
        try:
            total += size(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", default="50")
    args, extra = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as studies:
        cmd = [sys.executable, "-m", "lrtune", "search", "--trials", args.trials, "--studies-dir", studies, "-q", *extra]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        start = time.perf_counter()
        child = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        watched = psutil.Process(child.pid)
        peak = 0
        while child.poll() is None:
            try:
                peak = max(peak, tree_rss(watched))
            except psutil.NoSuchProcess:
                break
            time.sleep(0.1)
        out = child.stdout.read() if child.stdout else ""
        wall = time.perf_counter() - start
        if child.returncode:
            raise SystemExit(f"search failed with exit code {child.returncode}")
        storage = f"sqlite:///{Path(studies) / 'lrtune.db'}"
        (summary,) = optuna.get_all_study_summaries(storage)
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        states = [t.state.name for t in study.trials]
    print(out)
    print(f"command      lrtune search --trials {args.trials} {' '.join(extra)}".rstrip())
    print(f"wall time    {wall:.1f} s")
    print(f"peak RSS     {peak / 2**30:.2f} GiB (process tree)")
    print(f"best         macro-F1 {study.best_value:.4f} (trial {study.best_trial.number})")
    print(f"trials       {states.count('COMPLETE')} complete, {states.count('PRUNED')} pruned, {states.count('FAIL')} failed")


if __name__ == "__main__":
    main()
