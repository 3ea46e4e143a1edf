"""One epoch of training and one pass of evaluation, on a device with its AMP policy. Knows nothing of Optuna."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterable

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
    """Train for one pass over ``loader``, accumulating gradients over ``accum_steps`` micro-batches.

    The optimizer steps on every accumulation boundary and once more at the end
    of the epoch for a partial group, so no gradient is dropped. Each micro-batch
    loss is divided by the size of its group, so k micro-batches of size b give
    the same update as one batch of k*b.
    """
    model.train()
    n_batches = len(loader)  # type: ignore[arg-type]
    device = amp.device
    loss_sum = torch.zeros((), device=device)
    n_seen = 0
    lrs: list[float] = []
    optimizer.zero_grad(set_to_none=True)
    for i, (images, targets) in enumerate(loader):
        if should_stop is not None and should_stop():
            raise Interrupted
        group_start = i - i % accum_steps
        group_size = min(accum_steps, n_batches - group_start)
        x = to_model_input(images, device, channels_last=amp.channels_last)
        y = targets.to(device, non_blocking=True)
        with amp.autocast():
            loss = loss_fn(model(x), y)
        scaled = loss / group_size if group_size > 1 else loss
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
        loss_sum.add_(loss.detach(), alpha=len(y))
        n_seen += len(y)
        if i + 1 - group_start == group_size:
            lr = schedule.lr(step)
            set_lr(optimizer, lr)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            lrs.append(lr)
            step += 1
    # The epoch's one CPU-GPU sync point.
    train_loss = (loss_sum / max(n_seen, 1)).item()
    if not math.isfinite(train_loss):
        raise Diverged(f"non-finite train loss ({train_loss})")
    return EpochResult(train_loss=train_loss, step=step, lrs=lrs, images=n_seen)


@torch.inference_mode()
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
    model.eval()
    device = amp.device
    loss_sum = torch.zeros((), device=device)
    probs, targets = [], []
    for images, labels in batches:
        x = to_model_input(images, device, channels_last=amp.channels_last)
        y = labels.to(device, non_blocking=True)
        with amp.autocast():
            logits = model(x)
        logits = logits.float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum")
        probs.append(torch.softmax(logits, dim=1))
        targets.append(y)
    p = torch.cat(probs).cpu().numpy()
    y_true = torch.cat(targets).cpu().numpy()
    return metrics(y_true, p.argmax(axis=1), n_classes, loss=loss_sum.item() / max(len(y_true), 1), probs=p)
