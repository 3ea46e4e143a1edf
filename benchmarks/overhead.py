"""Wall time of one lrtune trial against a bare PyTorch loop doing the same steps.

Both sides train the same timm model on the same cached, augmented data for
the same epochs with the same LR schedule, and validate after every epoch. The
lrtune side is a real trial of a real study in SQLite, opened as a search
opens it (WAL, heartbeats): it also reports to Optuna every epoch, stores
curves and metrics, writes a checkpoint after every epoch but the last, and
keeps the best weights.
Both start from the same seed, so they train on the same batches with the same
augmentations and reach the same macro-F1. Runs alternate (bare, lrtune, bare,
..., bare), and each lrtune trial is compared with the mean of the bare runs
on either side of it, so a machine that drifts slower or faster over the
minutes does not bias the ratio.

    python benchmarks/overhead.py [--repeats 31] [--epochs 10]

On a shared machine single runs vary by 10% or more, so the default takes 31
lrtune trials (about 6 minutes on 2 cores) for a median good to about 1%.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import tempfile
import time
from dataclasses import replace
from typing import Any, Callable

import optuna
import torch
from optuna.trial import TrialState
from sklearn.metrics import f1_score

from lrtune.config import Config, effective_hflip, effective_image_size
from lrtune.storage import FINISHED, default_storage_url, open_storage, study_dir
from lrtune.training.datasets import load_imageset, split_indices
from lrtune.training.loaders import iter_eval_batches, make_train_loader, to_model_input
from lrtune.training.models import create_model
from lrtune.training.optimizer import FUSED_DEVICES
from lrtune.training.run import EpochOutcome, TrainingRun, epoch_seed, seed_everything
from lrtune.tuner import recovery
from lrtune.tuner.driver import optimize, prepare_study
from lrtune.tuner.space import BASELINE
from lrtune.tuner.trial import Objective

BARE_SEED = 0


def bare_loop(cfg: Config) -> float:
    """The plainest correct loop: AdamW, cosine LR per step, CE, validation macro-F1 per epoch."""
    images = load_imageset(cfg.data, image_size=effective_image_size(cfg))
    train_idx, val_idx = split_indices(images, val_fraction=cfg.val_fraction, seed=cfg.seed)
    seed_everything(BARE_SEED)
    model = create_model(cfg.model, num_classes=len(images.classes))
    loader = make_train_loader(
        images, train_idx, batch_size=cfg.batch_size, balance="none", hflip=effective_hflip(cfg),
        affine=cfg.affine, color=cfg.color, rare_affine=cfg.rare_affine,
    )
    lr = BASELINE["lr"]
    fused = {"fused": True} if "cpu" in FUSED_DEVICES else {}  # the implementation lrtune uses
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay, **fused)
    total = cfg.epochs * len(loader)
    step, best = 0, 0.0
    for epoch in range(1, cfg.epochs + 1):
        seed_everything(epoch_seed(BARE_SEED, epoch))
        loader.reseed(epoch_seed(BARE_SEED, epoch))
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


def lrtune_trial(study: optuna.Study, objective: Objective, cfg: Config) -> tuple[float, float]:
    """One more trial (baseline parameters) of a real search, and its wall time.

    The study and the objective are built once, as a search builds them once for
    all its trials. The timing covers everything a trial costs in
    ``lrtune.tuner.driver.optimize``, the loop ``lrtune search`` runs: ask, training,
    reports, checkpoints, attributes, tell and the study callbacks.
    """
    if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):  # else the new study's own baseline
        # The bare loop's seed: the same initial weights, batches and augmentations.
        study.enqueue_trial(dict(BASELINE), user_attrs={"seed": BARE_SEED})
    budget = replace(cfg, trials=len(study.get_trials(deepcopy=False, states=FINISHED)) + 1)
    start = time.perf_counter()
    optimize(study, objective, budget, stop=lambda: False, progress=None)
    elapsed = time.perf_counter() - start
    return elapsed, study.get_trials(deepcopy=False)[-1].value


def fixed_costs(study: optuna.Study, objective: Objective, cfg: Config, trials: int) -> tuple[float, float]:
    """lrtune's own cost, in seconds per epoch and per trial, with the training itself taken out.

    Each epoch's training and validation are replaced by a stand-in that records
    an improving epoch (the costliest case: the best weights change every epoch)
    with the LR points a real epoch has; building the run (model, loader) is
    timed apart and left out too, as the bare loop pays it as well. What is left
    is everything a trial adds: ask and tell, attributes, intermediate values,
    the pruner, checkpoints, best weights, callbacks.
    """
    steps = len(objective.data.train_idx) // cfg.batch_size
    spent = {"epochs": 0.0, "build": 0.0}
    real_epoch, real_init, real_objective_epoch = TrainingRun.train_epoch, TrainingRun.__init__, Objective._epoch

    def stand_in(run: TrainingRun, epoch: int) -> EpochOutcome:
        state = run.state
        state.curves["epoch"].append(epoch)
        for key in ("train_loss", "val_loss", "val_f1", "val_acc", "lr"):
            state.curves[key].append(round(1 / (epoch + 1), 8))
        state.lr_steps.extend([[state.step + i, 1e-3] for i in range(steps)])
        state.epoch, state.step = epoch, state.step + steps
        state.best_value, state.best_saved = epoch / cfg.epochs, False
        state.best = {"epoch": epoch, "macro_f1": state.best_value}
        state.best_preds = [0] * len(objective.data.val_idx)
        return EpochOutcome(epoch, state.best_value, True)

    def timer(real: Callable, key: str) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - start

        return timed

    TrainingRun.train_epoch = stand_in
    TrainingRun.__init__ = timer(real_init, "build")
    Objective._epoch = timer(real_objective_epoch, "epochs")
    try:
        lrtune_trial(study, objective, cfg)  # warm-up
        spent.update(epochs=0.0, build=0.0)
        total = sum(lrtune_trial(study, objective, cfg)[0] for _ in range(trials))
    finally:
        TrainingRun.train_epoch, TrainingRun.__init__, Objective._epoch = real_epoch, real_init, real_objective_epoch
    per_epoch = spent["epochs"] / (trials * cfg.epochs)
    per_trial = (total - spent["build"] - spent["epochs"]) / trials
    return per_epoch, per_trial


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--fixed-only", action="store_true", help="only measure lrtune's fixed costs per epoch and trial")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    cfg = Config(epochs=args.epochs, schedulers=["cosine"], losses=["ce"], accum=[1], pruner="none")
    load_imageset(cfg.data, image_size=effective_image_size(cfg))  # decode once, outside the timings
    bare_times, lrtune_times = [], []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = replace(cfg, studies_dir=tmp, study="overhead")
        storage = open_storage(default_storage_url(tmp), heartbeat=recovery.heartbeat(cfg))
        objective = Objective(cfg, study_dir=study_dir(tmp, cfg.study))
        study = prepare_study(cfg, dataset=objective.data.summary(), storage=storage)
        per_epoch, per_trial = fixed_costs(study, objective, cfg, trials=max(5, args.repeats))
        print(f"lrtune's fixed cost: {per_epoch * 1000:.1f} ms per epoch, {per_trial * 1000:.1f} ms per trial", flush=True)
        if args.fixed_only:
            return
        bare_loop(cfg)  # warm-up: first-touch allocations, lazy imports
        lrtune_trial(study, objective, cfg)
        for i in range(2 * args.repeats + 1):
            if i % 2:
                seconds, f1 = lrtune_trial(study, objective, cfg)
                lrtune_times.append(seconds)
            else:
                start = time.perf_counter()
                f1 = bare_loop(cfg)
                bare_times.append(time.perf_counter() - start)
                seconds = bare_times[-1]
            print(f"{'lrtune' if i % 2 else 'bare':6s} {seconds:.2f} s  best macro-F1 {f1:.4f}", flush=True)
    # Each lrtune trial against the mean of the bare runs just before and after
    # it, which cancels a machine that drifts steadily faster or slower.
    ratios = [t / ((before + after) / 2) for t, before, after in zip(lrtune_times, bare_times, bare_times[1:])]
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    neighbours = sum((before + after) / 2 for before, after in zip(bare_times, bare_times[1:]))
    print(
        f"\n{cfg.model}, {args.epochs} epochs, {args.repeats} lrtune trials between {args.repeats + 1} bare runs"
        f" on {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads, torch {torch.__version__})\n"
        f"bare loop   median {statistics.median(bare_times):.2f} s\n"
        f"lrtune      median {statistics.median(lrtune_times):.2f} s\n"
        f"ratio       median {statistics.median(ratios):.3f} (quartiles {q1:.3f} to {q3:.3f},"
        f" min {min(ratios):.3f}, max {max(ratios):.3f}); of the totals {sum(lrtune_times) / neighbours:.3f}\n"
        f"fixed cost  {per_epoch * 1000:.1f} ms per epoch, {per_trial * 1000:.1f} ms per trial"
    )


if __name__ == "__main__":
    main()
