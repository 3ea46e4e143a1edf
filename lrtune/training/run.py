"""One training run: a config and its hyperparameters, trained epoch by epoch. Knows nothing of Optuna.

The same run serves a search's trials and ``lrtune train``. Every epoch starts
from a seed made of the run's seed and the epoch number, so a run restored from
its checkpoint computes exactly what an uninterrupted one would.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from lrtune.config import CURVE_KEYS, Config, effective_hflip, effective_image_size
from lrtune.errors import ConfigError, DataError
from lrtune.progress import ProgressSink
from lrtune.training import checkpoints, memory
from lrtune.training.datasets import ImageSet, class_counts, load_imageset, split_indices
from lrtune.training.device_augment import choose_augment, make_device_loader
from lrtune.training.loaders import EpochBatches, iter_eval_batches, make_train_loader, to_model_input
from lrtune.training.loop import AmpPolicy, Diverged, EpochResult, Learner, evaluate, train_together
from lrtune.training.metrics import Evaluation
from lrtune.training.losses import check_losses, create_loss
from lrtune.training.models import check_model, compile_model, create_model
from lrtune.training.references import OBJECT, resolve, short_name
from lrtune.training.user_data import DatasetLoader, UserSets, dataset_eval_batches
from lrtune.training.optimizer import LR_FREE, create_optimizer, for_evaluation, for_training, param_groups, train_body
from lrtune.training.probe import probe_threads
from lrtune.training.schedules import create_schedule
from lrtune.training.threads import ThreadGuard, apply_threads, choose_threads

EVAL_BATCH = 256


@dataclass(frozen=True)
class Hyperparams:
    """What a search tunes: the LR, the scheduler and loss with their parameters, accumulation.

    ``optimizer`` names an LR-free baseline (``optimizer.LR_FREE``), whose
    recipe then sets the LR and schedule; empty, the config's optimizer.
    """

    lr: float
    scheduler: str
    loss: str
    accum: int
    step_size: int = 1
    step_gamma: float = 0.1
    plateau_factor: float = 0.1
    plateau_patience: int = 2
    focal_gamma: float = 2.0
    smoothing: float = 0.1
    optimizer: str = ""
    # A fine-tune's: the body's LR as a share of the head's, or decayed per layer group from the head down;
    # warmup epochs (negative: the config's); epochs training the head alone before the body joins.
    body_ratio: float = 1.0
    layer_decay: float = 1.0
    warmup_epochs: float = -1.0
    head_epochs: int = 0
    # A user's loss's own parameters (``losses.loss_space``), as sorted (name, value) pairs.
    loss_options: tuple[tuple[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The parameters, without an empty optimizer and without the fine-tune ones at their defaults; a user's
        loss's parameters as ``<loss>.<parameter>``, as the trial names them."""
        values = asdict(self)
        values.pop("loss_options")
        defaults = {f.name: f.default for f in fields(self) if f.name in FINETUNE or f.name == "optimizer"}
        kept = {k: v for k, v in values.items() if k not in defaults or v != defaults[k]}
        return {**kept, **{f"{short_name(self.loss)}.{k}": v for k, v in self.loss_options}}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Hyperparams":
        """From a trial's parameters: the names this class knows, the defaults for the rest.

        An LR-free baseline's parameters are its optimizer alone: its recipe fills in the rest.
        """
        known = {f.name for f in fields(cls)} - {"loss_options"}
        recipe = LR_FREE.get(str(values.get("optimizer", "")))
        base = {"lr": recipe.lr, "scheduler": recipe.scheduler, "loss": "ce", "accum": 1} if recipe else {}
        prefix = f"{short_name(str(values.get('loss', '')))}."
        options = tuple(sorted((k[len(prefix):], v) for k, v in values.items() if k.startswith(prefix)))
        return cls(**{**base, **{k: v for k, v in values.items() if k in known}}, loss_options=options)


FINETUNE = ("body_ratio", "layer_decay", "warmup_epochs", "head_epochs")


