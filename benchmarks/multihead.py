"""The face competition's multi-head model against the plain 18-way head: test macro-F1 on held-out persons.

On the example's drawn stand-in (`examples/face_competition/make_fake_layout.py --persons P`), each seed S runs
two searches with the same trial budget, `lrtune search --seed S --test-fraction F --trials N`: the plain
18-way head of timm's `test_efficientnet` with the built-in losses, and the same backbone with three heads
(`multihead.py:build_test`) and its summed loss (`multihead.py:loss`). The seed draws the split by person (no
person on both sides), the sampler's seed and each trial's. The figure is the test macro-F1 of each search's
best trial, scored once at the end on the persons no trial saw.

    python benchmarks/multihead.py [--seeds 10] [--trials 12] [--epochs 5] [--persons 10] [--out FILE.json]
    python benchmarks/multihead.py --smoke
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

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "face_competition"
ARMS = {
    "plain": ["--model", "test_efficientnet"],
    "multihead": ["--model", f"{EXAMPLE / 'multihead.py'}:build_test", "--losses", f"{EXAMPLE / 'multihead.py'}:loss"],
}


def layout(work: Path, persons: int) -> Path:
    """The drawn stand-in and its manifest (person as the group)."""
    for script, args in (("make_fake_layout.py", [str(work), "--persons", str(persons)]),
                         ("make_manifest.py", [str(work / "train" / "images"), "--out", str(work / "train.csv")])):
        subprocess.run([sys.executable, str(EXAMPLE / script), *args], check=True, capture_output=True, text=True)
    return work / "train.csv"


def one(arm: str, seed: int, manifest: Path, work: Path, extra: list[str]) -> dict:
    folder = Path(tempfile.mkdtemp(dir=work))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lrtune", "search", "--data", str(manifest), "--seed", str(seed),
                           "--study", "faces", "--studies-dir", str(folder), "-q", *ARMS[arm], *extra],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        return {"arm": arm, "seed": seed, "exit": done.returncode, "error": done.stderr.strip()[-300:]}
    study = optuna.load_study(study_name="faces", storage=f"sqlite:///{folder / 'lrtune.db'}")
    test = study.user_attrs["test_split"]
    return {"arm": arm, "seed": seed, "exit": 0, "seconds": round(seconds, 1), "val": round(study.best_value, 4),
            "test": round(test["best"]["value"], 4), "n_test": test["n_test"],
            "epochs": sum(len(t.intermediate_values) for t in study.trials)}


def summary(rows: list[dict]) -> dict:
    pairs: dict[int, dict[str, dict]] = {}
    for row in rows:
        if row["exit"] == 0:
            pairs.setdefault(row["seed"], {})[row["arm"]] = row
    diffs = [p["multihead"]["test"] - p["plain"]["test"] for p in pairs.values() if len(p) == 2]
    if not diffs:
        return {"pairs": 0}
    mean = statistics.mean(diffs)
    half = (scipy.stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
            if len(diffs) > 1 else float("nan"))
    means = {arm: round(statistics.mean(p[arm]["test"] for p in pairs.values() if len(p) == 2), 4) for arm in ARMS}
    return {"pairs": len(diffs), "test_mean": means, "mean_difference": round(mean, 4),
            "ci95": [round(mean - half, 4), round(mean + half, 4)],
            "multihead_higher": sum(d > 0 for d in diffs), "multihead_lower": sum(d < 0 for d in diffs)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--persons", type=int, default=10, help="persons per gender and age band")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--test-fraction", type=float, default=0.3)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="1 seed of 2 trials of 1 epoch on 3 persons a band")
    args = parser.parse_args()
    if args.smoke:
        args.seeds, args.trials, args.epochs, args.persons = 1, 2, 1, 3
    work = Path(tempfile.mkdtemp(prefix="multihead-"))
    manifest = layout(work / "faces", args.persons)
    extra = ["--trials", str(args.trials), "--epochs", str(args.epochs), "--image-size", str(args.image_size),
             "--test-fraction", str(args.test_fraction)]
    rows = []
    for seed in range(args.seeds):
        for arm in ARMS:
            rows.append(one(arm, seed, manifest, work, extra))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    record = {"date": time.strftime("%Y-%m-%d"), "trials": args.trials, "epochs": args.epochs,
              "persons": args.persons, "image_size": args.image_size, "test_fraction": args.test_fraction,
              "rows": rows, "summary": summary(rows)}
    out = args.out or work / "multihead.json"
    out.write_text(json.dumps(record, indent=1))
    print(json.dumps(record["summary"]))
    return 1 if any(row["exit"] != 0 for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
