"""The storage's share of trial time, and trials per hour, with several workers on one study.

Each worker is its own process running a real search (``lrtune.search``) on a
shared study, as a worker on another machine would. Every call lrtune makes to
the storage (asking, reporting, attributes, heartbeats, telling) is a method
of ``storage.backend.ResilientStorage``: Optuna's public ones, the private ones
Optuna's cache calls (``BACKEND_CALLS``), lrtune's own, and the two every
statement of lrtune's own goes through (``_execute``, ``_read``: a trial's
parameters are written when ``params_together`` ends). Each worker times
those calls (the outermost of nested ones) on all its threads. The calls from
its first trial's start on are compared with the time its trials ran (start
to end, from the study); the calls before (opening the study, checking and
recording the config and the dataset, the LR range test's record) are the
worker's setup, reported apart and also added in a second share. The share is
an upper bound: the heartbeat thread's calls overlap training rather than
delay it. ``--by-call`` prints, per row, the milliseconds and calls per trial of
each method.

    python benchmarks/storage_overhead.py --postgres postgresql+psycopg://user:pass@127.0.0.1:5432/db
    python benchmarks/storage_overhead.py --postgres URL --share-workers 1,4,8 --rate-workers 1,2,4

Without ``--postgres`` only SQLite is measured. By default trials are tiny (8 px
digits, ``--epochs`` epochs, random sampler, no pruner), which makes the
storage's share larger than in any real search; ``--default-trial`` runs the
default search's trials instead (16 px, 10 epochs, TPE and the median pruner);
``--data digits-writers`` runs them on the harder built-in task, whose epochs
are about 4 times longer.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worker(url: str, study: str, trials: int, studies_dir: str, overrides: dict) -> None:
    """One search process; prints its storage seconds and its trials' seconds as JSON."""
    import torch

    from lrtune.storage import backend
    from lrtune.api import search
    from lrtune.config import Config

    torch.set_num_threads(1)
    log: list[tuple[float, float, str]] = []  # each storage call: when it started (epoch s), seconds, name
    depth = threading.local()
    lock = threading.Lock()

    def timed(method):
        def call(self, *args, **kwargs):
            if getattr(depth, "n", 0):  # a storage call inside another: counted once
                return method(self, *args, **kwargs)
            depth.n = 1
            at, started = time.time(), time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                depth.n = 0
                with lock:
                    log.append((at, time.perf_counter() - started, method.__name__))

        return call

    storage_cls = backend.ResilientStorage  # Optuna's methods and lrtune's own
    timed_private = (*backend.BACKEND_CALLS, "_execute", "_read")
    for name in dir(storage_cls):
        if (not name.startswith("_") or name in timed_private) and callable(getattr(storage_cls, name)):
            setattr(storage_cls, name, timed(getattr(storage_cls, name)))
    cfg = Config(storage=url, study=study, trials=trials, studies_dir=studies_dir, keep="none", **overrides)
    result = search(config=cfg)
    mine = [t for t in result.get_trials(deepcopy=False)
            if t.user_attrs.get("pid") == os.getpid() and t.datetime_complete and t.datetime_start]
    trial_s = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in mine)
    # Setup: the calls before this worker's first trial started (opening the study, its checks, the range test).
    first = min((t.datetime_start.timestamp() for t in mine), default=math.inf)
    spent: dict[str, float] = {}
    calls: dict[str, int] = {}
    for at, seconds, name in log:
        if at >= first:
            spent[name] = spent.get(name, 0.0) + seconds
            calls[name] = calls.get(name, 0) + 1
    setup_s = sum(seconds for at, seconds, _ in log if at < first)
    print(json.dumps({"storage_s": sum(spent.values()), "setup_s": setup_s, "trial_s": trial_s, "trials": len(mine),
                      "by_call": spent, "calls": calls}))


