"""A short search on CUDA with AMP, printing training throughput.

Makes a long-tailed 18-class ImageFolder of 224 px images (the shape of the
faces case), runs a 5-trial search with EfficientNet-B0 on it, then a 5-trial
search on the embedded digits, and prints images/s for each.

    python benchmarks/gpu_search.py --out results/
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def make_folder(root: Path, classes: int = 18, size: int = 224, largest: int = 120, smallest: int = 12) -> int:
    rng = np.random.default_rng(0)
    total = 0
    for k in range(classes):
        n = int(round(largest * (smallest / largest) ** (k / (classes - 1))))
        folder = root / f"class_{k:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        colour = rng.integers(0, 256, 3)
        for i in range(n):
            image = rng.integers(0, 64, (size, size, 3), dtype=np.uint8)
            x, y = rng.integers(0, size // 2, 2)
            image[y : y + size // 3, x : x + size // 3] = colour
            image[(k * 11) % size, :] = 255
            Image.fromarray(image).save(folder / f"{i}.jpg", quality=90)
        total += n
    return total


def search(studies: Path, name: str, *args: str) -> dict:
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "lrtune", "search", "--studies-dir", str(studies), "--study", name,
           "--device", "cuda", "--trials", "5", "--pruner", "none", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    print(proc.stdout)
    print(proc.stderr[-3000:], file=sys.stderr)
    if proc.returncode:
        raise SystemExit(f"search {name} failed with exit code {proc.returncode}")
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{studies / 'lrtune.db'}")
    speeds = [t.user_attrs["images_per_s"] for t in study.trials if t.user_attrs.get("images_per_s")]
    return {
        "study": name,
        "args": list(args),
        "wall_s": round(wall, 1),
        "best_macro_f1": round(study.best_value, 4),
        "images_per_s_per_trial": speeds,
        "images_per_s_median": float(np.median(speeds)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="gpu-results")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/lrtune-gpu")
    n = make_folder(work / "faces-like")
    device = torch.cuda.get_device_name(0)
    amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    print(f"device {device}, AMP {amp}, torch {torch.__version__}, {n} synthetic images", flush=True)
    results = {"device": device, "amp": amp, "torch": torch.__version__, "optuna": optuna.__version__, "runs": []}
    results["runs"].append(
        search(work / "studies", "faces-like-effnet", "--data", str(work / "faces-like"), "--model", "efficientnet_b0",
               "--image-size", "224", "--epochs", "3", "--batch-size", "64", "--num-workers", "6", "--balance", "oversample")
    )
    results["runs"].append(search(work / "studies", "digits-lt-default", "--epochs", "10"))
    for run in results["runs"]:
        print(f"{run['study']}: {run['images_per_s_median']:.0f} images/s (median of 5 trials), "
              f"best macro-F1 {run['best_macro_f1']}, wall {run['wall_s']} s")
    (out / "gpu_search.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
