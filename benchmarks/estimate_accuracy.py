"""How close the estimate a search prints comes to the time it then takes, on jobs of different size.

For each job: `lrtune search --dry-run` (the estimate, as a search prints it before its first trial), then the
same search with `--pruner none` (what the estimate counts: every trial runs every epoch) and with the default
pruner, each in a fresh studies folder, timed from the line where the search prints its estimate (after the
start-up, the data, the thread probe and the range test) to its end, and from its start.

    python benchmarks/estimate_accuracy.py [--out FILE.json]
    python benchmarks/estimate_accuracy.py --smoke
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

JOBS = {
    "small: digits-lt, test_resnet at 16 px, 10 trials x 5 epochs": ["--trials", "10", "--epochs", "5"],
    "medium: digits-writers (2,080 training images), 24 px, 10 trials x 5 epochs":
        ["--data", "digits-writers", "--trials", "10", "--epochs", "5"],
    "larger images: digits-lt, test_efficientnet at 64 px, 6 trials x 4 epochs":
        ["--model", "test_efficientnet", "--image-size", "64", "--trials", "6", "--epochs", "4"],
}
SMOKE = {"smoke": ["--trials", "2", "--epochs", "1"]}


def seconds_of(line: str) -> float:
    """The seconds in an estimate line's ``about 2h 07m`` / ``3m 05s`` / ``42s``."""
    text = re.search(r"about ((?:\d+h )?(?:\d+m )?(?:\d+s)?)", line).group(1)
    parts = dict((unit, int(n)) for n, unit in re.findall(r"(\d+)([hms])", text))
    return parts.get("h", 0) * 3600 + parts.get("m", 0) * 60 + parts.get("s", 0)


def run(args: list[str], work: Path) -> tuple[float, float, str]:
    """(seconds from the start, seconds from the estimate line, what it printed) of one search."""
    folder = tempfile.mkdtemp(dir=work)
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "lrtune", "search", "--studies-dir", folder, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, said = [], None
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("estimate: ") and said is None:
            said = time.perf_counter()
    if proc.wait() != 0:
        raise SystemExit(f"lrtune search {' '.join(args)} failed: {''.join(lines)[-2000:]}")
    end = time.perf_counter()
    return end - started, end - (said or started), "".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lrtune-estimate-"))
    rows = []
    for name, job in (SMOKE if args.smoke else JOBS).items():
        _, _, shown = run([*job, "--dry-run"], work)
        line = next(line for line in shown.splitlines() if line.startswith("estimate: "))
        total, after, _ = run([*job, "--pruner", "none"], work)
        pruned_total, pruned_after, _ = run([*job], work) if not args.smoke else (total, after, "")
        rows.append({"job": name, "estimate_line": line, "estimate_s": seconds_of(line), "unpruned_s": round(after, 1),
                     "unpruned_total_s": round(total, 1), "pruned_s": round(pruned_after, 1),
                     "pruned_total_s": round(pruned_total, 1)})
        print(json.dumps(rows[-1]), flush=True)
    print("| job | estimate | no pruning: after the estimate (whole run) | measured / estimate | default pruner: after the estimate |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['job']} | {r['estimate_s']:.0f} s | {r['unpruned_s']:.1f} s ({r['unpruned_total_s']:.1f} s) | "
              f"{r['unpruned_s'] / max(r['estimate_s'], 1):.2f} | {r['pruned_s']:.1f} s |")
    if args.out:
        args.out.write_text(json.dumps({"machine": platform.node(), "date": time.strftime("%Y-%m-%d"), "rows": rows},
                                       indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
