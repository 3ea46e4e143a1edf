"""Wall time of one lrtune trial against a bare PyTorch loop doing the same steps.

Both sides train the same timm model on the same cached, augmented data for
the same epochs with the same LR schedule, and validate after every epoch. The
lrtune side is a real trial of a real study in SQLite (lrtune's storage
settings): it also reports to Optuna, stores curves, writes checkpoints and
keeps the best weights. The
runs alternate (bare, lrtune, bare, lrtune, ...) so both see the same machine.

    python benchmarks/overhead.py [--repeats 5] [--epochs 10]
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import tempfile
import time
from pathlib import Path

import optuna
import torch
from sklearn.metrics import f1_score

from lrtune.config import Config, effective_hflip, effective_image_size
from lrtune.data import iter_eval_batches, load_imageset, make_train_loader, split_indices, to_model_input
from lrtune.models import create_model
from lrtune.objective import Objective, epoch_seed, seed_everything
from lrtune.space import BASELINE
from lrtune.study import create_pruner, open_storage


def bare_loop(cfg: Config) -> float:
    """The plainest correct loop: AdamW, cosine LR per step, CE, validation macro-F1 per epoch."""
    images = load_imageset(cfg.data, image_size=effective_image_size(cfg))
    train_idx, val_idx = split_indices(images, val_fraction=cfg.val_fraction, seed=cfg.seed)
    seed_everything(0)
    model = create_model(cfg.model, num_classes=len(images.classes))
    loader = make_train_loader(
        images, train_idx, batch_size=cfg.batch_size, balance="none", hflip=effective_hflip(cfg),
        affine=cfg.affine, color=cfg.color, rare_affine=cfg.rare_affine,
    )
    lr = BASELINE["lr"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * len(loader)
    step, best = 0, 0.0
    for epoch in range(1, cfg.epochs + 1):
        seed_everything(epoch_seed(0, epoch))
        loader.dataset.reseed(epoch_seed(0, epoch))
        model.train()
        for x, y in loader:
            for group in optimizer.param_groups:
                group["lr"] = lr * (1 + math.cos(math.pi * step / total)) / 2
            loss = torch.nn.functional.cross_entropy(model(to_model_input(x, "cpu")), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
        model.eval()
        preds, targets = [], []
        with torch.inference_mode():
            for x, y in iter_eval_batches(images, val_idx, 256):
                preds.append(model(to_model_input(x, "cpu")).argmax(1))
                targets.append(y)
        best = max(best, f1_score(torch.cat(targets), torch.cat(preds), average="macro"))
    return best


def lrtune_trial(objective: Objective, cfg: Config, storage: str, number: int) -> tuple[float, float]:
    """One trial of a real SQLite study (baseline parameters), and its wall time.

    The objective is built once, as a search builds it once for all its trials;
    the timing covers everything a trial costs: ask, training, reports,
    checkpoints, attributes and tell.
    """
    study = optuna.create_study(
        study_name=f"run{number}",
        storage=storage,
        direction="maximize",
        pruner=create_pruner(cfg.pruner, warmup=cfg.pruner_warmup, epochs=cfg.epochs),
    )
    study.enqueue_trial(dict(BASELINE))
    start = time.perf_counter()
    study.optimize(objective, n_trials=1)
    return time.perf_counter() - start, study.best_value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    cfg = Config(epochs=args.epochs, schedulers=["cosine"], losses=["ce"], accum=[1], pruner="none")
    load_imageset(cfg.data, image_size=effective_image_size(cfg))  # decode once, outside the timings
    bare_times, lrtune_times = [], []
    with tempfile.TemporaryDirectory() as tmp:
        storage = open_storage(f"sqlite:///{Path(tmp) / 'bench.db'}")
        objective = Objective(cfg, study_dir=Path(tmp) / "study")
        for i in range(args.repeats + 1):
            start = time.perf_counter()
            bare_f1 = bare_loop(cfg)
            bare = time.perf_counter() - start
            ours, ours_f1 = lrtune_trial(objective, cfg, storage, i)
            if i == 0:
                continue  # warm-up: first-touch allocations, lazy imports
            bare_times.append(bare)
            lrtune_times.append(ours)
            print(f"run {i}: bare {bare:.2f} s (F1 {bare_f1:.4f}), lrtune {ours:.2f} s (F1 {ours_f1:.4f}), ratio {ours / bare:.3f}")
    ratios = [o / b for o, b in zip(lrtune_times, bare_times)]
    print(
        f"\n{cfg.model}, {args.epochs} epochs, {args.repeats} alternating runs on {platform.processor() or platform.machine()}"
        f" ({torch.get_num_threads()} threads, torch {torch.__version__})\n"
        f"bare loop   median {statistics.median(bare_times):.2f} s\n"
        f"lrtune      median {statistics.median(lrtune_times):.2f} s\n"
        f"ratio       median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})"
    )


if __name__ == "__main__":
    main()
