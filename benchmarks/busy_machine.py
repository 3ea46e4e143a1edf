"""The default search alone and beside busy processes, side by side in one run.

Each row is one `lrtune search --trials N` in a fresh studies folder, timed
from start to exit, with 0, 1 or 2 processes spinning a core each
(`python -c "while 1: pass"`, started before the search and killed after it).
Variants:

- `one thread per core`: `--threads <cores>`, torch's own default, no guard: how lrtune ran before `--threads auto`;
- `auto`: the default, `--threads auto`;
- `--workers 2`: two local worker processes, threads auto;
- `--workers 2, one thread each`: `--workers 2 --threads 1`, how local workers ran before `--threads auto`
  (a core's share each);
- `--fuse 4`: four trials side by side in one fused step, threads auto.

Alone rows run `--runs` times, interleaved, and the table gives their median;
each variant's busy rows are divided by its own alone median. A row that runs
past `--limit-s` is stopped and shown as more than that.

    python benchmarks/busy_machine.py [--trials 10] [--runs 3] [--limit-s 600] [--out FILE.json]
    python benchmarks/busy_machine.py --smoke     # a few seconds of each row, for the test suite
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
VARIANTS = {
    "one thread per core": ["--threads", str(CORES)],
    "auto": [],
    "--workers 2": ["--workers", "2"],
    "--workers 2, one thread each": ["--workers", "2", "--threads", "1"],
    "--fuse 4": ["--fuse", "4"],
}


def run_search(args: list[str], *, busy: int, limit_s: float, work: Path) -> dict:
    """One search beside ``busy`` spinning processes: its wall time, exit code and the thread lines it printed."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(busy)]
    folder = Path(tempfile.mkdtemp(dir=work))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LRTUNE_")}
    try:
        time.sleep(0.5 if busy else 0)  # the spinners are running before the search starts
        start = time.perf_counter()
        try:
            done = subprocess.run([sys.executable, "-m", "lrtune", "search", *args, "--studies-dir", str(folder)],
                                  capture_output=True, text=True, timeout=limit_s, env=env)
            seconds, code, err = time.perf_counter() - start, done.returncode, done.stderr
        except subprocess.TimeoutExpired as exc:
            seconds, code = limit_s, None
            err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
    finally:
        for proc in spinners:
            proc.kill()
            proc.wait()
    said = [line for line in err.splitlines() if "threads: " in line or "training fell" in line]
    return {"seconds": round(seconds, 2), "exit": code, "stopped": code is None, "threads": said}


def measure(*, trials: int, runs: int, limit_s: float, epochs: int | None, work: Path,
            busy_levels: tuple[int, ...] = (0, 1, 2), variants: list[str] | None = None) -> list[dict]:
    rows = []
    extra = ["--trials", str(trials)] + (["--epochs", str(epochs)] if epochs else [])
    for busy in busy_levels:
        for _ in range(runs if busy == 0 else 1):
            for name in variants or VARIANTS:  # interleaved: a drifting machine biases no variant
                flags = VARIANTS[name]
                result = run_search([*extra, *flags], busy=busy, limit_s=limit_s, work=work)
                rows.append({"variant": name, "busy": busy, **result})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Per variant and busy level: the median seconds, and the ratio to the variant's own alone median."""
    out = []
    for name in dict.fromkeys(r["variant"] for r in rows):
        alone = [r["seconds"] for r in rows if r["variant"] == name and r["busy"] == 0]
        base = statistics.median(alone) if alone else None
        for busy in sorted({r["busy"] for r in rows}):
            mine = [r for r in rows if r["variant"] == name and r["busy"] == busy]
            if not mine:
                continue
            seconds = statistics.median(r["seconds"] for r in mine)
            out.append({"variant": name, "busy": busy, "runs": len(mine), "seconds": seconds,
                         "stopped": any(r["stopped"] for r in mine),
                         "ratio": round(seconds / base, 2) if base else None,
                         "all_seconds": [r["seconds"] for r in mine]})
    return out


def table(summary: list[dict]) -> str:
    lines = ["| variant | busy processes | wall time | × its alone time | runs |", "|---|---|---|---|---|"]
    for row in summary:
        shown = f"> {row['seconds']:.0f} s (stopped)" if row["stopped"] else f"{row['seconds']:.1f} s"
        ratio = "" if row["busy"] == 0 or row["ratio"] is None else (
            f"> {row['ratio']:.1f}" if row["stopped"] else f"{row['ratio']:.2f}")
        lines.append(f"| {row['variant']} | {row['busy']} | {shown} | {ratio} | {row['runs']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3, help="alone runs per variant")
    parser.add_argument("--limit-s", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=None, help="where the studies go [default: a temporary folder]")
    parser.add_argument("--busy", default="0,1,2", help="busy processes beside each row, comma-separated")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="which variants, comma-separated")
    parser.add_argument("--smoke", action="store_true", help="auto only, 2 trials of 1 epoch, alone and beside one")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="busy-machine-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.smoke:  # auto alone and beside one: a few seconds each (the other variants would collapse beside it)
        rows = measure(trials=2, runs=1, limit_s=300, epochs=1, work=work, busy_levels=(0, 1), variants=["auto"])
    else:
        rows = measure(trials=args.trials, runs=args.runs, limit_s=args.limit_s, epochs=None, work=work,
                       busy_levels=tuple(int(b) for b in args.busy.split(",")), variants=args.variants.split(","))
    summary = summarize(rows)
    record = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {CORES} cores, {platform.python_version()}",
        "trials": 2 if args.smoke else args.trials,
        "rows": rows,
        "summary": summary,
    }
    out = args.out or work / "busy_machine.json"
    out.write_text(json.dumps(record, indent=1))
    print(table(summary))
    print(f"written to {out}", file=sys.stderr)
    failed = [r for r in rows if r["exit"] not in (0, None)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