@dataclass
class TrainingData:
    """A dataset and its split into training, validation and (optionally) test indices: lrtune's own images
    (an ``ImageSet``), or the user's datasets (``UserSets``, already split)."""

    imageset: ImageSet | UserSets
    train_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # held out from every trial

    @property
    def n_classes(self) -> int:
        return len(self.imageset.classes)

    @property
    def own_images(self) -> bool:
        """lrtune's decoded images, which it augments; else the user's datasets, which augment themselves."""
        return isinstance(self.imageset, ImageSet)

    @property
    def image_size(self) -> int:
        if isinstance(self.imageset, ImageSet):
            return int(self.imageset.images.shape[1])
        return self.imageset.image_size

    @property
    def val_targets(self) -> np.ndarray:
        """Validation labels, in the order ``evaluate`` sees them."""
        return self.imageset.labels[self.val_idx]

    def eval_batches(self, idx: np.ndarray, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The images at ``idx`` in order, un-augmented, and their labels."""
        if isinstance(self.imageset, ImageSet):
            return iter_eval_batches(self.imageset, idx, batch_size)
        return dataset_eval_batches(self.imageset, idx, batch_size)

    def summary(self) -> dict[str, Any]:
        """JSON-safe: name, classes, split sizes and counts, image size, skipped files."""
        n, labels = self.n_classes, self.imageset.labels
        return {
            "name": self.imageset.name,
            "classes": list(self.imageset.classes),
            "n_train": int(len(self.train_idx)),
            "n_val": int(len(self.val_idx)),
            "train_counts": class_counts(labels[self.train_idx], n).tolist(),
            "val_counts": class_counts(labels[self.val_idx], n).tolist(),
            "image_size": self.image_size,
            "skipped": list(self.imageset.skipped),
            # Only with a test split, so a study made without one compares equal.
            **({"n_test": int(len(self.test_idx)), "test_counts": class_counts(labels[self.test_idx], n).tolist()}
               if len(self.test_idx) else {}),
        }


TEST_SEED = 7919  # the test split is drawn apart from validation's


def load_training_data(cfg: Config, *, progress: ProgressSink | None = None) -> TrainingData:
    if cfg.data.startswith(OBJECT):  # the user's datasets, given to the API, split as given
        sets = resolve(cfg.data, kind="data", error=DataError)
        return TrainingData(sets, sets.split(0), sets.split(1), sets.split(2))
    imageset = load_imageset(
        cfg.data,
        image_size=effective_image_size(cfg),
        data_root=cfg.data_root,
        cache=cfg.cache,
        cache_dir=f"{cfg.studies_dir}/cache",
        skip_bad_images=cfg.skip_bad_images,
        shared=cfg.workers != 1,  # local workers (or auto) map one decode instead of each decoding the files
        progress=progress,
    )
    say = progress.message if progress is not None else None
    if not cfg.test_fraction:
        train_idx, val_idx = split_indices(imageset, val_fraction=cfg.val_fraction, seed=cfg.seed, say=say)
        return TrainingData(imageset, train_idx, val_idx)
    rest, test_idx = split_indices(imageset, val_fraction=cfg.test_fraction, seed=cfg.seed + TEST_SEED, part="test",
                                   say=say)
    # Validation keeps its share of all images.
    share = cfg.val_fraction / (1 - cfg.test_fraction)
    train_idx, val_idx = split_indices(imageset, val_fraction=share, seed=cfg.seed, among=rest, say=say)
    return TrainingData(imageset, train_idx, val_idx, test_idx)


PROBE_IMAGES = 4


def check_parts(cfg: Config, data: TrainingData) -> int:
    """Before the first trial: the model builds and maps a probe batch of training images to
    ``[batch, classes]`` logits, and every user's loss gives a finite scalar on them (``ModelError`` or
    ``ConfigError`` naming the culprit otherwise); the bytes of the model's weights and buffers."""
    idx = data.train_idx[:PROBE_IMAGES]
    images, labels = next(data.eval_batches(idx, len(idx)))
    size, logits = check_model(cfg.model, num_classes=data.n_classes, pretrained=cfg.pretrained, weights=cfg.weights,
                               probe=to_model_input(images, "cpu"))
    assert logits is not None
    check_losses(list(cfg.losses), logits, labels)
    return size


