"""What the garbage collector costs a command's start: importing what a search imports (torch, timm,
albumentations, scikit-learn's metrics, Optuna) in a fresh interpreter at Python's collector thresholds and at
the command line's (``lrtune.cli.main.GC_THRESHOLDS``), alternated round by round, then `lrtune search --dry-run`
with each. And a command's end: the seconds from a short search's return to its process's end, with
Python's own exit (the heap torn down) and with ``lrtune.cli.main.run``'s.

    python benchmarks/startup.py [--rounds 5] [--out FILE.json]
    python benchmarks/startup.py --smoke --out FILE.json   # one round, for the test suite
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lrtune.cli.main import GC_THRESHOLDS

IMPORTS = "import torch, timm, albumentations, sklearn.metrics, optuna"
DEFAULT = gc.get_threshold()  # Python's own, before anything set them


def timed(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - started


def dry_run(thresholds: tuple[int, ...], work: Path) -> float:
    """Seconds of `lrtune search --dry-run` (imports, the data, the thread probe, the estimate) at ``thresholds``."""
    code = ("import importlib, sys; m = importlib.import_module('lrtune.cli.main'); m.GC_THRESHOLDS = %r; "
            "sys.exit(m.main(['search', '--dry-run', '-q', '--studies-dir', %r]))" % (tuple(thresholds), str(work)))
    return timed(code)


def search_end(exit_call: str, work: Path) -> float:
    """Seconds from a short search's return to its process's end, leaving by ``exit_call``."""
    code = ("import importlib, sys, tempfile, time; m = importlib.import_module('lrtune.cli.main'); search = m.main; "
            "m.main = lambda argv=None: (search(['search', '--trials', '2', '--epochs', '2', '-q', '--studies-dir', "
            "tempfile.mkdtemp(dir=%r)]), print(time.time(), file=sys.stderr))[0]; %s" % (str(work), exit_call))
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return time.time() - float(done.stderr.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--smoke", action="store_true", help="one round")
    args = parser.parse_args(argv)
    rounds = 1 if args.smoke else args.rounds
    seconds: dict[str, list[float]] = {"imports_default": [], "imports_cli": [], "dry_run_default": [],
                                       "dry_run_cli": [], "end_python_exit": [], "end_run": []}
    with tempfile.TemporaryDirectory() as work:
        for i in range(rounds):  # each round in both orders in turn: neither always runs on a warmer cache
            order = [("default", DEFAULT), ("cli", GC_THRESHOLDS)]
            for name, thresholds in order if i % 2 == 0 else order[::-1]:
                seconds[f"imports_{name}"].append(timed(f"import gc; gc.set_threshold(*{tuple(thresholds)!r}); {IMPORTS}"))
                seconds[f"dry_run_{name}"].append(dry_run(thresholds, Path(work)))
            ends = [("python_exit", "sys.exit(m.main())"), ("run", "m.run()")]
            for name, call in ends if i % 2 == 0 else ends[::-1]:
                seconds[f"end_{name}"].append(search_end(call, Path(work)))
    medians = {key: statistics.median(values) for key, values in seconds.items()}
    record = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {platform.processor() or ''}".strip(", "),
              "python": platform.python_version(), "default_thresholds": list(DEFAULT),
              "cli_thresholds": list(GC_THRESHOLDS), "rounds": rounds, "seconds": seconds, "medians": medians}
    for key, value in medians.items():
        print(f"{key}: {value:.2f} s (median of {rounds})")
    print(f"imports at the command line's thresholds: {medians['imports_cli'] / medians['imports_default']:.2f}x "
          f"the time at Python's")
    if args.out:
        args.out.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
