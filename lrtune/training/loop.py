"""One epoch of training and one pass of evaluation, on a device with its AMP policy. Knows nothing of Optuna."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Collection, Iterable

import torch
from torch import nn

from lrtune.errors import ConfigError
from lrtune.training.loaders import to_model_input
from lrtune.training.metrics import Evaluation, metrics
from lrtune.training.schedules import Schedule, set_lr


class Diverged(Exception):
    """The training loss became non-finite."""


class Interrupted(Exception):
    """A stop was requested (Ctrl-C or SIGTERM) in the middle of an epoch."""


@dataclass
class AmpPolicy:
    """How a device runs: autocast dtype (None: full precision), scaler, memory format."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision where it is on; no context at all where it is off (it costs per batch)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def scaler(self) -> torch.amp.GradScaler | None:
        if self.amp_dtype == torch.float16:
            return torch.amp.GradScaler(self.device.type)
        return None


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r} (valid: auto, cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} asked for, but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r} asked for, but only {torch.cuda.device_count()} CUDA devices exist")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise ConfigError(f"device {name!r} asked for, but MPS is not available here")
    elif device.type != "cpu":
        raise ConfigError(f"unknown device {name!r} (valid: auto, cpu, cuda, cuda:N, mps)")
    return device


def amp_policy(device: torch.device, amp: bool) -> AmpPolicy:
    """bf16 autocast where the GPU supports it, else fp16 with a GradScaler; channels_last on CUDA."""
    if device.type != "cuda":
        return AmpPolicy(device)
    dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if amp else None
    return AmpPolicy(device, amp_dtype=dtype, channels_last=True)


@dataclass
class EpochResult:
    train_loss: float
    step: int  # the global optimizer step count after this epoch
    lrs: list[float]  # the LR of each optimizer step taken in this epoch
    images: int = 0  # images trained on


@dataclass
class Learner:
    """What one model of a step learns with: its optimizer, schedule, loss, accumulation and AMP scaler, and the
    global optimizer step it is at. A solo run has one; a fused group (``training.fused``) one per slot."""

    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    schedule: Schedule
    step: int
    accum_steps: int
    scaler: torch.amp.GradScaler | None = None


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    *,
    schedule: Schedule,
    step: int,
    accum_steps: int,
    amp: AmpPolicy,
    scaler: torch.amp.GradScaler | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> EpochResult:
    """Train one model for one pass over ``loader`` (``train_together`` with one learner); raises ``Diverged``
    on a non-finite loss."""
    (result,) = train_together(model, loader, [Learner(optimizer, loss_fn, schedule, step, accum_steps, scaler)],
                               amp=amp, should_stop=should_stop)
    if not math.isfinite(result.train_loss):
        raise Diverged(f"non-finite train loss ({result.train_loss})")
    return result


