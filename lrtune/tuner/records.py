"""What a trial writes to its study beside its values: attributes (several in one write), its parameters
together, its curves and summary when it ends, the record kept with its best weights, and what the progress
sink hears of its epochs."""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Callable

import optuna

from lrtune.progress import ProgressSink
from lrtune.storage import resilient
from lrtune.training.metrics import confusion
from lrtune.training.run import TrainingRun

if TYPE_CHECKING:
    from lrtune.tuner.trial import TrialFiles

MAX_LR_POINTS = 500  # per-step LR points kept on a trial


def thin(points: list[list[float]], limit: int = MAX_LR_POINTS) -> list[list[float]]:
    """At most ``limit`` evenly spaced points, always keeping the last."""
    if len(points) <= limit:
        return points
    stride = math.ceil(len(points) / limit)
    kept = points[::stride]
    return kept if kept[-1] == points[-1] else kept + [points[-1]]


def set_user_attrs(trial: optuna.Trial, attrs: dict) -> None:
    """Several user attributes at once: one write on lrtune's storage, else one call each."""
    backend = resilient(getattr(trial, "storage", None))
    if backend is None:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return
    backend.set_trial_user_attrs(trial._trial_id, attrs)
    trial._cached_frozen_trial.user_attrs.update(attrs)  # what trial.user_attrs returns


def params_together(trial: optuna.Trial) -> contextlib.AbstractContextManager:
    """Within: the trial's parameters are written together at the end (one write on lrtune's storage)."""
    backend = resilient(getattr(trial, "storage", None))
    return backend.params_together(trial._trial_id) if backend is not None else contextlib.nullcontext()


def publish(trial: optuna.Trial, run: TrainingRun, extra: dict | None = None) -> None:
    """The trial's curves and summary attributes (and ``extra`` ones), written once when it ends.

    While it runs, its intermediate values give the validation macro-F1 of
    every epoch, and ``last.pt`` holds the curves a retry continues.
    """
    state, data = run.state, run.data
    best = dict(state.best)
    if state.best_preds:
        best["confusion"] = confusion(data.val_targets, state.best_preds, data.n_classes)
    attrs = {"curves": state.curves, "lr_steps": thin(state.lr_steps), "best": best, "images_per_s": state.images_per_s}
    if run.lr_scales:  # a fine-tune's LRs by depth: each layer group's share of the head's LR
        attrs["lr_scales"] = run.lr_scales
    set_user_attrs(trial, {**attrs, **(extra or {})})


def weights_record(trial: optuna.Trial, run: TrainingRun, files: TrialFiles) -> dict:
    """best.pt: the best epoch's weights and what is needed to use them."""
    return {
        "model": run.cfg.model,
        "state_dict": files.best_weights,
        "classes": list(run.data.imageset.classes),
        "image_size": run.data.image_size,
        "params": run.params.to_dict(),
        "trial": trial.number,
        "epoch": run.state.best["epoch"],
        "metric": run.cfg.metric,
        "value": run.state.best_value,
    }


def batch_reporter(progress: ProgressSink | None, number: int, run: TrainingRun) -> Callable[[int, int, int], None] | None:
    """What tells ``progress`` (a sink with ``batch``) of each micro-batch of trial ``number``'s epochs."""
    hear = getattr(progress, "batch", None)
    if hear is None:
        return None

    def on_batch(done: int, total: int, images: int) -> None:
        hear(number, run.state.epoch + 1, run.cfg.epochs, done, total, images)

    return on_batch