def augment_path(cfg: Config, data: TrainingData, device: torch.device) -> str:
    """``cpu`` or ``device``: where this run augments, from ``cfg.augment`` and the device's free memory;
    ``dataset`` for the user's datasets, which augment themselves."""
    if not data.own_images:
        if cfg.augment != "auto":
            raise ConfigError(f"--augment {cfg.augment} augments lrtune's own images; your datasets augment "
                              "themselves: leave it at auto")
        return "dataset"
    free = memory.free_bytes(device) if cfg.augment == "auto" else None  # a cache already there counts as free
    return choose_augment(cfg.augment, device_type=device.type, cache_bytes=data.imageset.images.nbytes, free_bytes=free)


def make_loader(cfg: Config, data: TrainingData, device: torch.device, path: str) -> EpochBatches:
    """Training batches augmented on the CPU by albumentations, or on ``device`` from a cache there."""
    common = dict(
        batch_size=cfg.batch_size,
        balance=cfg.balance,
        hflip=effective_hflip(cfg),
        affine=cfg.affine,
        color=cfg.color,
        crop=cfg.crop,
        rare_affine=cfg.rare_affine,
    )
    if path == "dataset":
        return DatasetLoader(data.imageset, data.train_idx, batch_size=cfg.batch_size, balance=cfg.balance,
                             pin_memory=device.type == "cuda")
    if path == "device":
        return make_device_loader(data.imageset, data.train_idx, device=device, **common)
    return make_train_loader(
        data.imageset, data.train_idx, num_workers=cfg.num_workers, pin_memory=device.type == "cuda", **common
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(run_seed: int, epoch: int) -> int:
    """Every epoch starts from its own seed, so a resumed run replays exactly."""
    return run_seed * 1000 + epoch


def thread_guard(
    cfg: Config, params: Hyperparams, *, data: TrainingData, amp: AmpPolicy, workers: int = 1,
    say: Callable[[str], None] | None = None, probe: bool = True,
) -> ThreadGuard:
    """This process's CPU threads for runs like ``params``'s: ``cfg.threads``, or chosen (``threads.choose_threads``)
    by a short probe of such a run's step (without ``probe``, the process's share of the cores); set, and when
    chosen, said in one line through ``say``."""
    loader_workers = cfg.num_workers if augment_path(cfg, data, amp.device) == "cpu" else 0
    probe_cfg = dataclasses.replace(cfg, num_workers=0)  # the loader's processes are not what is measured

    def measure(counts: list[int]) -> dict[int, float]:
        return probe_threads(TrainingRun(probe_cfg, params, data=data, amp=amp, seed=cfg.seed), counts,
                             apply=apply_threads)

    choice = choose_threads(cfg.threads, workers=max(1, workers), loader_workers=loader_workers,
                            device_type=amp.device.type, measure=measure if probe else None)
    if say is not None and not cfg.threads:  # a count the user set goes unsaid
        say(f"threads: {choice.threads} ({choice.reason})")
    guard = ThreadGuard(choice.threads, say=say, fixed=cfg.threads > 0 or amp.device.type != "cpu",
                        budget=choice.budget)
    guard.start()
    return guard


@dataclass
class RunState:
    """What a run has done so far; saved at the end of every epoch."""

    epoch: int = 0
    step: int = 0
    best_value: float = -1.0  # the best epoch's value of the run's metric (``cfg.metric``)
    best: dict[str, Any] = field(default_factory=dict)  # the best epoch's metrics, without its confusion matrix
    best_preds: list[int] = field(default_factory=list)  # the best epoch's predictions, for that matrix
    curves: dict[str, list[float]] = field(
        default_factory=lambda: {k: [] for k in ("epoch", "train_loss", "val_loss", *CURVE_KEYS.values(), "lr")}
    )
    lr_steps: list[list[float]] = field(default_factory=list)
    train_seconds: float = 0.0
    train_images: int = 0
    best_saved: bool = False  # the best epoch's weights are on disk

    @property
    def images_per_s(self) -> float:
        return round(self.train_images / max(self.train_seconds, 1e-9), 1)


@dataclass(frozen=True)
class EpochOutcome:
    epoch: int
    value: float  # the validation value of the run's metric
    improved: bool  # the best epoch so far


class TrainingRun:
    """Model, loader, optimizer, schedule, loss and AMP scaler of one run, and its state.

    ``should_stop`` is asked between micro-batches; when it says yes the epoch
    raises ``Interrupted`` and the last checkpoint stays the place to resume.
    """

    def __init__(
        self,
        cfg: Config,
        params: Hyperparams,
        *,
        data: TrainingData,
        amp: AmpPolicy,
        seed: int,
        should_stop: Callable[[], bool] | None = None,
        threads: ThreadGuard | None = None,
    ) -> None:
        self.cfg, self.params, self.data, self.amp, self.seed = cfg, params, data, amp, seed
        self.should_stop, self.threads = should_stop, threads
        self.group: Any = None  # a ``fused.FusedGroup`` this run trains in, one pass with the others per epoch
        self.sharing = 1  # the runs its last epoch's pass trained: its share of that time is 1 / sharing
        self.on_batch: Callable[[int, int, int], None] | None = None  # hears each micro-batch of an epoch
        seed_everything(seed)
        self.model = create_model(cfg.model, num_classes=data.n_classes, pretrained=cfg.pretrained, weights=cfg.weights)
        memory_format = torch.channels_last if amp.channels_last else torch.preserve_format
        self.model.to(amp.device, memory_format=memory_format)
        # What trains: the model itself, or its compiled wrapper (same parameters, same state_dict).
        self.net = compile_model(self.model, cfg.compile_mode) if cfg.compile else self.model
        self.augment = augment_path(cfg, data, amp.device)
        self.loader = make_loader(cfg, data, amp.device, self.augment)
        steps_per_epoch = max(1, math.ceil(len(self.loader) / params.accum))
        warmup_steps = round((cfg.warmup_epochs if params.warmup_epochs < 0 else params.warmup_epochs) * steps_per_epoch)
        groups = param_groups(self.model, body_ratio=params.body_ratio, layer_decay=params.layer_decay,
                              joins_at=params.head_epochs * steps_per_epoch, ramp=warmup_steps)
        self.optimizer = create_optimizer(
            self.model, name=params.optimizer or cfg.optimizer, lr=params.lr, weight_decay=cfg.weight_decay,
            momentum=cfg.momentum, total_steps=steps_per_epoch * cfg.epochs, groups=groups,
        )
        self.lr_scales = [group["lr_scale"] for group in groups or []]  # the LR's share, from the first layers to the head
        self.schedule = create_schedule(
            params.scheduler, base_lr=params.lr, steps_per_epoch=steps_per_epoch, epochs=cfg.epochs,
            warmup_steps=warmup_steps, step_size=params.step_size, step_gamma=params.step_gamma,
            factor=params.plateau_factor, patience=params.plateau_patience,
        )
        self.loss_fn = create_loss(params.loss, focal_gamma=params.focal_gamma, smoothing=params.smoothing,
                                   options=dict(params.loss_options))
        self.scaler = amp.scaler()
        self.state = RunState()
        # Without validation images, the validation value (of the run's metric) of each epoch that the
        # schedule (plateau) steps on: a retrain on all data replays its trial's.
        self.replayed_metrics: list[float] = []

    def restore(self, saved: dict[str, Any]) -> None:
        """Continue from a checkpoint written by ``checkpoint``."""
        self.model.load_state_dict(checkpoints.unpack(saved["model"]))
        self.optimizer.load_state_dict(checkpoints.unpack(saved["optimizer"]))
        self.schedule.load_state_dict(saved["schedule"])
        if self.scaler is not None and saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        self.state = RunState(**saved["run"])

    def checkpoint(self, packed_model: dict[str, Any]) -> dict[str, Any]:
        """The end-of-epoch state, as copies that training may go on changing beside."""
        return {
            "model": packed_model,
            "optimizer": checkpoints.pack(self.optimizer.state_dict()),
            "schedule": copy.deepcopy(self.schedule.state_dict()),
            "scaler": copy.deepcopy(self.scaler.state_dict()) if self.scaler is not None else {},
            "run": copy.deepcopy(self.state.__dict__),
        }

    def train_epoch(self, epoch: int) -> EpochOutcome:
        """Train and validate one epoch, and record it; raises ``Diverged`` on a runaway loss."""
        if self.group is not None:
            return self.group.train_epoch(self, epoch)
        self.start_pass(epoch_seed(self.seed, epoch))
        started = time.perf_counter()
        (result,) = train_together(self.net, self.loader, [self.learner()], amp=self.amp, should_stop=self.should_stop,
                                   on_batch=self.on_batch)
        seconds = time.perf_counter() - started
        if self.threads is not None:
            self.threads.observe(result.images, seconds)
        self.check_loss(epoch, result)
        # Schedule-Free evaluates, checkpoints and keeps its averaged weights from here to the next epoch.
        for_evaluation(self.optimizer, self.model, self.loader,
                       lambda images: to_model_input(images, self.amp.device, channels_last=self.amp.channels_last))
        return self.record_epoch(epoch, result, seconds, self._validate())

    def start_pass(self, seed: int) -> None:
        """Seed everything and this run's batches from ``seed`` (a fused group's pass seeds its own loader)."""
        seed_everything(seed)
        self.loader.reseed(seed)
        for_training(self.optimizer)
        if self.params.head_epochs:  # the head alone for its first epochs, then the body joins
            train_body(self.model, self.state.epoch >= self.params.head_epochs)

    def learner(self) -> Learner:
        """What this run's model learns with, at the step the run is at."""
        return Learner(self.optimizer, self.loss_fn, self.schedule, self.state.step, self.params.accum, self.scaler)

    def check_loss(self, epoch: int, result: EpochResult) -> None:
        """Raise ``Diverged`` on a non-finite epoch loss, or one over ``diverge_factor`` times the run's best."""
        if not math.isfinite(result.train_loss):
            raise Diverged(f"non-finite train loss ({result.train_loss})")
        previous = self.state.curves["train_loss"]
        if previous and result.train_loss > self.cfg.diverge_factor * min(previous):
            raise Diverged(
                f"train loss {result.train_loss:.4g} at epoch {epoch} is over "
                f"{self.cfg.diverge_factor:g}x its best ({min(previous):.4g})"
            )

    def record_epoch(self, epoch: int, result: EpochResult, seconds: float, ev: Evaluation | None) -> EpochOutcome:
        """Step the schedule on the epoch's validation value and record the epoch: curves, LRs, the best epoch."""
        cfg, state = self.cfg, self.state
        state.train_seconds += seconds
        state.train_images += result.images
        if ev is not None:
            self.schedule.epoch_end(ev.value(cfg.metric))
        elif self.replayed_metrics and epoch <= len(self.replayed_metrics):
            self.schedule.epoch_end(self.replayed_metrics[epoch - 1])
        state.lr_steps.extend([[state.step + i, lr] for i, lr in enumerate(result.lrs)])
        state.epoch, state.step = epoch, result.step
        last_lr = result.lrs[-1] if result.lrs else self.schedule.lr(state.step)
        nan = float("nan")
        values = {"train_loss": result.train_loss, "val_loss": ev.loss if ev else nan, "lr": last_lr,
                  **{key: ev.value(name) if ev else nan for name, key in CURVE_KEYS.items()}}
        for key, value in values.items():
            state.curves.setdefault(key, []).append(round(float(value), 8))  # a checkpoint may predate a metric
        state.curves["epoch"].append(epoch)
        if ev is None:
            return EpochOutcome(epoch, nan, False)
        value = ev.value(cfg.metric)
        improved = value > state.best_value
        if improved:
            state.best_value, state.best = value, ev.summary(epoch)
            state.best_preds = ev.preds.tolist()
            state.best_saved = False
        return EpochOutcome(epoch, value, improved)

    def val_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.data.eval_batches(self.data.val_idx, max(self.cfg.batch_size, EVAL_BATCH))

    def _validate(self) -> Evaluation | None:
        """Metrics on the validation images; None when the run has none (trained on all data)."""
        if not len(self.data.val_idx):
            return None
        return evaluate(self.net, self.val_batches(), n_classes=self.data.n_classes, amp=self.amp)
