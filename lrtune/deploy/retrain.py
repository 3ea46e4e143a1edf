"""Retraining a trial's configuration into a model folder, with the same ``TrainingRun`` a trial uses.

``on="train"`` trains on the training split, so validation judges the result:
with the trial's own epoch count the model is the trial's best epoch, to the
bit. ``on="all"`` trains on training plus validation images, for the final
model. Each epoch is checkpointed in a work folder beside the model folder, so
a crashed run continues from its last finished epoch.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lrtune import config as config_mod
from lrtune.deploy.files import replace_folder, temporary_sibling
from lrtune.deploy.modelfolder import save_model_folder
from lrtune.deploy.spec import TrialSpec, versions
from lrtune.errors import ConfigError, StudyError
from lrtune.formatting import format_metric
from lrtune.progress import ProgressSink
from lrtune.training import checkpoints
from lrtune.training.loop import Diverged, amp_policy, resolve_device
from lrtune.training.run import TrainingData, TrainingRun, check_parts, load_training_data, thread_guard
from lrtune.training.threads import kept_threads

SPLITS = ("train", "all")


@dataclass(frozen=True)
class TrainedModel:
    """Where the model folder is, and how its training went."""

    folder: Path
    epochs: int
    on: str
    value: float | None  # the last epoch's validation value of the study's metric; None when trained on all images
    trial_value: float | None  # the trial's own best value, to compare with
    resumed_at_epoch: int | None
    metric: str = "macro_f1"  # the study's metric


def retrain(
    spec: TrialSpec,
    *,
    folder: Path,
    on: str = "train",
    epochs: int | None = None,
    device: str | None = None,
    progress: ProgressSink | None = None,
) -> TrainedModel:
    """Train ``spec``'s parameters from its seed for its best epoch count (or ``epochs``) into ``folder``."""
    if on not in SPLITS:
        raise ConfigError(f"unknown --on {on!r} (valid: {', '.join(SPLITS)})")
    if epochs is not None and epochs <= 0:
        raise ConfigError(f"--epochs must be positive, got {epochs}")
    cfg = spec.config
    if epochs is not None:
        cfg = dataclasses.replace(cfg, epochs=epochs)  # the user's epochs are the schedule's horizon too
    if device:
        cfg = dataclasses.replace(cfg, device=device)
    config_mod.validate(cfg)
    n_epochs = epochs or min(spec.best_epoch, cfg.epochs)
    amp = amp_policy(resolve_device(cfg.device), cfg.amp)
    data = load_training_data(cfg, progress=progress)
    check_parts(cfg, data)
    if on == "all":
        data = TrainingData(data.imageset, np.sort(np.r_[data.train_idx, data.val_idx]), np.empty(0, np.int64))
    with kept_threads():
        say = progress.message if progress is not None else None
        threads = thread_guard(cfg, spec.params, data=data, amp=amp, say=say)
        run = TrainingRun(cfg, spec.params, data=data, amp=amp, seed=spec.seed, threads=threads)
        return _train(run, spec, folder, on=on, n_epochs=n_epochs, epochs=epochs, progress=progress)


def _train(run: TrainingRun, spec: TrialSpec, folder: Path, *, on: str, n_epochs: int, epochs: int | None,
           progress: ProgressSink | None) -> TrainedModel:
    """Train ``run`` to ``n_epochs`` from where its work folder left it, then write the model folder."""
    cfg = run.cfg
    if on == "all" and epochs is None:
        run.replayed_metrics = list(spec.val_curve)
    work = folder.with_name(f".{folder.name}.work")
    resumed = _resume(run, work, _identity(spec, on, n_epochs, cfg.epochs), progress)
    value = None
    for epoch in range(run.state.epoch + 1, n_epochs + 1):
        try:
            outcome = run.train_epoch(epoch)
        except Diverged as exc:
            raise StudyError(f"retraining trial {spec.trial} diverged: {exc}") from None
        value = outcome.value if on == "train" else None
        if epoch < n_epochs:
            checkpoints.save(work / checkpoints.LAST, run.checkpoint(checkpoints.pack(run.model.state_dict())))
        if progress is not None:
            val = ("no validation (trained on all images)" if on == "all"
                   else f"{config_mod.metric_label(cfg.metric)} {format_metric(outcome.value)}")
            loss = run.state.curves["train_loss"][-1]
            progress.message(f"epoch {epoch}/{n_epochs}: train loss {loss:.4f}, {val}")
    _write_folder(run, spec, folder, on=on, epochs=n_epochs, value=value)
    shutil.rmtree(work, ignore_errors=True)
    return TrainedModel(folder, n_epochs, on, value, spec.value, resumed, cfg.metric)


def _identity(spec: TrialSpec, on: str, n_epochs: int, horizon: int) -> dict:
    """What a checkpoint in the work folder must match to be continued."""
    return {
        "study": spec.study,
        "trial": spec.trial,
        "seed": spec.seed,
        "params": spec.params.to_dict(),
        "on": on,
        "epochs": n_epochs,
        "horizon": horizon,
        "config": config_mod.fingerprint(spec.config),
    }


def _resume(run: TrainingRun, work: Path, identity: dict, progress: ProgressSink | None) -> int | None:
    """Continue from the work folder's checkpoint when it belongs to this very run; else start it afresh."""
    stamp = work / "run.json"
    last = work / checkpoints.LAST
    if last.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == identity:
        run.restore(checkpoints.load(last, run.amp.device))
        if progress is not None:
            progress.message(f"continuing from epoch {run.state.epoch + 1} (checkpoint {last})")
        return run.state.epoch + 1
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    stamp.write_text(json.dumps(identity))
    return None


def _write_folder(run: TrainingRun, spec: TrialSpec, folder: Path, *, on: str, epochs: int, value: float | None) -> None:
    """The model folder, built under a temporary name and renamed into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(folder)
    tmp.mkdir()
    try:
        training = {
            "study": spec.study,
            "trial": spec.trial,
            "trial_value": spec.value,
            "trial_best_epoch": spec.best_epoch,
            "on": on,
            "epochs": epochs,
            "n_images": int(len(run.data.train_idx)),
            "metric": run.cfg.metric,
            "val_value": value,
            "seed": spec.seed,
            "params": spec.params.to_dict(),
            "config": config_mod.to_dict(run.cfg),
            "dataset": spec.data_summary,
            "versions": versions(),
        }
        classes = list(run.data.imageset.classes)
        curves = {k: [None if v != v else v for v in vs] for k, vs in run.state.curves.items()}  # NaN: no validation
        curves["lr_steps"] = run.state.lr_steps
        save_model_folder(
            tmp, run.model, classes=classes, image_size=run.data.image_size, training=training, curves=curves,
            architecture=run.cfg.model,
        )
        replace_folder(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
