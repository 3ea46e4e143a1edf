"""Does ``--lr-range auto`` make a search find a good configuration sooner? Real searches, with and without it.

For each seed, two searches on the same data with the same budget: one with
``lr_range = "off"``, one with ``"auto"``. Per seed:

- the oracle: the best trial value of the two searches together;
- epochs to come within ``--tolerance`` of it: the epochs the search trained
  (every trial's, pruned ones too, in trial order) up to the end of the first
  finished trial that does; a search that never does is charged all its epochs
  and marked ``never``. The auto side is also charged its range test, as the
  micro-batches it trained divided by the micro-batches of an epoch;
- whether the range test's suggestion lies in the LR span of the top trials of
  both searches together (the top 10%, but at least ``--top-min`` trials).

    python benchmarks/lr_range.py --seeds 5 --trials 8 --epochs 3 [--batch-size 32] [--threads 1]

Prints one row per seed, the median ratio and the hit rate, and writes them as
JSON with ``--out``.

    python benchmarks/lr_range.py --combinations [--accum-values 1,4] [--losses ce,focal,label_smoothing,f1]

instead runs one range test per loss and accumulation (seed 0) and prints each
suggestion beside what linear and square-root scaling of the accumulation-1
suggestion with the effective batch would predict.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import tempfile
import time
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

import lrtune
from lrtune.storage import FINISHED


def search(seed: int, arm: str, args: argparse.Namespace, root: Path) -> optuna.Study:
    cfg = lrtune.Config(
        data=args.data,
        trials=args.trials,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=seed,
        lr_range=arm,
        keep="none",
        study=f"bench-{arm}-{seed}",
        studies_dir=str(root / f"{arm}-{seed}"),
    )
    return lrtune.search(config=cfg)


def epochs_of(trial: optuna.trial.FrozenTrial) -> int:
    return len(trial.intermediate_values)


def epochs_to_reach(study: optuna.Study, target: float) -> tuple[int, bool]:
    """Epochs trained up to the end of the first finished trial with a value of at least ``target``."""
    spent = 0
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        spent += epochs_of(t)
        if t.state in FINISHED and t.value is not None and t.value >= target:
            return spent, True
    return spent, False


def range_test_epochs(study: optuna.Study, batch_size: int) -> float:
    """The range test's micro-batches as a share of an epoch's (the training split over the batch)."""
    record = study.user_attrs.get("lr_range") or {}
    n_train = study.user_attrs["dataset"]["n_train"]
    per_epoch = max(1, n_train // batch_size)
    setup = record.get("setup", {})
    steps = len(record.get("lrs", [])) + int(record.get("skipped", 0))
    return steps * int(setup.get("accum", 1)) / per_epoch


def top_span(trials: list[optuna.trial.FrozenTrial], top_min: int) -> tuple[float, float]:
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE and t.value is not None),
                  key=lambda t: -t.value)
    top = done[: max(top_min, math.ceil(0.1 * len(done)))]
    lrs = [t.params["lr"] for t in top]
    return min(lrs), max(lrs)


def one_seed(seed: int, args: argparse.Namespace, root: Path) -> dict:
    started = time.perf_counter()
    off = search(seed, "off", args, root)
    auto = search(seed, "auto", args, root)
    both = off.get_trials(deepcopy=False) + auto.get_trials(deepcopy=False)
    oracle = max(t.value for t in both if t.state == TrialState.COMPLETE and t.value is not None)
    target = oracle - args.tolerance
    e_off, hit_off = epochs_to_reach(off, target)
    e_auto, hit_auto = epochs_to_reach(auto, target)
    cost = range_test_epochs(auto, args.batch_size)
    record = auto.user_attrs.get("lr_range", {})
    suggestion = record.get("suggestion")
    low, high = top_span(both, args.top_min)
    return {
        "seed": seed,
        "oracle": oracle,
        "epochs_off": e_off,
        "reached_off": hit_off,
        "epochs_auto": e_auto,
        "reached_auto": hit_auto,
        "range_test_epochs": round(cost, 2),
        "ratio": (e_auto + cost) / e_off,
        "ratio_without_test_cost": e_auto / e_off,
        "best_off": off.best_value,
        "best_auto": auto.best_value,
        "suggestion": suggestion,
        "rule": record.get("rule"),
        "bounds": record.get("bounds"),
        "top_span": [low, high],
        "in_top_span": suggestion is not None and low <= suggestion <= high,
        "seconds": round(time.perf_counter() - started, 1),
    }


def combinations(args: argparse.Namespace) -> dict:
    """One range test per (loss, accumulation): does the suggestion move with the effective batch?"""
    cfg = lrtune.Config(data=args.data, batch_size=args.batch_size, seed=0, studies_dir=tempfile.mkdtemp())
    rows = []
    for loss in args.losses.split(","):
        accums = [int(a) for a in args.accum_values.split(",")]
        base = None
        for accum in accums:
            result = lrtune.lr_find(config=cfg, loss=loss, accum=accum)
            if accum == accums[0]:
                base = result.suggestion
            row = {"loss": loss, "accum": accum, "suggestion": result.suggestion, "rule": result.rule,
                   "steepest": result.suggestions["steepest"], "linear": base * accum if base else None,
                   "sqrt": base * accum**0.5 if base else None}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return {"args": vars(args), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--data", default="digits-lt")
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--top-min", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps a shared machine usable)")
    parser.add_argument("--combinations", action="store_true", help="range tests per loss and accumulation")
    parser.add_argument("--losses", default="ce,focal,label_smoothing,f1")
    parser.add_argument("--accum-values", default="1,4")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if args.combinations:
        summary = combinations(args)
        if args.out:
            Path(args.out).write_text(json.dumps(summary, indent=1))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            row = one_seed(seed, args, Path(tmp))
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {
        "args": vars(args),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}",
        "median_ratio": statistics.median(r["ratio"] for r in rows),
        "median_ratio_without_test_cost": statistics.median(r["ratio_without_test_cost"] for r in rows),
        "in_top_span": sum(r["in_top_span"] for r in rows) / len(rows),
        "rows": rows,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
