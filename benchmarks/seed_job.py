"""The users' reference job, end to end on one GPU: 50 trials of EfficientNet-B0 at 224 px on seed-shaped data.

The set is shaped like the face competition: persons of 7 photos (5 with a
mask, 1 worn incorrectly, 1 without), so the split is grouped by person; 18
long-tailed classes (mask x gender x age band, the gender-age groups drawn
long-tailed); 384x512 JPEGs. The search runs with the defaults and the
parallelism lrtune chooses (``--workers auto``):

    lrtune search --trials 50 --model efficientnet_b0 --image-size 224 --epochs 10 --workers auto

It prints the wall time, the trials finished and pruned, the epochs trained
and the total training images/s, then projects the full-scale study
(18,900 photos) from the measured images/s and epochs, with the formula.

    python benchmarks/seed_job.py                 # one third of the scale (6,300 photos), on CUDA
    python benchmarks/seed_job.py --smoke         # tiny, on the CPU: checks the script runs
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_throughput import synthetic_image  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FULL_PERSONS = 2700  # 18,900 photos
PHOTOS = ("mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal")
MASKS = {"mask": 0, "incorrect": 1, "normal": 2}


@dataclass(frozen=True)
class Job:
    persons: int = FULL_PERSONS // 3
    shape: tuple[int, int] = (384, 512)
    model: str = "efficientnet_b0"
    image_size: int = 224
    trials: int = 50
    epochs: int = 10
    device: str = "cuda"
    workers: str = "auto"


SMOKE = Job(persons=18, shape=(48, 64), model="test_efficientnet", image_size=32, trials=2, epochs=1, device="cpu",
            workers="auto")


def person_groups(persons: int, seed: int = 0) -> list[int]:
    """Each person's gender-age group (0 to 5), drawn long-tailed: the first group 8 times the last."""
    weights = 0.66 ** np.arange(6)
    return list(np.random.default_rng(seed).choice(6, size=persons, p=weights / weights.sum()))


def _write_person(args: tuple[Path, int, int, tuple[int, int]]) -> list[tuple[str, int, str]]:
    root, person, group, shape = args
    rng = np.random.default_rng(person)
    rows = []
    folder = root / f"{person:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    for photo in PHOTOS:
        mask = "mask" if photo.startswith("mask") else photo.split("_")[0]
        label = 6 * MASKS[mask] + group
        Image.fromarray(synthetic_image(rng, label, shape)).save(folder / f"{photo}.jpg", quality=90)
        rows.append((f"{folder.name}/{photo}.jpg", label, folder.name))
    return rows


def seed_set(root: Path, job: Job) -> Path:
    """The photos and their manifest (path, label, group), written once."""
    manifest = root / "train.csv"
    if manifest.is_file():
        return manifest
    jobs = [(root, person, int(g), job.shape) for person, g in enumerate(person_groups(job.persons))]
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        rows = [row for person in pool.map(_write_person, jobs) for row in person]
    with open(manifest.with_suffix(".tmp"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "group"])
        writer.writerows((path, f"class_{label:02d}", group) for path, label, group in rows)
    manifest.with_suffix(".tmp").rename(manifest)
    return manifest


def figures(studies: Path, name: str) -> dict:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{studies / 'lrtune.db'}")
    trials = study.get_trials(deepcopy=False)
    n_train = int(study.user_attrs["dataset"]["n_train"])
    epochs = sum(len(t.user_attrs.get("curves", {}).get("epoch", [])) for t in trials)
    timed = [t for t in trials if t.datetime_start and t.datetime_complete]
    span = (max(t.datetime_complete for t in timed) - min(t.datetime_start for t in timed)).total_seconds()
    return {"finished": sum(t.state.is_finished() for t in trials),
            "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
            "epochs": epochs, "n_train": n_train, "images_per_s": epochs * n_train / max(span, 1e-9),
            "trials_span_s": span}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny, on the CPU: checks the script runs")
    parser.add_argument("--work", default="/tmp/lrtune-seed-job")
    args = parser.parse_args()
    job = SMOKE if args.smoke else Job()
    work = Path(args.work) / ("smoke" if args.smoke else "third")
    start = time.perf_counter()
    manifest = seed_set(work / "photos", job)
    written = time.perf_counter() - start
    studies = work / "studies"
    cmd = [sys.executable, "-m", "lrtune", "search", "-q", "--data", str(manifest), "--studies-dir", str(studies),
           "--study", "seed-job", "--trials", str(job.trials), "--model", job.model, "--image-size",
           str(job.image_size), "--epochs", str(job.epochs), "--device", job.device, "--workers", job.workers]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        print(f"FAIL  the search exited {done.returncode}: {done.stderr.strip()[-1500:]}")
        return 1
    fig = figures(studies, "seed-job")
    full_train = round(fig["n_train"] * FULL_PERSONS / job.persons)
    projected = wall - fig["trials_span_s"] + fig["epochs"] * full_train / fig["images_per_s"]
    print(f"photos: {7 * job.persons} written in {written:.1f} s (not part of the study)")
    print(f"study: {wall:.1f} s wall ({wall / 60:.2f} min), {fig['finished']} trials finished, {fig['pruned']} pruned, "
          f"{fig['epochs']} epochs trained, {fig['images_per_s']:,.0f} images/s in total")
    print(f"full scale, projected: {projected / 60:.2f} min = wall {wall:.0f} s - trials {fig['trials_span_s']:.0f} s "
          f"+ epochs {fig['epochs']} x {full_train} training images / {fig['images_per_s']:,.0f} images/s")
    (work / "seed_job.json").write_text(json.dumps({**fig, "wall_s": wall, "projected_full_s": projected,
                                                    "job": job.__dict__}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
