"""Trials side by side on one GPU: ``--fuse K`` against ``--workers N``.

EfficientNet-B0 at 224 px, batch 64, bf16 (AMP), on a long-tailed 18-class JPEG folder cached in memory.
For each count 1, 2, 4 and 8: one ``lrtune search`` of that many trials with ``--fuse K`` (one process), and
one with ``--workers N`` (one trial per process), pruning off; each row is the search's total training images/s
over the span of its trials. Then ``--fuse auto``'s probe (``training.fused.probe_fused``) gives each count's
training images/s alone and its peak allocated memory per slot. Its sizes (3,000 images, 2 epochs a trial)
aim at a run under 8 minutes on one GPU; it has not been timed on one yet.

    python benchmarks/gpu_fuse.py [--out DIR]
    python benchmarks/gpu_fuse.py --smoke      # tiny sizes on the CPU: checks that the script runs
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_throughput import Sizes, describe, jpeg_folder, search_images_per_s  # noqa: E402

from lrtune.config import Config  # noqa: E402
from lrtune.training.fused import probe_fused  # noqa: E402
from lrtune.training.loop import amp_policy  # noqa: E402
from lrtune.training.run import Hyperparams, TrainingRun, load_training_data  # noqa: E402

PARAMS = {"lr": 1e-3, "scheduler": "cosine", "loss": "ce", "accum": 1}
FULL = replace(Sizes(), images=3_000, jpeg_shape=(256, 256), table_epochs=2)
SMOKE = replace(Sizes(), device="cpu", model="test_efficientnet", image_size=32, batch=16, images=180,
                jpeg_shape=(48, 64), table_epochs=1)


def search_args(sizes: Sizes, folder: Path, count: int, how: str) -> list[str]:
    return ["--data", str(folder), "--model", sizes.model, "--image-size", str(sizes.image_size),
            "--batch-size", str(sizes.batch), "--device", sizes.device, "--trials", str(count),
            "--epochs", str(sizes.table_epochs), "--cache", "memory", "--threads", "auto",
            *(["--fuse", str(count), "--workers", "1"] if how == "fuse" else ["--fuse", "1", "--workers", str(count)])]


def probe(sizes: Sizes, folder: Path, work: Path, counts: list[int]) -> dict[int, tuple[float, int]]:
    """Each count's fused training images/s alone, and its peak allocated device memory (bytes, all slots)."""
    cfg = Config(data=str(folder), model=sizes.model, image_size=sizes.image_size, batch_size=sizes.batch,
                 device=sizes.device, cache="memory", studies_dir=str(work / "probe"))
    data = load_training_data(cfg)
    amp = amp_policy(torch.device(sizes.device), cfg.amp)
    params = Hyperparams.from_dict(PARAMS)
    return probe_fused(lambda k: [TrainingRun(cfg, params, data=data, amp=amp, seed=i) for i in range(k)], counts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks that the script runs")
    parser.add_argument("--out", default="", help="also write the results as JSON into this folder")
    parser.add_argument("--work", default="/tmp/lrtune-gpu-fuse", help="where the JPEGs and studies go")
    args = parser.parse_args()
    sizes = SMOKE if args.smoke else FULL
    counts = [1, 2] if args.smoke else [1, 2, 4, 8]
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    work = Path(args.work) / ("smoke" if args.smoke else "full")
    results: dict = {"sizes": sizes.__dict__, **describe(torch.device(sizes.device)), "searches": {}}
    print(" ".join(f"{k} {v}" for k, v in results.items() if k not in ("sizes", "searches")), flush=True)
    started = time.perf_counter()
    folder = jpeg_folder(work, sizes)
    print("| count | --fuse K, images/s | --workers N, images/s |\n|---|---|---|", flush=True)
    for count in counts:
        row = {how: search_images_per_s(work / f"{how}-{count}", search_args(sizes, folder, count, how),
                                        batch=sizes.batch) for how in ("fuse", "workers")}
        results["searches"][count] = row
        print(f"| {count} | {row['fuse']:,.0f} | {row['workers']:,.0f} |", flush=True)
    measured = probe(sizes, folder, work, counts)
    results["probe"] = {k: {"images_per_s": rate, "peak_bytes_per_slot": peak // k}
                        for k, (rate, peak) in measured.items()}
    for k, row in results["probe"].items():
        print(f"probe K={k}: {row['images_per_s']:,.0f} images/s, peak {row['peak_bytes_per_slot'] / 2**30:.2f} GiB "
              "allocated per slot", flush=True)
    results["seconds"] = round(time.perf_counter() - started, 1)
    print(f"done in {results['seconds']} s", flush=True)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_fuse.json").write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
