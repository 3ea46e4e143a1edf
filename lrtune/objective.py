"""Turns an Optuna trial into a training run: reports, prunes, records and checkpoints."""

from __future__ import annotations

import copy
import gc
import math
import os
import random
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import optuna
import torch

from lrtune import checkpoints
from lrtune.config import Config, effective_hflip, effective_image_size
from lrtune.data import ImageSet, iter_eval_batches, load_imageset, make_train_loader, split_indices
from lrtune.errors import LRTuneError
from lrtune.losses import create_loss
from lrtune.models import check_model, create_model
from lrtune.schedules import create_schedule
from lrtune.space import TrialParams, check_space, suggest
from lrtune.train import Diverged, Interrupted, confusion, evaluate, precision_for, resolve_device, train_one_epoch

MAX_LR_POINTS = 500  # per-step LR points kept on a trial
MAX_CONSECUTIVE_FAILURES = 3  # then the study stops: the fault is not in one trial's parameters
EVAL_BATCH = 256


class TrialFailed(Exception):
    """One trial failed for a reason of its own; the study goes on."""


class Progress(Protocol):
    def epoch(self, trial: int, epoch: int, epochs: int, macro_f1: float) -> None: ...


@dataclass
class StopFlag:
    """Set by signal handlers; read by the training loop between micro-batches."""

    signum: int | None = None

    def __call__(self) -> bool:
        return self.signum is not None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(trial_seed: int, epoch: int) -> int:
    """Every epoch starts from its own seed, so a resumed trial replays exactly."""
    return trial_seed * 1000 + epoch


# Where PyTorch has fused AdamW and SGD kernels: CUDA and the CPU since torch
# 2.4, used from 2.8, the first release where other projects found them mature.
FUSED_DEVICES = ("cpu", "cuda") if torch.__version__ >= "2.8" else ()


def create_optimizer(model: torch.nn.Module, cfg: Config, lr: float) -> torch.optim.Optimizer:
    """AdamW, or SGD with Nesterov momentum; fused into one kernel where the device has one.

    The fused step does the same update as the default per-parameter loop,
    several times faster (about 8x for AdamW on a small model on the CPU).
    """
    device = next(model.parameters()).device.type
    fused = {"fused": True} if device in FUSED_DEVICES else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=lr,
            momentum=cfg.momentum,
            nesterov=cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
            **fused,
        )
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay, **fused)


def thin(points: list[list[float]], limit: int = MAX_LR_POINTS) -> list[list[float]]:
    """At most ``limit`` evenly spaced points, always keeping the last."""
    if len(points) <= limit:
        return points
    stride = math.ceil(len(points) / limit)
    kept = points[::stride]
    return kept if kept[-1] == points[-1] else kept + [points[-1]]


@dataclass
class RunState:
    """What a trial has done so far; saved at the end of every epoch."""

    epoch: int = 0
    step: int = 0
    best_value: float = -1.0
    best: dict[str, Any] = field(default_factory=dict)  # the best epoch's metrics, without its confusion matrix
    best_preds: list[int] = field(default_factory=list)  # the best epoch's predictions, for that matrix
    curves: dict[str, list[float]] = field(
        default_factory=lambda: {k: [] for k in ("epoch", "train_loss", "val_loss", "val_f1", "val_acc", "lr")}
    )
    lr_steps: list[list[float]] = field(default_factory=list)
    train_seconds: float = 0.0
    train_images: int = 0
    best_saved: bool = False  # best.pt holds the best epoch's weights


@dataclass
class TrialRun:
    """Everything one trial trains with, built once by ``Objective._run``."""

    trial: optuna.Trial
    params: TrialParams
    seed: int
    folder: Path
    model: torch.nn.Module
    loader: Any
    optimizer: torch.optim.Optimizer
    schedule: Any
    loss_fn: torch.nn.Module
    scaler: torch.amp.GradScaler | None
    state: RunState
    writer: checkpoints.Writer
    best_weights: dict[str, torch.Tensor] | None = None  # the best epoch's weights while not yet in best.pt


