"""A training epoch on the CPU with the images and weights in PyTorch's default layout (NCHW) or channels_last.

For each case: one run of the baseline trial on `digits-lt` (a solo search's epoch) at one and at two torch
threads, and K runs split in two parts on two threads, each part fused at one torch thread (a `--fuse K`
search's pass). Each measurement is one epoch after one to warm up; the layouts alternate within a round and
the table gives each round's seconds, so every ratio is measured side by side.

    python benchmarks/memory_format.py [--rounds 3] [--fuse 8] [--out FILE.json]
    python benchmarks/memory_format.py --smoke     # tiny, for the test suite
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from lrtune.config import Config
from lrtune.training.fused import FusedModel, train_split
from lrtune.training.loop import AmpPolicy, train_together
from lrtune.training.run import Hyperparams, TrainingRun, load_training_data
from lrtune.tuner.space import baseline_params

CASES = [("test_resnet", 0), ("test_efficientnet", 64)]
LAYOUTS = ("nchw", "channels_last")


def epoch_seconds(cfg: Config, data, layout: str, *, k: int, threads: int, batches: int | None) -> float:
    """One epoch of ``k`` fresh runs: plain at ``threads`` torch threads when k is 1, else split in two parts."""
    amp = AmpPolicy(torch.device("cpu"), channels_last=layout == "channels_last")
    params = Hyperparams.from_dict(baseline_params(cfg))
    runs = [TrainingRun(cfg, params, data=data, amp=amp, seed=i) for i in range(k)]
    if amp.channels_last:
        for run in runs:
            run.model.to(memory_format=torch.channels_last)
    epoch = list(iter(runs[0].loader))[:batches]
    before = torch.get_num_threads()
    try:
        if k == 1:
            torch.set_num_threads(threads)
            learners = [runs[0].learner()]
            train_together(runs[0].net, epoch[:1], learners, amp=amp)
            started = time.perf_counter()
            train_together(runs[0].net, epoch, learners, amp=amp)
            return time.perf_counter() - started
        net = FusedModel([run.model for run in runs])
        train_split(runs, 2, batches=epoch[:1], net=net)
        started = time.perf_counter()
        train_split(runs, 2, batches=epoch, net=net)
        return time.perf_counter() - started
    finally:
        torch.set_num_threads(before)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fuse", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="memory-format-"))
    cases = CASES[:1] if args.smoke else CASES
    rounds, batches = (1, 2) if args.smoke else (args.rounds, None)
    arms = [(1, 1), (1, 2), (2 if args.smoke else args.fuse, 2)]  # (runs, threads)
    rows = []
    for model, size in cases:
        cfg = Config(model=model, image_size=size, studies_dir=str(work))
        data = load_training_data(cfg)
        for round_ in range(rounds):
            for k, threads in arms:
                row = {"case": f"{model}@{size or 'native'}", "round": round_ + 1, "runs": k, "threads": threads}
                for layout in LAYOUTS:
                    row[layout] = round(epoch_seconds(cfg, data, layout, k=k, threads=threads, batches=batches), 4)
                rows.append(row)
    record = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
              "rows": rows}
    print("| case | round | runs | threads | NCHW s | channels_last s | ratio |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['case']} | {row['round']} | {row['runs']} | {row['threads']} | {row['nchw']:.3f} | "
              f"{row['channels_last']:.3f} | {row['channels_last'] / row['nchw']:.2f} |")
    out = args.out or work / "memory_format.json"
    out.write_text(json.dumps(record, indent=1))
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
