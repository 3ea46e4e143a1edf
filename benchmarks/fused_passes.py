"""Every fused pass of a search, timed: how many trials it trained, in how many parts, at how many torch threads.

Runs `lrtune search ARGS` in this process with `training.fused.train_pass` timed,
then prints one row per (trials in the pass, parts, threads of the pass's thread):
the number of such passes and their mean seconds.

    python benchmarks/fused_passes.py --trials 30 --fuse 2 [--studies-dir DIR] [other search options]
"""

from __future__ import annotations

import collections
import sys
import tempfile
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
    args = list(argv)
    if "--studies-dir" not in args:
        args += ["--studies-dir", tempfile.mkdtemp(prefix="fused-passes-")]
    code = cli_main(["search", *args, "-q"])
    groups: dict[tuple[int, int, int], list[float]] = collections.defaultdict(list)
    for size, parts, threads, seconds in rows:
        groups[size, parts, threads].append(seconds)
    print("| trials in the pass | parts (0: unsplit) | threads | passes | mean seconds |")
    print("|---|---|---|---|---|")
    for (size, parts, threads), times in sorted(groups.items()):
        print(f"| {size} | {parts} | {threads} | {len(times)} | {sum(times) / len(times):.3f} |")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
