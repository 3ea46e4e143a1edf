"""Trials side by side (`--fuse K`): training throughput at K = 1, 2, 4 and 8, which models fuse, and the
default search with each K.

1. Throughput: K fresh runs of the baseline trial on `digits-lt`, trained as one fused model on the same
   batches (K = 1 is a plain solo run), total training images/s over a few batches, for the default model at
   its 16 px and for `test_efficientnet` at 64 px.
2. Which models fuse: one fused step of two runs of each model (`training.fused.check_fusion`).
3. Searches: `lrtune search --trials N --fuse K` in a fresh studies folder for each K, one after another:
   wall time, peak RSS and peak PSS of the process tree (sampled every 0.1 s; PSS counts the pages a forked
   loader process shares with the search once), best value, and trials complete / pruned.

    python benchmarks/fuse_throughput.py [--searches] [--trials 50] [--probe-threads N] [--out FILE.json]
    python benchmarks/fuse_throughput.py --searches-only [--search-rounds R] [--counts 1,8]   # the searches alone
    python benchmarks/fuse_throughput.py --ceiling [--rounds R]   # what two cores can give the default model
    python benchmarks/fuse_throughput.py --smoke     # tiny, for the test suite
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import optuna
import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_memory import tree_pss, tree_rss  # noqa: E402

from lrtune.config import Config  # noqa: E402
from lrtune.training.fused import FusedModel, check_fusion, probe_fused  # noqa: E402
from lrtune.training.loop import AmpPolicy, train_together  # noqa: E402
from lrtune.training.run import Hyperparams, TrainingRun, load_training_data  # noqa: E402
from lrtune.tuner.space import baseline_params  # noqa: E402

CASES = [("test_resnet", 0), ("test_efficientnet", 64)]
FUSES = ["test_resnet", "test_efficientnet", "resnet18", "efficientnet_b0", "mobilenetv3_small_100",
         "convnext_atto", "densenet121", "test_vit"]


def throughput(model: str, image_size: int, counts: list[int], work: Path, rounds: int) -> dict[int, float]:
    cfg = Config(model=model, image_size=image_size, studies_dir=str(work))
    data = load_training_data(cfg)
    amp = AmpPolicy(torch.device("cpu"))
    params = Hyperparams.from_dict(baseline_params(cfg))

    def runs(k: int) -> list[TrainingRun]:
        return [TrainingRun(cfg, params, data=data, amp=amp, seed=i) for i in range(k)]

    best: dict[int, float] = {}
    for _ in range(rounds):  # interleaved rounds, the best of each count kept
        for k, (rate, _peak) in probe_fused(runs, counts).items():
            best[k] = max(best.get(k, 0.0), rate)
    return best


def ceiling(work: Path, rounds: int) -> list[dict]:
    """What two cores can give the default model: K runs as one group at 2 threads and at 1, against the same
    K runs split in two halves, each trained on its own Python thread at one torch thread (two plain runs when
    K = 2). Total training images/s over one pass of the digits set after one batch to warm up."""
    cfg = Config(studies_dir=str(work))
    data = load_training_data(cfg)
    amp = AmpPolicy(torch.device("cpu"))
    params = Hyperparams.from_dict(baseline_params(cfg))

    def group(k: int, seed: int) -> tuple:
        runs = [TrainingRun(cfg, params, data=data, amp=amp, seed=seed + i) for i in range(k)]
        net = FusedModel([run.model for run in runs]) if k > 1 else runs[0].net
        batches = list(iter(runs[0].loader))
        learners = [run.learner() for run in runs]
        train_together(net, batches[:1], learners, amp=amp)
        return net, batches[1:], learners

    def timed(*groups: tuple) -> float:
        def one(g: tuple) -> None:
            torch.set_num_threads(1)
            train_together(g[0], g[1], g[2], amp=amp)

        started = time.perf_counter()
        workers = [threading.Thread(target=one, args=(g,)) for g in groups]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return time.perf_counter() - started

    rows = []
    before = torch.get_num_threads()
    for round_ in range(rounds):
        for k in (1, 2, 4, 8):
            whole = group(k, 0)
            images = k * sum(len(y) for _, y in whole[1])
            torch.set_num_threads(2)
            started = time.perf_counter()
            train_together(whole[0], whole[1], whole[2], amp=amp)
            at_two = time.perf_counter() - started
            torch.set_num_threads(1)
            started = time.perf_counter()
            train_together(whole[0], whole[1], whole[2], amp=amp)
            at_one = time.perf_counter() - started
            half = max(1, k // 2)
            split = timed(group(half, 100), group(half, 200))
            rows.append({"round": round_, "k": k, "group_2_threads": images / at_two, "group_1_thread": images / at_one,
                         "halves_on_2_threads": images / k * 2 * half / split})
    torch.set_num_threads(before)
    return rows


def fuses(model: str, work: Path) -> str:
    cfg = Config(model=model, image_size=32, studies_dir=str(work))
    data = load_training_data(cfg)
    amp = AmpPolicy(torch.device("cpu"))
    params = Hyperparams.from_dict(baseline_params(cfg))
    runs = [TrainingRun(cfg, params, data=data, amp=amp, seed=i) for i in range(2)]
    return check_fusion(runs) or "fuses"


def search(k: int, trials: int, work: Path, extra: list[str]) -> dict:
    folder = Path(tempfile.mkdtemp(dir=work))
    cmd = [sys.executable, "-m", "lrtune", "search", "--trials", str(trials), "--fuse", str(k),
           "--studies-dir", str(folder), "-q", *extra]
    started = time.perf_counter()
    proc = psutil.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = [0, 0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss(proc))
            peak[1] = max(peak[1], tree_pss(proc))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    seconds = time.perf_counter() - started
    sampler.join()
    study = optuna.load_study(study_name="digits-lt-test_resnet", storage=f"sqlite:///{folder / 'lrtune.db'}")
    states = [t.state.name for t in study.trials]
    return {"fuse": k, "seconds": round(seconds, 1), "exit": proc.returncode, "peak_rss_gib": round(peak[0] / 2**30, 2),
            "peak_pss_gib": round(peak[1] / 2**30, 2),
            "best": study.best_value if any(s == "COMPLETE" for s in states) else None,
            "complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"),
            "epochs": sum(len(t.intermediate_values) for t in study.trials), "stderr": err[-500:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--searches", action="store_true", help="also time the default search at each K")
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--threads", default="auto", help="--threads of the searches")
    parser.add_argument("--probe-threads", type=int, default=0, help="threads of the throughput table (0: torch's)")
    parser.add_argument("--search-rounds", type=int, default=1, help="rounds of the searches, each K once a round")
    parser.add_argument("--searches-only", action="store_true", help="skip the throughput table and the models")
    parser.add_argument("--ceiling", action="store_true", help="only the two-core ceiling of the default model")
    parser.add_argument("--counts", default="1,2,4,8", help="the K values, comma-separated")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fuse-"))
    if args.smoke:
        torch.set_num_threads(1)  # a smoke run checks the script, not the speed: one thread never collapses
    elif args.probe_threads:
        torch.set_num_threads(args.probe_threads)
    counts = [1, 2] if args.smoke else [int(k) for k in args.counts.split(",")]
    record: dict = {"date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads(),
                    "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"}
    cases = CASES[:1] if args.smoke else CASES
    if args.ceiling:
        record["ceiling"] = ceiling(work, args.rounds)
        print("| round | K | one group, 2 threads | one group, 1 thread | two halves, own thread each |")
        print("|---|---|---|---|---|")
        for row in record["ceiling"]:
            print(f"| {row['round']} | {row['k']} | {row['group_2_threads']:,.0f} | {row['group_1_thread']:,.0f} | "
                  f"{row['halves_on_2_threads']:,.0f} |")
        (args.out or work / "fuse_ceiling.json").write_text(json.dumps(record, indent=1))
        return 0
    record["throughput"], record["fuses"] = {}, {}
    if not args.searches_only:
        record["throughput"] = {f"{m}@{s or 'native'}": throughput(m, s, counts, work, 1 if args.smoke else args.rounds)
                                for m, s in cases}
        record["fuses"] = {m: fuses(m, work) for m in (FUSES[:1] if args.smoke else FUSES)}
    if args.searches or args.searches_only or args.smoke:
        extra = ["--threads", args.threads] + (["--epochs", "1"] if args.smoke else [])
        record["searches"] = [search(k, 3 if args.smoke else args.trials, work, extra)
                              for _ in range(args.search_rounds) for k in counts]
    print("| model | " + " | ".join(f"K={k}" for k in counts) + " |")
    print("|---|" + "---|" * len(counts))
    for case, rates in record["throughput"].items():
        print(f"| {case} | " + " | ".join(f"{rates[k]:,.0f}" for k in counts) + " |")
    for model, verdict in record["fuses"].items():
        print(f"{model}: {verdict}")
    for row in record.get("searches", []):
        print(f"--fuse {row['fuse']}: {row['seconds']} s, peak RSS {row['peak_rss_gib']} GiB, PSS {row['peak_pss_gib']} GiB, best {row['best']}, "
              f"{row['complete']} complete / {row['pruned']} pruned, {row['epochs']} epochs")
    out = args.out or work / "fuse_throughput.json"
    out.write_text(json.dumps(record, indent=1))
    print(f"written to {out}", file=sys.stderr)
    return 1 if any(row["exit"] != 0 for row in record.get("searches", [])) else 0


if __name__ == "__main__":
    sys.exit(main())