class Objective:
    """Callable objective: ``study.optimize(Objective(cfg, study_dir=...))``.

    Loading the data, checking names and building the model once happen here,
    so errors that would fail every trial stop the study before it starts.
    """

    def __init__(
        self,
        cfg: Config,
        *,
        study_dir: Path,
        stop: Callable[[], bool] | None = None,
        progress: Progress | None = None,
        imageset: ImageSet | None = None,
    ) -> None:
        check_space(cfg)
        self.cfg = cfg
        self.study_dir = Path(study_dir)
        self.stop = stop or (lambda: False)
        self.progress = progress
        self.device = resolve_device(cfg.device)
        self.precision = precision_for(self.device, cfg.amp)
        self.imageset = imageset or load_imageset(
            cfg.data,
            image_size=effective_image_size(cfg),
            data_root=cfg.data_root,
            cache=cfg.cache,
            cache_dir=Path(cfg.studies_dir) / "cache",
            skip_bad_images=cfg.skip_bad_images,
        )
        self.n_classes = len(self.imageset.classes)
        self.train_idx, self.val_idx = split_indices(self.imageset, val_fraction=cfg.val_fraction, seed=cfg.seed)
        self.val_targets = self.imageset.labels[self.val_idx]  # in the order evaluate sees them
        check_model(cfg.model, num_classes=self.n_classes, pretrained=cfg.pretrained, weights=cfg.weights)
        self.consecutive_failures = 0

    # -- the trial -----------------------------------------------------------

    def __call__(self, trial: optuna.Trial) -> float:
        if self.stop():
            raise Interrupted
        params = suggest(trial, self.cfg)
        attrs = trial.user_attrs
        seed = int(attrs.get("seed", self.cfg.seed * 100_003 + trial.number))
        trial.set_user_attr("seed", seed)
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("effective_batch", self.cfg.batch_size * params.accum)
        folder = checkpoints.trial_dir(self.study_dir, trial.number)
        failure = None
        try:
            value = self._run(trial, params, seed, attrs.get("retry_of"), folder)
        except (Interrupted, KeyboardInterrupt):
            trial.set_user_attr("reason", "interrupted")
            self._enqueue_retry(trial, seed)
            raise
        except optuna.TrialPruned as exc:
            trial.set_user_attr("reason", str(exc))
            checkpoints.remove(self.study_dir, trial.number)
            raise
        except Diverged as exc:
            reason = f"diverged: {exc}"
            trial.set_user_attr("reason", reason)
            checkpoints.remove(self.study_dir, trial.number)
            raise optuna.TrialPruned(reason) from None
        except LRTuneError:
            checkpoints.remove(self.study_dir, trial.number)
            raise
        except torch.cuda.OutOfMemoryError as exc:
            failure = f"out of memory: {str(exc).splitlines()[0] if str(exc) else 'CUDA'}"
        except Exception as exc:
            failure = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
        if failure is not None:
            # Outside the except clause the failed run's frames, and with them its
            # model and optimizer, are no longer held by the traceback.
            self._fail(trial, failure)
        self.consecutive_failures = 0
        checkpoints.remove(self.study_dir, trial.number, keep_best=self.cfg.keep != "none")
        return value

    def _fail(self, trial: optuna.Trial, reason: str) -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        trial.set_user_attr("reason", reason)
        checkpoints.remove(self.study_dir, trial.number)
        self.consecutive_failures += 1
        if self.consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
            raise LRTuneError(f"{self.consecutive_failures} trials in a row failed; the last: {reason}")
        raise TrialFailed(reason)

    def _enqueue_retry(self, trial: optuna.Trial, seed: int) -> None:
        study = getattr(trial, "study", None)
        if study is not None:
            study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number, "seed": seed})

    def _run(self, trial: optuna.Trial, params: TrialParams, seed: int, retry_of: int | None, folder: Path) -> float:
        cfg, precision = self.cfg, self.precision
        seed_everything(seed)
        model = create_model(cfg.model, num_classes=self.n_classes, pretrained=cfg.pretrained, weights=cfg.weights)
        model.to(precision.device, memory_format=torch.channels_last if precision.channels_last else torch.preserve_format)
        loader = make_train_loader(
            self.imageset,
            self.train_idx,
            batch_size=cfg.batch_size,
            balance=cfg.balance,
            hflip=effective_hflip(cfg),
            affine=cfg.affine,
            color=cfg.color,
            rare_affine=cfg.rare_affine,
            num_workers=cfg.num_workers,
            pin_memory=precision.device.type == "cuda",
        )
        steps_per_epoch = max(1, math.ceil(len(loader) / params.accum))
        optimizer = create_optimizer(model, cfg, params.lr)
        schedule = create_schedule(
            params.scheduler,
            base_lr=params.lr,
            steps_per_epoch=steps_per_epoch,
            epochs=cfg.epochs,
            warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
            step_size=params.step_size,
            gamma=params.step_gamma,
            factor=params.plateau_factor,
            patience=params.plateau_patience,
        )
        loss_fn = create_loss(params.loss, gamma=params.focal_gamma, smoothing=params.smoothing)
        scaler = precision.scaler()
        state = RunState()

        if retry_of is not None and checkpoints.adopt(self.study_dir, int(retry_of), trial.number):
            saved = checkpoints.load(folder / checkpoints.LAST, precision.device)
            model.load_state_dict(checkpoints.unpack(saved["model"]))
            optimizer.load_state_dict(checkpoints.unpack(saved["optimizer"]))
            schedule.load_state_dict(saved["schedule"])
            if scaler is not None and saved.get("scaler"):
                scaler.load_state_dict(saved["scaler"])
            state = RunState(**saved["run"])
            for epoch, value in zip(state.curves["epoch"], state.curves["val_f1"]):
                trial.report(value, int(epoch))
            trial.set_user_attr("resumed_at_epoch", state.epoch + 1)

        # The best epoch's weights stay in memory (the copy packed for its last.pt)
        # and are written to best.pt only when a later epoch stops matching them
        # (or at the end): until then the epoch's last.pt holds the same weights.
        run = TrialRun(trial, params, seed, folder, model, loader, optimizer, schedule, loss_fn, scaler, state,
                       checkpoints.Writer())
        if cfg.keep != "none" and state.best and state.best.get("epoch") == state.epoch and not state.best_saved:
            run.best_weights = _snapshot(model)
        try:
            for epoch in range(state.epoch + 1, cfg.epochs + 1):
                self._epoch(run, epoch)
            if run.best_weights is not None and not state.best_saved:
                self._save_best(run)
        finally:
            try:
                run.writer.close()
            finally:
                self._publish(trial, state)
        return state.best_value

    def _epoch(self, run: TrialRun, epoch: int) -> None:
        """Train, validate, record and checkpoint one epoch; prune if the pruner says so."""
        cfg, precision = self.cfg, self.precision
        trial, state, model, schedule = run.trial, run.state, run.model, run.schedule
        seed, loader = run.seed, run.loader
        seed_everything(epoch_seed(seed, epoch))
        loader.dataset.reseed(epoch_seed(seed, epoch))
        started = time.perf_counter()
        result = train_one_epoch(
            model,
            loader,
            run.optimizer,
            run.loss_fn,
            schedule=schedule,
            step=state.step,
            accum_steps=run.params.accum,
            precision=precision,
            scaler=run.scaler,
            should_stop=self.stop,
        )
        state.train_seconds += time.perf_counter() - started
        state.train_images += result.images
        previous = state.curves["train_loss"]
        if previous and result.train_loss > cfg.diverge_factor * min(previous):
            raise Diverged(
                f"train loss {result.train_loss:.4g} at epoch {epoch} is over "
                f"{cfg.diverge_factor:g}x its best ({min(previous):.4g})"
            )
        ev = evaluate(
            model,
            iter_eval_batches(self.imageset, self.val_idx, max(cfg.batch_size, EVAL_BATCH)),
            n_classes=self.n_classes,
            precision=precision,
        )
        schedule.epoch_end(ev.macro_f1)
        state.lr_steps.extend([[state.step + i, lr] for i, lr in enumerate(result.lrs)])
        state.epoch, state.step = epoch, result.step
        for key, value in (
            ("epoch", epoch),
            ("train_loss", result.train_loss),
            ("val_loss", ev.loss),
            ("val_f1", ev.macro_f1),
            ("val_acc", ev.accuracy),
            ("lr", result.lrs[-1] if result.lrs else schedule.lr(state.step)),
        ):
            state.curves[key].append(round(float(value), 8) if key != "epoch" else epoch)
        improved = ev.macro_f1 > state.best_value
        if improved:
            state.best_value, state.best = ev.macro_f1, ev.summary(epoch)
            state.best_preds = ev.preds.tolist()
            state.best_saved = False
        elif run.best_weights is not None and not state.best_saved:
            # last.pt is about to move past the best epoch: persist its weights first.
            # The writer keeps order, so best.pt is on disk before that last.pt.
            self._save_best(run)
        trial.report(ev.macro_f1, epoch)
        # After the last epoch the trial ends: nothing to continue from, and the
        # model itself holds the final weights.
        packed = checkpoints.pack(model.state_dict()) if epoch < cfg.epochs else None
        if improved and cfg.keep != "none":
            run.best_weights = checkpoints.unpack(packed) if packed is not None else model.state_dict()
        if packed is not None:
            run.writer.save(
                run.folder / checkpoints.LAST,
                {
                    "model": packed,
                    "optimizer": checkpoints.pack(run.optimizer.state_dict()),
                    "schedule": copy.deepcopy(schedule.state_dict()),
                    "scaler": copy.deepcopy(run.scaler.state_dict()) if run.scaler is not None else {},
                    "run": copy.deepcopy(state.__dict__),
                },
            )
        if self.progress is not None:
            self.progress.epoch(trial.number, epoch, cfg.epochs, ev.macro_f1)
        if self.prunes(trial) and trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch}")

    @staticmethod
    def prunes(trial: optuna.Trial) -> bool:
        """False when the study's pruner never prunes, which spares asking it every epoch."""
        study = getattr(trial, "study", None)
        return study is None or not isinstance(study.pruner, optuna.pruners.NopPruner)

    def _save_best(self, run: TrialRun) -> None:
        """Queue best.pt, unless ``keep=best`` and a finished trial already does at least as well.

        Such weights would be deleted as soon as this trial ends, and a later
        epoch that does better is kept by then.
        """
        if self.cfg.keep == "best" and not _may_beat_study(run.trial, run.state.best_value):
            run.best_weights = None
            return
        run.writer.save(run.folder / checkpoints.BEST, self._weights(run))
        run.state.best_saved = True

    def _publish(self, trial: optuna.Trial, state: RunState) -> None:
        """The trial's curves and summary attributes, written once when it ends.

        While it runs, its intermediate values give the validation macro-F1 of
        every epoch, and ``last.pt`` holds the curves a retry continues.
        """
        trial.set_user_attr("curves", state.curves)
        trial.set_user_attr("lr_steps", thin(state.lr_steps))
        best = dict(state.best)
        if state.best_preds:
            best["confusion"] = confusion(self.val_targets, state.best_preds, self.n_classes)
        trial.set_user_attr("best", best)
        trial.set_user_attr("images_per_s", round(state.train_images / max(state.train_seconds, 1e-9), 1))

    def _weights(self, run: TrialRun) -> dict:
        """best.pt: the best epoch's weights and what is needed to use them."""
        return {
            "model": self.cfg.model,
            "state_dict": run.best_weights,
            "classes": list(self.imageset.classes),
            "image_size": effective_image_size(self.cfg),
            "params": run.params.to_dict(),
            "trial": run.trial.number,
            "epoch": run.state.best["epoch"],
            "macro_f1": run.state.best_value,
        }


def _may_beat_study(trial: optuna.Trial, value: float) -> bool:
    """False when a complete trial of the study already has at least ``value``."""
    study = getattr(trial, "study", None)
    if study is None:
        return True
    try:
        return value > study.best_value
    except ValueError:  # no complete trial yet
        return True


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
