"""Does fusing change what a search finds? Paired searches with and without `--fuse K`, one seed each.

For each seed, `lrtune search --trials N --seed S` on the default data, once alone and once with `--fuse K`,
one after the other in fresh studies folders: the best validation macro-F1, the epochs trained and the wall
time. The pairs share the seed (the split, the sampler's seed, each trial's seed), so their difference is
the fusion's: concurrent trials seen by the sampler and the pruner, and the group's batch order.

    python benchmarks/fuse_quality.py [--seeds 10] [--trials 30] [--fuse 4] [--out FILE.json]
    python benchmarks/fuse_quality.py --smoke
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import scipy.stats


def one(seed: int, fuse: int, trials: int, work: Path, extra: list[str]) -> dict:
    folder = Path(tempfile.mkdtemp(dir=work))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lrtune", "search", "--trials", str(trials), "--seed", str(seed),
                           "--fuse", str(fuse), "--studies-dir", str(folder), "-q", *extra],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    study = optuna.load_study(study_name="digits-lt-test_resnet", storage=f"sqlite:///{folder / 'lrtune.db'}")
    return {"seed": seed, "fuse": fuse, "exit": done.returncode, "seconds": round(seconds, 1),
            "best": study.best_value, "epochs": sum(len(t.intermediate_values) for t in study.trials)}


def summary(rows: list[dict], fuse: int) -> dict:
    pairs = {}
    for row in rows:
        pairs.setdefault(row["seed"], {})[row["fuse"]] = row
    diffs = [p[fuse]["best"] - p[1]["best"] for p in pairs.values() if 1 in p and fuse in p]
    mean = statistics.mean(diffs)
    t = scipy.stats.t.ppf(0.975, len(diffs) - 1) if len(diffs) > 1 else float("nan")
    half = t * statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
    return {"pairs": len(diffs), "mean_difference": round(mean, 4), "ci95": [round(mean - half, 4), round(mean + half, 4)],
            "fused_higher": sum(d > 0 for d in diffs), "fused_lower": sum(d < 0 for d in diffs),
            "epochs": {k: sum(r["epochs"] for r in rows if r["fuse"] == k) for k in (1, fuse)},
            "seconds": {k: round(sum(r["seconds"] for r in rows if r["fuse"] == k), 1) for k in (1, fuse)}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--fuse", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="1 seed of 3 trials of 1 epoch")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fuse-quality-"))
    seeds, trials = (1, 3) if args.smoke else (args.seeds, args.trials)
    extra = ["--epochs", "1", "--threads", "1"] if args.smoke else []
    rows = []
    for seed in range(seeds):
        for fuse in (1, args.fuse):
            rows.append(one(seed, fuse, trials, work, extra))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    record = {"date": time.strftime("%Y-%m-%d"), "trials": trials, "fuse": args.fuse, "rows": rows,
              "summary": summary(rows, args.fuse)}
    out = args.out or work / "fuse_quality.json"
    out.write_text(json.dumps(record, indent=1))
    print(json.dumps(record["summary"]))
    return 1 if any(row["exit"] != 0 for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
