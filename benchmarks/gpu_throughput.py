"""Training throughput on one GPU, side by side in one run: a trial against the chip's ceiling.

Prints, for EfficientNet-B0 at 224 px (bf16 autocast, channels_last, fused AdamW):
  - the ceiling: a bare timm loop on synthetic batches already on the device, in images/s;
  - a trial (``lrtune.tuner.trial.Objective``) on a cached in-memory set of the same size, as a share of it;
  - a trial from JPEG files (18 classes, long-tailed, 18,900 JPEGs of 384x512, cached at 224 px),
    with and without the first epoch's decode amortized over 10 epochs;
  - --compile: the first epoch's compile cost against the steady-state gain, and what it nets over 10 epochs;
  - the built-in digits model: 4 concurrent trials on the GPU (``--workers 4``) against one, in total images/s;
  - a search's total training images/s on the JPEG set at batch 64: --workers 1, 2, 4 and 8, each with
    --compile off and on (--compile-mode reduce-overhead, CUDA graphs), one table.

    python benchmarks/gpu_throughput.py --out gpu-results      # on a CUDA machine, a few minutes
    python benchmarks/gpu_throughput.py --smoke                # tiny sizes on the CPU: checks the script runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import optuna
import timm
import torch
from PIL import Image

from lrtune.config import Config
from lrtune.training.datasets import ImageSet, split_indices
from lrtune.training.loop import amp_policy
from lrtune.training.optimizer import create_optimizer
from lrtune.training.run import Hyperparams, TrainingData, TrainingRun, load_training_data
from lrtune.tuner.trial import Objective

ROOT = Path(__file__).resolve().parent.parent
PARAMS = {"lr": 1e-3, "scheduler": "cosine", "loss": "ce", "accum": 1}


@dataclass(frozen=True)
class Sizes:
    """What the benchmark trains on; ``--smoke`` shrinks every one of them."""

    device: str = "cuda"
    model: str = "efficientnet_b0"
    image_size: int = 224
    batch: int = 64
    images: int = 18_900  # the cached set and the JPEG set
    jpeg_shape: tuple[int, int] = (384, 512)  # height, width
    classes: int = 18
    ceiling_steps: int = 150
    trial_epochs: int = 2  # the cached-set trial
    jpeg_epochs: int = 10  # the JPEG trial: the decode is amortized over these
    compile_epochs: int = 3
    digits_trials: int = 4  # per worker
    digits_workers: int = 4
    digits_epochs: int = 10
    table_workers: tuple[int, ...] = (1, 2, 4, 8)
    table_epochs: int = 3  # per trial, one trial per worker
    table_compile: tuple[bool, ...] = (False, True)


SMOKE = Sizes(
    device="cpu", model="test_efficientnet", image_size=32, batch=16, images=180, jpeg_shape=(48, 64),
    ceiling_steps=4, trial_epochs=1, jpeg_epochs=1, compile_epochs=0, digits_trials=1, digits_workers=2,
    digits_epochs=1, table_workers=(2,), table_epochs=1, table_compile=(False,),
)  # compile_epochs 0: no compile on the CPU, where inductor takes minutes; tests/training cover the graph path


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ceiling(sizes: Sizes, device: torch.device) -> float:
    """Images/s of the bare loop: bf16 autocast, channels_last, fused AdamW, a batch already on the device."""
    torch.manual_seed(0)
    model = timm.create_model(sizes.model, num_classes=sizes.classes).to(device, memory_format=torch.channels_last)
    optimizer = create_optimizer(model, name="adamw", lr=1e-3, weight_decay=0.01)  # fused where the device has it
    x = torch.randn(sizes.batch, 3, sizes.image_size, sizes.image_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, sizes.classes, (sizes.batch,), device=device)
    amp = amp_policy(device, True)
    model.train()

    def step() -> None:
        with amp.autocast():
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(max(2, sizes.ceiling_steps // 5)):  # warm-up: cuDNN autotuning, allocator
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(sizes.ceiling_steps):
        step()
    sync(device)
    return sizes.ceiling_steps * sizes.batch / (time.perf_counter() - start)


def long_tail(sizes: Sizes) -> np.ndarray:
    """Images per class, falling geometrically to a tenth, summing to ``sizes.images``."""
    weights = 0.1 ** (np.arange(sizes.classes) / (sizes.classes - 1))
    counts = np.floor(weights / weights.sum() * sizes.images).astype(int)
    counts[0] += sizes.images - counts.sum()
    return counts


def synthetic_image(rng: np.random.Generator, label: int, shape: tuple[int, int]) -> np.ndarray:
    """Noise with a class-coloured block: learnable, and as costly to decode as a photo of its size."""
    h, w = shape
    image = rng.integers(0, 96, (h, w, 3), dtype=np.uint8)
    y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
    image[y : y + h // 3, x : x + w // 3] = np.array([label * 13 % 256, label * 71 % 256, label * 151 % 256])
    return image


def cached_set(sizes: Sizes) -> ImageSet:
    """An in-memory ImageSet of ``sizes.images`` images at the training size."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(sizes.classes), long_tail(sizes))
    shape = (sizes.image_size, sizes.image_size)
    images = np.stack([synthetic_image(rng, int(k), shape) for k in labels])
    classes = [f"class_{k:02d}" for k in range(sizes.classes)]
    return ImageSet(images, labels.astype(np.int64), classes, None, None, [], "cached")


