"""One epoch of training and one pass of evaluation. Knows nothing of Optuna."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from torch import nn

from lrtune.data import to_model_input
from lrtune.errors import LRTuneError
from lrtune.schedules import Schedule, set_lr


class Diverged(Exception):
    """The training loss became non-finite."""


class Interrupted(Exception):
    """A stop was requested (Ctrl-C or SIGTERM) in the middle of an epoch."""


@dataclass
class Precision:
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
        raise LRTuneError(f"unknown device {name!r} (valid: auto, cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise LRTuneError(f"device {name!r} asked for, but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise LRTuneError(f"device {name!r} asked for, but only {torch.cuda.device_count()} CUDA devices exist")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise LRTuneError(f"device {name!r} asked for, but MPS is not available here")
    elif device.type != "cpu":
        raise LRTuneError(f"unknown device {name!r} (valid: auto, cpu, cuda, cuda:N, mps)")
    return device


def precision_for(device: torch.device, amp: bool) -> Precision:
    """bf16 autocast where the GPU supports it, else fp16 with a GradScaler; channels_last on CUDA."""
    if device.type != "cuda":
        return Precision(device)
    dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if amp else None
    return Precision(device, amp_dtype=dtype, channels_last=True)


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
    precision: Precision,
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
    device = precision.device
    loss_sum = torch.zeros((), device=device)
    n_seen = 0
    lrs: list[float] = []
    optimizer.zero_grad(set_to_none=True)
    for i, (images, targets) in enumerate(loader):
        if should_stop is not None and should_stop():
            raise Interrupted
        group_start = i - i % accum_steps
        group_size = min(accum_steps, n_batches - group_start)
        x = to_model_input(images, device, channels_last=precision.channels_last)
        y = targets.to(device, non_blocking=True)
        with precision.autocast():
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


@dataclass
class Evaluation:
    loss: float
    macro_f1: float
    accuracy: float
    precision: list[float]
    recall: list[float]
    f1: list[float]
    support: list[int]
    targets: np.ndarray
    preds: np.ndarray

    def summary(self, epoch: int) -> dict:
        """JSON-safe record of this evaluation, for trial attributes.

        Without the confusion matrix: a trial keeps that only for its best
        epoch, computed once with ``confusion`` when the trial ends.
        """
        return {
            "epoch": epoch,
            "loss": self.loss,
            "macro_f1": self.macro_f1,
            "accuracy": self.accuracy,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "support": self.support,
        }


def confusion(targets: np.ndarray | list[int], preds: np.ndarray | list[int], n_classes: int) -> list[list[int]]:
    """The confusion matrix (rows: true class, columns: predicted), from scikit-learn."""
    return confusion_matrix(targets, preds, labels=list(range(n_classes))).tolist()


def metrics(targets: np.ndarray, preds: np.ndarray, n_classes: int, loss: float = float("nan")) -> Evaluation:
    """Macro-F1, accuracy and per-class scores, from scikit-learn."""
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, preds, labels=list(range(n_classes)), zero_division=0
    )
    return Evaluation(
        loss=loss,
        macro_f1=float(np.mean(f1)),
        accuracy=float(np.mean(targets == preds)) if len(targets) else 0.0,
        precision=[round(float(v), 6) for v in precision],
        recall=[round(float(v), 6) for v in recall],
        f1=[round(float(v), 6) for v in f1],
        support=[int(v) for v in support],
        targets=targets,
        preds=preds,
    )


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    n_classes: int,
    precision: Precision,
) -> Evaluation:
    """Validation loss (cross-entropy, comparable across trials whatever their loss) and metrics."""
    model.eval()
    device = precision.device
    loss_sum = torch.zeros((), device=device)
    preds, targets = [], []
    for images, labels in batches:
        x = to_model_input(images, device, channels_last=precision.channels_last)
        y = labels.to(device, non_blocking=True)
        with precision.autocast():
            logits = model(x)
        loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
        preds.append(logits.argmax(dim=1))
        targets.append(y)
    y_true = torch.cat(targets).cpu().numpy()
    y_pred = torch.cat(preds).cpu().numpy()
    return metrics(y_true, y_pred, n_classes, loss=loss_sum.item() / max(len(y_true), 1))
