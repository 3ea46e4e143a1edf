"""Learning curves of real training runs over a grid of configurations, for replaying searches.

Each configuration is trained to the end with lrtune's own training code (the
``TrainingRun`` that trials use) and recorded per epoch: validation macro-F1
and loss, and the seconds the epoch took (training and validation). At the end
the best validation epoch's weights, the ones a search keeps, and the last
epoch's weights are scored on a test split that no search sees.

The grid: ``--lrs`` log-spaced LRs over the default range, crossed with every
scheduler, loss and accumulation value, the conditional parameters at their
defaults; then, with cross-entropy and no accumulation, a few more values of
the scheduler parameters, and with cosine and no accumulation, of the loss
parameters. Rows are appended to ``OUT.jsonl`` as they finish, so an
interrupted recording continues where it stopped; the order fills the
accumulation values one after another, so a partial table still holds whole
sub-grids. ``--pack`` writes the compact table ``OUT.json.gz``.

    python benchmarks/record_curves.py --jobs 2 --out benchmarks/tables/digits-lt
    python benchmarks/record_curves.py --out benchmarks/tables/digits-lt --pack
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import multiprocessing
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

SCHEDULER_EXTRAS = {"step": [{"step_size": 3, "step_gamma": 0.3}, {"step_size": 5, "step_gamma": 0.5}],
                    "plateau": [{"plateau_factor": 0.3, "plateau_patience": 1}, {"plateau_factor": 0.5, "plateau_patience": 0}]}
LOSS_EXTRAS = {"focal": [{"focal_gamma": 0.5}, {"focal_gamma": 1.0}],
               "label_smoothing": [{"smoothing": 0.05}, {"smoothing": 0.2}]}
TEST_SEED_OFFSET = 7919  # the test split is drawn with its own seed, apart from validation's


def grid(n_lrs: int, lr_min: float, lr_max: float, schedulers: list[str], losses: list[str],
         accums: list[int]) -> list[dict[str, Any]]:
    """Every configuration to record, in recording order."""
    lrs = [float(x) for x in np.geomspace(lr_min, lr_max, n_lrs)]
    points = []
    for accum in accums:
        for scheduler in schedulers:
            for loss in losses:
                points += [{"lr": lr, "scheduler": scheduler, "loss": loss, "accum": accum} for lr in lrs]
    for scheduler, extras in SCHEDULER_EXTRAS.items():
        for extra in extras:
            points += [{"lr": lr, "scheduler": scheduler, "loss": "ce", "accum": 1, **extra} for lr in lrs]
    for loss, extras in LOSS_EXTRAS.items():
        for extra in extras:
            points += [{"lr": lr, "scheduler": "cosine", "loss": loss, "accum": 1, **extra} for lr in lrs]
    return points


def key(point: dict[str, Any]) -> str:
    return json.dumps(point, sort_keys=True)


def split(cfg, test_fraction: float) -> tuple[Any, Any, np.ndarray]:
    """(training data without the test images, the whole image set, test indices into it)."""
    from lrtune.training.datasets import load_imageset, split_indices
    from lrtune.config import effective_image_size
    from lrtune.training.run import TrainingData

    imageset = load_imageset(cfg.data, image_size=effective_image_size(cfg), data_root=cfg.data_root,
                             cache="memory", cache_dir=f"{cfg.studies_dir}/cache")
    rest, test = split_indices(imageset, val_fraction=test_fraction, seed=cfg.seed + TEST_SEED_OFFSET)
    kept = dataclasses.replace(
        imageset, images=imageset.images[rest], labels=imageset.labels[rest],
        groups=None if imageset.groups is None else imageset.groups[rest],
        paths=None if imageset.paths is None else [imageset.paths[i] for i in rest])
    # Validation is the same share of all images as in a search without a test split.
    val_share = cfg.val_fraction / (1 - test_fraction)
    train_idx, val_idx = split_indices(kept, val_fraction=val_share, seed=cfg.seed)
    return TrainingData(kept, train_idx, val_idx), imageset, test


def record_one(cfg, data, imageset, test_idx: np.ndarray, point: dict[str, Any]) -> dict[str, Any]:
    """Train ``point`` to the end; its curves, epoch times and test macro-F1 (best and last epoch)."""
    from lrtune.training.loaders import iter_eval_batches
    from lrtune.training.loop import AmpPolicy, Diverged, evaluate
    from lrtune.training.run import EVAL_BATCH, Hyperparams, TrainingRun

    import torch

    amp = AmpPolicy(torch.device("cpu"))
    run = TrainingRun(cfg, Hyperparams.from_dict(point), data=data, amp=amp, seed=cfg.seed)
    seconds, best_weights, diverged_at = [], None, None

    def test_f1() -> float:
        batches = iter_eval_batches(imageset, test_idx, EVAL_BATCH)
        return round(float(evaluate(run.model, batches, n_classes=data.n_classes, amp=amp).macro_f1), 5)

    for epoch in range(1, cfg.epochs + 1):
        started = time.perf_counter()
        try:
            outcome = run.train_epoch(epoch)
        except Diverged:
            diverged_at = epoch
            break
        seconds.append(round(time.perf_counter() - started, 4))
        if outcome.improved:
            best_weights = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
    last = test_f1() if diverged_at is None else None
    best = None
    if best_weights is not None:
        run.model.load_state_dict(best_weights)
        best = test_f1()
    curves = run.state.curves
    return {"point": point, "val_f1": [round(v, 5) for v in curves["val_f1"]],
            "val_loss": [round(v, 5) for v in curves["val_loss"]], "epoch_s": seconds,
            "diverged_at": diverged_at, "best_epoch": run.state.best.get("epoch"),
            "test_f1_best": best, "test_f1_last": last}


def worker(args: argparse.Namespace, points: list[dict[str, Any]], out: Path, lock) -> None:
    import torch

    from lrtune.config import Config

    torch.set_num_threads(1)
    cfg = Config(data=args.data, epochs=args.epochs, seed=args.seed, studies_dir=args.studies_dir,
                 val_fraction=args.val_fraction)
    data, imageset, test_idx = split(cfg, args.test_fraction)
    for point in points:
        row = record_one(cfg, data, imageset, test_idx, point)
        with lock, out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(f"{point} test {row['test_f1_best']} {sum(row['epoch_s']):.1f} s", flush=True)


def record_range_tests(args: argparse.Namespace, stem: Path) -> Path:
    """``--range-tests N``: lrtune's LR range test (as ``--lr-range auto`` runs it) with seeds 0..N-1, on the same split."""
    import torch

    from lrtune.config import Config
    from lrtune.training.loop import AmpPolicy
    from lrtune.tuner.lr_range import run_range_test

    torch.set_num_threads(1)
    records = []
    table_cfg = Config(data=args.data, epochs=args.epochs, seed=args.seed, studies_dir=args.studies_dir,
                       val_fraction=args.val_fraction)
    data, _, _ = split(table_cfg, args.test_fraction)
    for seed in range(args.range_tests):
        cfg = dataclasses.replace(table_cfg, seed=seed)  # the split stays the table's; the model and batches follow the seed
        started = time.perf_counter()
        result = run_range_test(cfg, data=data, amp=AmpPolicy(torch.device("cpu")))
        seconds = time.perf_counter() - started
        # The baseline's accumulation is 1: each step taken is one micro-batch.
        records.append({"seed": seed, "suggestion": result.suggestion, "rule": result.rule,
                        "suggestions": result.suggestions, "steps": len(result.lrs),
                        "epochs": round(len(result.lrs) * cfg.batch_size / len(data.train_idx), 3),
                        "seconds": round(seconds, 3)})
        print(records[-1], flush=True)
    target = stem.with_suffix(".range.json")
    target.write_text(json.dumps(records, indent=1) + "\n")
    return target