def _write_class(args: tuple[Path, int, int, tuple[int, int]]) -> None:
    folder, label, count, shape = args
    rng = np.random.default_rng(label)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(synthetic_image(rng, label, shape)).save(folder / f"{i:05d}.jpg", quality=90)


def jpeg_folder(root: Path, sizes: Sizes) -> Path:
    """The seed-sized ImageFolder: 18 long-tailed classes of ``jpeg_shape`` JPEGs, written once."""
    folder = root / f"jpegs-{sizes.images}-{sizes.jpeg_shape[0]}x{sizes.jpeg_shape[1]}"
    if not (folder / ".complete").exists():
        jobs = [(folder / f"class_{k:02d}", k, int(n), sizes.jpeg_shape) for k, n in enumerate(long_tail(sizes))]
        with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
            list(pool.map(_write_class, jobs))
        (folder / ".complete").touch()
    return folder


def trial_speed(cfg: Config, data: TrainingData) -> float:
    """A real trial (baseline parameters) through ``Objective``: its training images/s."""
    with tempfile.TemporaryDirectory() as tmp:
        objective = Objective(replace(cfg, studies_dir=tmp), study_dir=Path(tmp) / "study", data=data)
        trial = optuna.trial.FixedTrial(PARAMS, number=0)
        objective(trial)
    return float(trial.user_attrs["images_per_s"])


def epoch_times(cfg: Config, data: TrainingData) -> list[float]:
    """Seconds of each training epoch of one run (validation left out)."""
    run = TrainingRun(cfg, Hyperparams.from_dict(PARAMS), data=data, amp=amp_policy(torch.device(cfg.device), True), seed=0)
    times = []
    for epoch in range(1, cfg.epochs + 1):
        before = run.state.train_seconds
        run.train_epoch(epoch)
        times.append(run.state.train_seconds - before)
    return times


def search_images_per_s(studies: Path, args: list[str], *, batch: int) -> float:
    """Total training images/s of one ``lrtune search`` (``args``), over the span of its trials."""
    shutil.rmtree(studies, ignore_errors=True)  # a fresh study: an old one would already be complete
    cmd = [sys.executable, "-m", "lrtune", "search", "-q", "--studies-dir", str(studies), "--study", "s",
           "--pruner", "none", "--keep", "none", "--lr-range", "off", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"search {' '.join(args)} failed: {proc.stderr[-2000:]}")
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{studies / 'lrtune.db'}")
    done = [t for t in study.trials if t.datetime_complete is not None and t.user_attrs.get("curves")]
    n_train = study.user_attrs["dataset"]["n_train"]
    per_epoch = n_train // batch * batch if n_train > batch else n_train
    images = sum(len(t.user_attrs["curves"]["epoch"]) * per_epoch for t in done)
    span = max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)
    return images / span.total_seconds()


def concurrent_digits(sizes: Sizes, workers: int, root: Path) -> float:
    """Total training images/s of ``workers`` digits searches sharing the device, over the span of their trials."""
    args = ["--device", sizes.device, "--trials", str(sizes.digits_trials * workers), "--workers", str(workers),
            "--epochs", str(sizes.digits_epochs)]
    return search_images_per_s(root / f"digits-{workers}", args, batch=32)


def concurrency_table(sizes: Sizes, folder: Path, root: Path) -> dict[str, float]:
    """A search on the JPEG set at ``sizes.batch``: total images/s for each worker count, compile off and on."""
    table = {}
    for workers in sizes.table_workers:
        for compiled in sizes.table_compile:
            args = ["--data", str(folder), "--model", sizes.model, "--image-size", str(sizes.image_size),
                    "--batch-size", str(sizes.batch), "--device", sizes.device, "--trials", str(workers),
                    "--workers", str(workers), "--epochs", str(sizes.table_epochs), "--cache", "disk",
                    *(["--compile", "--compile-mode", "reduce-overhead"] if compiled else ["--no-compile"])]
            key = f"workers {workers}, compile {'on' if compiled else 'off'}"
            table[key] = search_images_per_s(root / f"table-{workers}-{int(compiled)}", args, batch=sizes.batch)
            print(f"{key}: {table[key]:.0f} images/s", flush=True)
    return table


