"""Does confirming the winner pay, and was tuning the LR worth it against LR-free optimizers?

For each seed: a search of ``--trials`` trials on ``digits-writers`` with a
test split (``--test-fraction 0.2``) and the LR-free baselines Prodigy and
Schedule-Free, then ``lrtune confirm`` (top 3 configurations and the
baselines, 3 fresh seeds each). Each configuration's test macro-F1 is the
mean over the confirmation seeds of its runs' best-epoch weights on the test
split, so the single-run winner and the confirmed winner are compared on the
same footing.

    python benchmarks/confirm_quality.py --studies 10 --out confirm_quality.json
    python benchmarks/confirm_quality.py --smoke        # one tiny study: checks the script runs

Studies can run in several processes (``--first-seed``, ``--rows`` to append
each study's row to a file) and be summarized together (``--summarize``).

Prints, and writes as JSON: how often the confirmed winner differs from the
single-run winner; where they differ, the mean test difference (confirmed
minus single-run) with a 95% t-interval; the tuned winner against Prodigy and
Schedule-Free on the test split; and the epochs confirming cost against the
search's.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch

import lrtune
from lrtune.tuner.confirm import interval


def study_figures(seed: int, *, work: Path, trials: int, epochs: int, image_size: int, seeds: int = 3) -> dict:
    cfg = lrtune.Config(data="digits-writers", trials=trials, epochs=epochs, seed=seed, test_fraction=0.2,
                        baselines=["prodigy", "schedulefree"], study=f"confirm-{seed}", studies_dir=str(work),
                        image_size=image_size)
    start = time.perf_counter()
    study = lrtune.search(config=cfg)
    search_s = time.perf_counter() - start
    search_epochs = sum(len(t.intermediate_values) for t in study.trials)
    start = time.perf_counter()
    record = lrtune.confirm(study=study, top=3, seeds=seeds, studies_dir=str(work))
    confirm_s = time.perf_counter() - start
    configs = {c["trial"]: c for c in record["configs"]}
    tuned = next(c for c in record["configs"] if c["role"] in ("tuned", "baseline"))
    by_role = {c["role"]: c for c in record["configs"]}
    return {
        "seed": seed,
        "single_run_winner": record["single_run_winner"],
        "confirmed_winner": record["winner"],
        "single_test": configs[record["single_run_winner"]]["test_mean"],
        "confirmed_test": configs[record["winner"]]["test_mean"],
        "tuned_winner": tuned["trial"],
        "tuned_test": tuned["test_mean"],
        "prodigy_test": by_role["prodigy"]["test_mean"],
        "schedulefree_test": by_role["schedulefree"]["test_mean"],
        "search_epochs": search_epochs,
        "confirm_epochs": sum(len(c["runs"]) for c in record["configs"]) * epochs,
        "search_s": round(search_s, 1),
        "confirm_s": round(confirm_s, 1),
    }


def mean_interval(values: list[float]) -> dict:
    return {"n": len(values), "mean": statistics.fmean(values) if values else math.nan,
            "ci95": interval(values) if len(values) > 1 else None}


def wins(differences: list[float]) -> dict:
    """How many of the paired differences are above, below and at zero."""
    return {"higher": sum(d > 0 for d in differences), "lower": sum(d < 0 for d in differences),
            "equal": sum(d == 0 for d in differences)}


def paired(differences: list[float]) -> dict:
    return {**mean_interval(differences), **wins(differences)}


def summarize(rows: list[dict]) -> dict:
    differ = [r for r in rows if r["confirmed_winner"] != r["single_run_winner"]]
    best_free = [max(r["prodigy_test"], r["schedulefree_test"]) for r in rows]
    search_epochs = sum(r["search_epochs"] for r in rows)
    return {
        "studies": len(rows),
        "winner_differs": len(differ),
        "confirmed_minus_single_where_they_differ": paired([r["confirmed_test"] - r["single_test"] for r in differ]),
        "confirmed_minus_single_over_all": paired([r["confirmed_test"] - r["single_test"] for r in rows]),
        "tuned_minus_prodigy": paired([r["tuned_test"] - r["prodigy_test"] for r in rows]),
        "tuned_minus_schedulefree": paired([r["tuned_test"] - r["schedulefree_test"] for r in rows]),
        "tuned_minus_best_lr_free": paired([r["tuned_test"] - b for r, b in zip(rows, best_free)]),
        "search_epochs_per_study": search_epochs / len(rows) if rows else math.nan,
        "confirm_epochs_per_study": sum(r["confirm_epochs"] for r in rows) / len(rows) if rows else math.nan,
        "confirm_epochs_per_search_epoch": sum(r["confirm_epochs"] for r in rows) / search_epochs if rows else math.nan,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=10)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--work", default="/tmp/lrtune-confirm-quality")
    parser.add_argument("--out", default="")
    parser.add_argument("--smoke", action="store_true", help="one study of 4 trials, 2 epochs, 8 px, 2 seeds")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--rows", default="", help="append each study's row to this JSON-lines file")
    parser.add_argument("--summarize", default="", help="only summarize the rows of this JSON-lines file")
    args = parser.parse_args()
    trials, epochs, studies, size, seeds = (4, 2, 1, 8, 2) if args.smoke else (args.trials, args.epochs, args.studies, 0, 3)
    rows = []
    if args.summarize:
        rows = [json.loads(line) for line in Path(args.summarize).read_text().splitlines() if line.strip()]
    for seed in [] if args.summarize else range(args.first_seed, args.first_seed + studies):
        rows.append(study_figures(seed, work=Path(args.work), trials=trials, epochs=epochs, image_size=size,
                                  seeds=seeds))
        print(json.dumps(rows[-1]), flush=True)
        if args.rows:
            with open(args.rows, "a") as f:
                f.write(json.dumps(rows[-1]) + "\n")
    summary = summarize(rows)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": torch.get_num_threads(),
               "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(summary, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"machine": machine, "trials": trials, "epochs": epochs,
                                              "rows": rows, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
