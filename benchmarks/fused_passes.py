"""Every fused pass of a search, timed: how many trials it trained, in how many parts, at how many torch threads.

Runs `lrtune search ARGS` in this process with `training.fused.train_pass` timed,
then prints one row per (trials in the pass, parts, threads of the pass's thread):
the number of such passes and their mean seconds; then the search's seconds in
this process, and of them the passes', their training's and their validation's,
and the trial-epochs the passes trained.

    python benchmarks/fused_passes.py --trials 30 --fuse 2 [--studies-dir DIR] [other search options]
    python benchmarks/fused_passes.py --without-prefetch --trials 30 --fuse 8   # passes augment their own batches

``--without-prefetch``: no loader process augments the next pass (``HostLoader.ahead`` gives None), so each
pass's own thread augments its batches as the parts train.
"""

from __future__ import annotations

import collections
import sys
import tempfile
import threading
import time

import torch

import lrtune.training.fused as fused
from lrtune.cli.main import main as cli_main


def main(argv: list[str]) -> int:
    rows: list[tuple[int, int, int, float]] = []
    timed = fused.train_pass

    def train_pass(net, runs, **kwargs):
        started, threads = time.perf_counter(), torch.get_num_threads()
        try:
            return timed(net, runs, **kwargs)
        finally:
            rows.append((len(runs), kwargs.get("parts", 0), threads, time.perf_counter() - started))

    fused.train_pass = train_pass
    spent = {"training": 0.0, "validating": 0.0}

    def timing(key, fn):
        def timed_part(*args, **kwargs):
            if threading.current_thread().name.startswith("lrtune-part"):  # inside train_split, timed whole
                return fn(*args, **kwargs)
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - started
        return timed_part

    fused.train_split = timing("training", fused.train_split)
    fused.train_together = timing("training", fused.train_together)
    fused.evaluate_together = timing("validating", fused.evaluate_together)
    args = list(argv)
    if "--without-prefetch" in args:
        from lrtune.training.loaders import HostLoader

        args.remove("--without-prefetch")
        HostLoader.ahead = lambda self: None  # type: ignore[method-assign]
    began = time.perf_counter()
    if "--studies-dir" not in args:
        args += ["--studies-dir", tempfile.mkdtemp(prefix="fused-passes-")]
    code = cli_main(["search", *args, "-q"])
    wall = time.perf_counter() - began
    groups: dict[tuple[int, int, int], list[float]] = collections.defaultdict(list)
    for size, parts, threads, seconds in rows:
        groups[size, parts, threads].append(seconds)
    print("| trials in the pass | parts (0: unsplit) | threads | passes | mean seconds |")
    print("|---|---|---|---|---|")
    for (size, parts, threads), times in sorted(groups.items()):
        print(f"| {size} | {parts} | {threads} | {len(times)} | {sum(times) / len(times):.3f} |")
    print(f"search: {wall:.1f} s in this process; passes {sum(row[3] for row in rows):.1f} s "
          f"({spent['training']:.1f} s training, {spent['validating']:.1f} s validating), "
          f"{len(rows)} passes, {sum(row[0] for row in rows)} trial-epochs")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