def describe(device: torch.device) -> dict[str, str]:
    info = {"torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if device.type == "cuda":
        info["device"] = torch.cuda.get_device_name(device)
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True)
        info["driver"] = smi.stdout.strip() or "unknown"
    else:
        info["device"] = f"CPU ({os.cpu_count()} cores)"
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks that the script runs")
    parser.add_argument("--out", default="", help="also write the results as JSON into this folder")
    parser.add_argument("--work", default="/tmp/lrtune-gpu-throughput", help="where the JPEGs and studies go")
    args = parser.parse_args()
    sizes = SMOKE if args.smoke else Sizes()
    device = torch.device(sizes.device)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    work = Path(args.work) / ("smoke" if args.smoke else "full")
    results: dict = {"sizes": sizes.__dict__, **describe(device)}
    print(" ".join(f"{k} {v}" for k, v in results.items() if k != "sizes"), flush=True)
    cfg = Config(model=sizes.model, image_size=sizes.image_size, batch_size=sizes.batch, device=sizes.device,
                 augment="device", pruner="none", keep="none", hflip=0.5, crop=0.0)

    top = results["ceiling_images_per_s"] = ceiling(sizes, device)
    print(f"ceiling (bare loop, synthetic batches on the device): {top:.0f} images/s", flush=True)

    imageset = cached_set(sizes)
    train_idx, val_idx = split_indices(imageset, val_fraction=0.2, seed=0)
    cached = TrainingData(imageset, train_idx, val_idx)
    speed = results["cached_trial_images_per_s"] = trial_speed(replace(cfg, epochs=sizes.trial_epochs), cached)
    print(f"trial on a cached set of {sizes.images} images: {speed:.0f} images/s = {speed / top:.3f} of the ceiling "
          "(goal >= 0.90)", flush=True)

    folder = jpeg_folder(work, sizes)
    jpeg_cfg = replace(cfg, data=str(folder), cache="memory", epochs=sizes.jpeg_epochs, studies_dir=str(work / "studies"))
    start = time.perf_counter()
    jpeg_data = load_training_data(jpeg_cfg)
    decode = results["jpeg_decode_s"] = time.perf_counter() - start
    speed = results["jpeg_trial_images_per_s"] = trial_speed(jpeg_cfg, jpeg_data)
    trained = sizes.jpeg_epochs * len(jpeg_data.train_idx)
    amortized = results["jpeg_amortized_images_per_s"] = trained / (decode + trained / speed)
    print(f"trial from {sizes.images} JPEGs {sizes.jpeg_shape[0]}x{sizes.jpeg_shape[1]}: decode {decode:.1f} s; "
          f"{speed:.0f} images/s = {speed / top:.3f} of the ceiling without the decode, "
          f"{amortized:.0f} images/s = {amortized / top:.3f} with it amortized over {sizes.jpeg_epochs} epochs "
          "(goal >= 0.80)", flush=True)

    if sizes.compile_epochs:
        compile_gain(sizes, cfg, cached, results)
    run_digits_and_table(sizes, work, folder, results)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_throughput.json").write_text(json.dumps(results, indent=2, default=str))


def compile_gain(sizes: Sizes, cfg: Config, cached: TrainingData, results: dict) -> None:
    """The first epoch's compile cost against the steady-state gain, over a 10-epoch trial."""
    plain = epoch_times(replace(cfg, epochs=sizes.compile_epochs), cached)
    compiled = epoch_times(replace(cfg, epochs=sizes.compile_epochs, compile=True), cached)
    steady_plain, steady_compiled = np.median(plain[1:]), np.median(compiled[1:])
    net = (plain[0] + 9 * steady_plain) - (compiled[0] + 9 * steady_compiled)
    results["compile"] = {"plain_epoch_s": plain, "compiled_epoch_s": compiled, "saved_over_10_epochs_s": net}
    print(f"--compile: first epoch {compiled[0]:.1f} s against {plain[0]:.1f} s; steady epochs "
          f"{steady_compiled:.2f} s against {steady_plain:.2f} s; over a 10-epoch trial it "
          f"{'saves' if net > 0 else 'costs'} {abs(net):.1f} s", flush=True)


def run_digits_and_table(sizes: Sizes, work: Path, folder: Path, results: dict) -> None:
    """Concurrent digits trials against one; then the JPEG search's table of workers and compile."""
    one = results["digits_1_images_per_s"] = concurrent_digits(sizes, 1, work)
    many = results[f"digits_{sizes.digits_workers}_images_per_s"] = concurrent_digits(sizes, sizes.digits_workers, work)
    print(f"digits: 1 trial {one:.0f} images/s; {sizes.digits_workers} concurrent trials {many:.0f} images/s in total "
          f"= {many / one:.2f}x (goal >= 2.5x at 4)", flush=True)
    table = results["search_table_images_per_s"] = concurrency_table(sizes, folder, work)
    print("| workers | compile off | compile on (reduce-overhead) |\n|---|---|---|")
    for workers in sizes.table_workers:
        off, on = (table.get(f"workers {workers}, compile {c}") for c in ("off", "on"))
        print(f"| {workers} | {off:,.0f} | {f'{on:,.0f}' if on is not None else '-'} |", flush=True)


if __name__ == "__main__":
    main()