def run(url: str, n_workers: int, trials: int, overrides: dict) -> dict:
    """``n_workers`` processes on a new study of ``trials`` trials: their storage share and the trials per hour."""
    study = f"bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as studies_dir:
        cmd = [sys.executable, __file__, "--worker", url, study, str(trials), studies_dir, json.dumps(overrides)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        started = time.perf_counter()
        first = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
        _wait_for_study(url, study, first)
        procs = [first] + [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) for _ in range(n_workers - 1)]
        outs = [p.communicate()[0] for p in procs]
        wall = time.perf_counter() - started
    rows = [json.loads(out.strip().splitlines()[-1]) for out in outs]
    storage_s = sum(r["storage_s"] for r in rows)
    trial_s = sum(r["trial_s"] for r in rows)
    done = sum(r["trials"] for r in rows)
    by_call: dict[str, float] = {}
    calls: dict[str, int] = {}
    for r in rows:
        for name, seconds in r["by_call"].items():
            by_call[name] = by_call.get(name, 0.0) + seconds
            calls[name] = calls.get(name, 0) + r["calls"][name]
    setup_s = sum(r["setup_s"] for r in rows)
    return {"share": storage_s / trial_s, "share_with_setup": (storage_s + setup_s) / trial_s,
            "setup_ms_per_worker": 1000 * setup_s / n_workers, "storage_ms_per_trial": 1000 * storage_s / done, "trials": done,
            "wall_s": wall, "per_hour": 3600 * done / wall,
            "by_call": {k: {"ms_per_trial": round(1000 * v / done, 1), "calls_per_trial": round(calls[k] / done, 1)}
                        for k, v in sorted(by_call.items(), key=lambda kv: -kv[1])}}


def _wait_for_study(url: str, study: str, proc: subprocess.Popen) -> None:
    import optuna

    while proc.poll() is None:
        try:
            if optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False):
                return
        except KeyError:
            pass
        time.sleep(0.2)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        url, study, trials, studies_dir, overrides = sys.argv[2:7]
        worker(url, study, int(trials), studies_dir, json.loads(overrides))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", default="", help="a PostgreSQL URL (postgresql+psycopg://...)")
    parser.add_argument("--share-workers", default="1,4,8")
    parser.add_argument("--rate-workers", default="1,2,4")
    parser.add_argument("--trials-per-worker", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--by-call", action="store_true", help="each row's storage time per trial, by method")
    parser.add_argument("--default-trial", action="store_true",
                        help="the default search's trials (16 px, 10 epochs, TPE, median pruner) instead of tiny ones")
    parser.add_argument("--data", default="", help="a built-in data set for the trials (with --default-trial: "
                        "digits-writers trains 1.1 s epochs on the CPU box where digits-lt trains 0.3 s)")
    args = parser.parse_args()
    overrides = ({} if args.default_trial else
                 {"epochs": args.epochs, "batch_size": 128, "image_size": 8, "sampler": "random", "pruner": "none"})
    if args.data:
        overrides["data"] = args.data
    print(f"# {platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M')}")
    with tempfile.TemporaryDirectory() as tmp:
        storages = {"sqlite": f"sqlite:///{tmp}/bench.db"}
        if args.postgres:
            storages["postgresql"] = args.postgres
        print("| storage | workers | trials | storage ms per trial | share of trial time | setup ms per worker "
              "| share with the setup |")
        print("|---|---|---|---|---|---|---|")
        for name, url in storages.items():
            for n in map(int, args.share_workers.split(",")):
                r = run(url, n, n * args.trials_per_worker, overrides)
                print(f"| {name} | {n} | {r['trials']} | {r['storage_ms_per_trial']:.0f} | {100 * r['share']:.2f}% "
                      f"| {r['setup_ms_per_worker']:.0f} | {100 * r['share_with_setup']:.2f}% |", flush=True)
                if args.by_call:
                    for call, row in r["by_call"].items():
                        print(f"    {call}: {row['ms_per_trial']} ms, {row['calls_per_trial']} calls per trial", flush=True)
        rate_url = storages.get("postgresql", storages["sqlite"])
        print(f"\n| workers ({'postgresql' if args.postgres else 'sqlite'}) | trials | wall s | trials per hour |")
        print("|---|---|---|---|")
        for n in map(int, args.rate_workers.split(",")):
            r = run(rate_url, n, n * args.trials_per_worker, overrides)
            print(f"| {n} | {r['trials']} | {r['wall_s']:.0f} | {r['per_hour']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