def done_keys(out: Path) -> set[str]:
    if not out.exists():
        return set()
    rows = []
    for line in out.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by an interrupted write
            continue
    return {key(r["point"]) for r in rows}


def pack(stem: Path, meta: dict[str, Any]) -> Path:
    """``stem.jsonl`` as one gzipped JSON table (rows sorted by configuration), with what it was recorded on."""
    rows = {key(r["point"]): r for r in map(json.loads, filter(None, stem.with_suffix(".jsonl").read_text().splitlines()))}
    table = {"meta": meta, "rows": [rows[k] for k in sorted(rows)]}
    target = stem.with_suffix(".json.gz")
    with gzip.open(target, "wt") as fh:
        json.dump(table, fh, separators=(",", ":"))
    return target


def main() -> None:
    from lrtune.config import Config

    defaults = Config()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits-lt")
    parser.add_argument("--out", required=True, help="path stem: OUT.jsonl while recording, OUT.json.gz packed")
    parser.add_argument("--lrs", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--val-fraction", type=float, default=defaults.val_fraction)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--accum", default=",".join(map(str, defaults.accum)))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes, one torch thread each")
    parser.add_argument("--limit", type=int, default=0, help="record at most this many new configurations")
    parser.add_argument("--studies-dir", default="studies")
    parser.add_argument("--pack", action="store_true", help="write OUT.json.gz from what is recorded, and stop")
    parser.add_argument("--range-tests", type=int, default=0,
                        help="run the LR range test with this many seeds into OUT.range.json, and stop")
    args = parser.parse_args()
    stem = Path(args.out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = stem.with_suffix(".jsonl")
    points = grid(args.lrs, defaults.lr_min, defaults.lr_max, defaults.schedulers, defaults.losses,
                  [int(a) for a in args.accum.split(",")])
    meta = {"data": args.data, "model": defaults.model, "epochs": args.epochs, "batch_size": defaults.batch_size,
            "val_fraction": args.val_fraction, "test_fraction": args.test_fraction, "seed": args.seed,
            "lr_min": defaults.lr_min, "lr_max": defaults.lr_max, "lrs": args.lrs, "grid_size": len(points),
            "machine": f"{platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}",
            "packed": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if args.pack:
        print(pack(stem, meta))
        return
    if args.range_tests:
        print(record_range_tests(args, stem))
        return
    done = done_keys(out)
    todo = [p for p in points if key(p) not in done]
    if args.limit:
        todo = todo[: args.limit]
    print(f"{len(points)} configurations, {len(done)} recorded, {len(todo)} to record with {args.jobs} processes")
    ctx = multiprocessing.get_context("spawn")
    lock = ctx.Lock()
    shares = [todo[i:: args.jobs] for i in range(args.jobs)]
    procs = [ctx.Process(target=worker, args=(args, share, out, lock)) for share in shares if share]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    print(f"recorded {len(done_keys(out))} of {len(points)}; pack with --pack")


if __name__ == "__main__":
    main()
