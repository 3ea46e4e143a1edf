"""Labelling images with a model: decoded as training decodes them, batched, AMP on a GPU, optional flip TTA."""

from __future__ import annotations

import csv
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lrtune.deploy.files import write_atomically
from lrtune.deploy.inputs import Inputs
from lrtune.deploy.modelfolder import LoadedModel
from lrtune.errors import ConfigError, DataError
from lrtune.progress import ProgressSink
from lrtune.training.datasets import decode_image
from lrtune.training.loop import amp_policy
from lrtune.training.metrics import Evaluation, metrics

TTA_MODES = ("none", "hflip")
DECODE_ERRORS = (OSError, ValueError, Image.DecompressionBombError)


@dataclass
class Predictions:
    """Class probabilities of every image that decoded, and the true labels when the input had them."""

    names: list[str]
    classes: list[str]
    probs: np.ndarray  # (N, C) float
    labels: list[str] | None
    skipped: list[str]  # images that could not be decoded (with skip_bad_images)
    metric: str = "macro_f1"  # the model's study's metric: listed first

    @property
    def predicted(self) -> list[str]:
        return [self.classes[k] for k in self.probs.argmax(axis=1)]

    def evaluation(self) -> Evaluation | None:
        """Every metric (ROC-AUC from the probabilities) and per-class scores, when the input had labels."""
        if self.labels is None:
            return None
        index = {name: k for k, name in enumerate(self.classes)}
        targets = np.asarray([index[label] for label in self.labels], np.int64)
        return metrics(targets, self.probs.argmax(axis=1), len(self.classes), probs=self.probs)


def check_labels(inputs: Inputs, classes: list[str]) -> None:
    if inputs.labels is None:
        return
    unknown = sorted(set(inputs.labels) - set(classes))
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise DataError(f"labels {shown} are not classes of the model (its classes: {', '.join(classes)})")


def predict_images(
    loaded: LoadedModel,
    inputs: Inputs,
    *,
    batch_size: int = 64,
    tta: str = "none",
    skip_bad_images: bool = False,
    progress: ProgressSink | None = None,
) -> Predictions:
    """Probabilities for every image of ``inputs``; an image that cannot be decoded is a ``DataError`` unless skipped."""
    if tta not in TTA_MODES:
        raise ConfigError(f"unknown --tta {tta!r} (valid: {', '.join(TTA_MODES)})")
    if batch_size <= 0:
        raise ConfigError(f"--batch-size must be positive, got {batch_size}")
    check_labels(inputs, loaded.classes)
    device = next(loaded.model.parameters()).device
    amp = amp_policy(device, True)
    total, done = len(inputs.files), 0
    kept: list[int] = []
    probs: list[np.ndarray] = []
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 2)) as pool:
        for start in range(0, total, batch_size):
            chunk = list(range(start, min(start + batch_size, total)))
            images = list(pool.map(lambda i: _decode(inputs.files[i], loaded.image_size), chunk))
            for i, image in zip(chunk, images):
                if image is None and not skip_bad_images:
                    raise DataError(
                        f"cannot decode image {inputs.files[i]}; fix or remove it, or pass --skip-bad-images to skip it"
                    )
            good = [(i, image) for i, image in zip(chunk, images) if image is not None]
            if good:
                kept += [i for i, _ in good]
                probs.append(_probabilities(loaded, np.stack([im for _, im in good]), amp, tta))
            done += len(chunk)
            if progress is not None:
                progress.count("predicting", done, total)
    n_classes = len(loaded.classes)
    return Predictions(
        names=[inputs.names[i] for i in kept],
        classes=list(loaded.classes),
        probs=np.concatenate(probs) if probs else np.empty((0, n_classes)),
        labels=None if inputs.labels is None else [inputs.labels[i] for i in kept],
        skipped=[inputs.names[i] for i in sorted(set(range(total)) - set(kept))],
        metric=loaded.metric,
    )


def _decode(path: Path, size: int) -> np.ndarray | None:
    try:
        return decode_image(path, size)
    except DECODE_ERRORS:
        return None


@torch.inference_mode()
def _probabilities(loaded: LoadedModel, images: np.ndarray, amp, tta: str) -> np.ndarray:
    x = loaded.preprocess(images, amp.device)
    if amp.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with amp.autocast():
        p = loaded.model(x).float().softmax(dim=1)
        if tta == "hflip":
            p = (p + loaded.model(x.flip(3)).float().softmax(dim=1)) / 2
    return p.double().cpu().numpy()


def predictions_csv(pred: Predictions) -> str:
    """path, the true label (when known), the predicted label, then one probability column per class."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    true = ["label"] if pred.labels is not None else []
    writer.writerow(["path", *true, "prediction", *[f"p_{c}" for c in pred.classes]])
    for k, (name, label) in enumerate(zip(pred.names, pred.predicted)):
        known = [pred.labels[k]] if pred.labels is not None else []
        writer.writerow([name, *known, label, *[f"{p:.6g}" for p in pred.probs[k]]])
    return out.getvalue()


def write_predictions(pred: Predictions, path: Path) -> None:
    write_atomically(path, predictions_csv(pred))