def train_together(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    learners: list[Learner],
    *,
    amp: AmpPolicy,
    should_stop: Callable[[], bool] | None = None,
    on_batch: Callable[[int, int, int], None] | None = None,
) -> list[EpochResult]:
    """Train for one pass over ``loader``, each learner accumulating gradients over its own ``accum_steps``;
    ``on_batch(batches done, batches in the pass, images done)`` after each micro-batch.

    ``model`` gives ``[batch, classes]`` logits for one learner, or ``[K, batch, classes]`` for K (a fused
    group: K models on the same batch, whose gradients never mix). Each learner's optimizer steps on its own
    accumulation boundaries and once more at the end of the epoch for a partial group, so no gradient is
    dropped. Each micro-batch loss is divided by the size of its group, so k micro-batches of size b give the
    same update as one batch of k*b. A learner's non-finite loss is its own: the caller reads it from its result.
    """
    model.train()
    n_batches = len(loader)  # type: ignore[arg-type]
    device = amp.device
    loss_sums = torch.zeros(len(learners), device=device)
    n_seen = 0
    lrs: list[list[float]] = [[] for _ in learners]
    steps = [learner.step for learner in learners]
    for learner in learners:
        learner.optimizer.zero_grad(set_to_none=True)
    for i, (images, targets) in enumerate(loader):
        if should_stop is not None and should_stop():
            raise Interrupted
        x = to_model_input(images, device, channels_last=amp.channels_last)
        y = targets.to(device, non_blocking=True)
        total = None
        with amp.autocast():
            logits = model(x)
            outputs = logits if logits.dim() == 3 else [logits]  # a fused group's, or one model's
            for j, learner in enumerate(learners):
                loss = learner.loss_fn(outputs[j], y)
                group_size = min(learner.accum_steps, n_batches - (i - i % learner.accum_steps))
                scaled = loss / group_size if group_size > 1 else loss
                scaled = learner.scaler.scale(scaled) if learner.scaler is not None else scaled
                total = scaled if total is None else total + scaled
                loss_sums[j].add_(loss.detach(), alpha=len(y))
        total.backward()
        n_seen += len(y)
        if on_batch is not None:
            on_batch(i + 1, n_batches, n_seen)
        for j, learner in enumerate(learners):
            group_start = i - i % learner.accum_steps
            if i + 1 - group_start == min(learner.accum_steps, n_batches - group_start):
                lrs[j].append(_step(learner, steps[j]))
                steps[j] += 1
    # The epoch's one CPU-GPU sync point.
    losses = (loss_sums / max(n_seen, 1)).tolist()
    return [EpochResult(train_loss=losses[j], step=steps[j], lrs=lrs[j], images=n_seen) for j in range(len(learners))]


def _step(learner: Learner, step: int) -> float:
    """One optimizer step of ``learner`` at its schedule's LR for global step ``step``; returns that LR."""
    lr = learner.schedule.lr(step)
    set_lr(learner.optimizer, lr, step)
    if learner.scaler is not None:
        learner.scaler.step(learner.optimizer)
        learner.scaler.update()
    else:
        learner.optimizer.step()
    learner.optimizer.zero_grad(set_to_none=True)
    return lr


def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    n_classes: int,
    amp: AmpPolicy,
) -> Evaluation:
    """Validation loss (cross-entropy, comparable across trials whatever their loss) and every metric.

    Predictions and probabilities stay on the device until the pass ends: one copy to the host per pass.
    """
    (ev,) = evaluate_together(model, batches, n_classes=n_classes, amp=amp, slots=1)
    assert ev is not None
    return ev


@torch.inference_mode()
def evaluate_together(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    n_classes: int,
    amp: AmpPolicy,
    slots: int,
    only: Collection[int] | None = None,
) -> list[Evaluation | None]:
    """``evaluate`` for a model of ``slots`` outputs (``[slots, batch, classes]``; one: ``[batch, classes]``).

    The metrics of the slots in ``only`` (default: all), None for the others (a diverged slot's outputs are
    not numbers to score).
    """
    model.eval()
    device = amp.device
    loss_sums = torch.zeros(slots, device=device)
    probs, targets = [], []
    for images, labels in batches:
        x = to_model_input(images, device, channels_last=amp.channels_last)
        y = labels.to(device, non_blocking=True)
        with amp.autocast():
            logits = model(x)
        logits = (logits if logits.dim() == 3 else logits.unsqueeze(0)).float()
        for k in range(slots):
            loss_sums[k] += nn.functional.cross_entropy(logits[k], y, reduction="sum")
        probs.append(torch.softmax(logits, dim=2))
        targets.append(y)
    p = torch.cat(probs, dim=1).cpu().numpy()
    y_true = torch.cat(targets).cpu().numpy()
    losses = (loss_sums / max(len(y_true), 1)).tolist()
    wanted = set(range(slots) if only is None else only)
    return [metrics(y_true, p[k].argmax(axis=1), n_classes, loss=losses[k], probs=p[k]) if k in wanted else None
            for k in range(slots)]
