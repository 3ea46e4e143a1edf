"""Every command of lrtune on one GPU, end to end through the real CLI, in a few minutes.

In order: a search on the built-in data with the defaults, the same with
``--workers 4``; a search on a generated JPEG folder with EfficientNet-B0 at
224 px; ``lr-find``, ``train``, ``predict`` and ``export --format onnx`` on it;
the report. One PASS or FAIL line per step, with its seconds and images/s;
the exit code is 1 when any step fails.

    python benchmarks/gpu_smoke.py                  # on a CUDA machine: at most 4 minutes
    python benchmarks/gpu_smoke.py --smoke          # tiny, on the CPU, on the device-augmentation path
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_throughput import Sizes, describe, jpeg_folder  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Plan:
    """What each step runs; ``--smoke`` shrinks it to seconds on the CPU."""

    device: str = "cuda"
    augment: str = "auto"  # on CUDA: device when the cache fits
    digits_trials: int = 8  # default epochs (10)
    digits_epochs: int = 0  # 0: the default
    workers: int = 4
    model: str = "efficientnet_b0"
    image_size: int = 224
    jpeg: Sizes = Sizes(images=720, jpeg_shape=(384, 512), classes=18)
    jpeg_trials: int = 2
    jpeg_epochs: int = 2
    steps: int = 100  # lr-find


SMOKE = Plan(
    device="cpu", augment="device", digits_trials=2, digits_epochs=1, workers=2, model="test_efficientnet",
    image_size=32, jpeg=Sizes(images=90, jpeg_shape=(48, 64), classes=6), jpeg_trials=2, jpeg_epochs=1, steps=20,
)


@dataclass
class Step:
    name: str
    ok: bool
    seconds: float
    images: int = 0  # images trained or classified, for images/s
    detail: str = ""

    def line(self) -> str:
        speed = f"{self.images / self.seconds:,.0f} images/s" if self.images and self.seconds > 0 else "-"
        verdict = "PASS" if self.ok else "FAIL"
        return f"{verdict}  {self.name:<34} {self.seconds:7.1f} s  {speed:>16}  {self.detail}".rstrip()


def lrtune(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "lrtune", *args], cwd=ROOT, capture_output=True, text=True, env=env)


def trained_images(studies: Path, study: str) -> int:
    """Images the study's trials trained on: epochs trained times the images of an epoch."""
    loaded = optuna.load_study(study_name=study, storage=f"sqlite:///{studies / 'lrtune.db'}")
    n_train = int(loaded.user_attrs["dataset"]["n_train"])
    epochs = sum(len(t.user_attrs.get("curves", {}).get("epoch", [])) for t in loaded.trials)
    return epochs * n_train


def run_step(name: str, args: list[str], images: callable | None = None) -> Step:
    """One CLI command as a step: PASS on exit 0, FAIL with the last line of its stderr otherwise."""
    start = time.perf_counter()
    done = lrtune(*args)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return Step(name, False, seconds, detail=f"exit {done.returncode}: {last}")
    try:
        count = images(done) if images is not None else 0
    except (KeyError, ValueError, OSError) as exc:
        return Step(name, False, seconds, detail=f"ran, but its result could not be read: {exc}")
    return Step(name, True, seconds, count, detail=(done.stdout.strip().splitlines() or [""])[0][:80])


def steps(plan: Plan, work: Path) -> list[Step]:
    studies = work / "studies"
    common = ["--studies-dir", str(studies), "--device", plan.device, "--augment", plan.augment, "-q"]
    epochs = ["--epochs", str(plan.digits_epochs)] if plan.digits_epochs else []
    out: list[Step] = []

    def add(step: Step) -> None:
        out.append(step)
        print(step.line(), flush=True)

    add(run_step("search, defaults", ["search", *common, "--study", "digits", "--trials", str(plan.digits_trials),
                                      *epochs], lambda _: trained_images(studies, "digits")))
    add(run_step(f"search, --workers {plan.workers}",
                 ["search", *common, "--study", "digits-workers", "--trials", str(plan.digits_trials), *epochs,
                  "--workers", str(plan.workers)], lambda _: trained_images(studies, "digits-workers")))
    start = time.perf_counter()
    folder = jpeg_folder(work, plan.jpeg)
    add(Step("write the JPEG folder", True, time.perf_counter() - start, detail=f"{plan.jpeg.images} JPEGs"))
    jpegs = [*common, "--data", str(folder), "--model", plan.model, "--image-size", str(plan.image_size)]
    add(run_step(f"search, JPEGs, {plan.model}", ["search", *jpegs, "--study", "jpegs", "--trials",
                                                  str(plan.jpeg_trials), "--epochs", str(plan.jpeg_epochs)],
                 lambda _: trained_images(studies, "jpegs")))
    add(run_step("lr-find", ["lr-find", *jpegs, "--steps", str(plan.steps)]))
    add(run_step("train", ["train", "--studies-dir", str(studies), "--study", "jpegs", "--device", plan.device, "-q"],
                 lambda done: _epochs_trained(Path(done.stdout.strip())) * _n_train(studies, "jpegs")))
    model = _model_folder(studies, "jpegs")
    add(run_step("predict", ["predict", str(model), "--data", str(folder), "--out", str(work / "predictions.csv"),
                             "--device", plan.device, "-q"], lambda _: plan.jpeg.images))
    add(run_step("export, onnx", ["export", "--format", "onnx", str(model), "--out", str(work / "model.onnx"), "-q"]))
    add(run_step("report", ["report", "--studies-dir", str(studies), "--study", "jpegs", "--out",
                            str(work / "report.html")]))
    return out


def _n_train(studies: Path, study: str) -> int:
    return int(optuna.load_study(study_name=study, storage=f"sqlite:///{studies / 'lrtune.db'}")
               .user_attrs["dataset"]["n_train"])


def _epochs_trained(folder: Path) -> int:
    return len(json.loads((folder / "curves.json").read_text())["epoch"])


def _model_folder(studies: Path, study: str) -> Path:
    """The model folder ``train`` wrote (the predict and export steps fail on their own when there is none)."""
    found = sorted((studies / study / "models").glob("*")) if (studies / study / "models").is_dir() else []
    return next((p for p in found if not p.name.startswith(".")), studies / study / "models" / "missing")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny, on the CPU, on the device-augmentation path")
    parser.add_argument("--work", default="", help="where the JPEGs, studies and outputs go [default: a temporary folder]")
    args = parser.parse_args()
    plan = SMOKE if args.smoke else Plan()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    import torch

    print(" ".join(f"{k} {v}" for k, v in describe(torch.device(plan.device)).items()), flush=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="lrtune-gpu-smoke-"))
    shutil.rmtree(work / "studies", ignore_errors=True)  # fresh studies: an old one would already be complete
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = steps(replace(plan), work)
    total = time.perf_counter() - start
    failed = [s.name for s in results if not s.ok]
    print(f"{'FAIL' if failed else 'PASS'}  {len(results)} steps in {total:.1f} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
