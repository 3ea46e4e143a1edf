"""Training batches (augmented with albumentations) and evaluation batches, as uint8 images.

``to_model_input`` normalizes whole batches on the device, so workers only ever
move uint8 pixels.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any, Iterator

import albumentations as A
import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from lrtune.errors import ConfigError
from lrtune.training.datasets import ImageSet, class_counts

BALANCE_MODES = ("none", "sampler", "oversample")

# --- training data --------------------------------------------------------------------


def train_transform(*, hflip: float, affine: float, color: float) -> A.Compose:
    """uint8 HWC in, uint8 HWC out; a step whose probability is 0 is left out."""
    steps: list[A.BasicTransform] = []
    if hflip > 0:
        steps.append(A.HorizontalFlip(p=hflip))
    if affine > 0:
        steps.append(A.Affine(translate_percent=(-0.1, 0.1), scale=(0.9, 1.1), rotate=(-15, 15), p=affine))
    if color > 0:
        steps.append(A.RandomBrightnessContrast(p=color))
    return A.Compose(steps, seed=0)


class TrainDataset(Dataset):
    """Augmented training images: ``indices`` into an ImageSet, those flagged ``rare`` through ``rare_transform``."""

    def __init__(
        self,
        imageset: ImageSet,
        indices: np.ndarray,
        transform: A.Compose,
        *,
        rare: np.ndarray | None = None,
        rare_transform: A.Compose | None = None,
    ) -> None:
        self.images = imageset.images
        self.labels = imageset.labels
        self.indices = np.asarray(indices, np.int64)
        self.rare = np.zeros(len(self.indices), bool) if rare is None else np.asarray(rare, bool)
        self.transform = transform
        self.rare_transform = rare_transform if rare_transform is not None else transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        index = int(self.indices[i])
        pipeline = self.rare_transform if self.rare[i] else self.transform
        image = pipeline(image=np.array(self.images[index]))["image"]
        return torch.from_numpy(np.ascontiguousarray(image)), int(self.labels[index])

    def reseed(self, seed: int) -> None:
        """Restart the augmentation random streams from ``seed``."""
        self.transform.set_random_seed(seed)
        if self.rare_transform is not self.transform:
            self.rare_transform.set_random_seed(seed + 1)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        images = self.images
        if isinstance(images, np.memmap) and images.filename and os.path.getsize(images.filename) == images.nbytes:
            state["images"] = (images.filename, images.shape)  # reopened by the worker instead of copied
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state["images"], tuple):
            filename, shape = state["images"]
            state["images"] = np.memmap(filename, np.uint8, "r", shape=shape)
        self.__dict__.update(state)


def _reseed_worker(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    info.dataset.reseed(torch.initial_seed() % 2**32)


def _oversampled(train_idx: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Extra copies that lift every class below the median class count up to it."""
    counts = class_counts(labels, n_classes)
    target = math.ceil(float(np.median(counts[counts > 0])))
    extras = [np.resize(train_idx[labels == k], target - n) for k, n in enumerate(counts) if 0 < n < target]
    return np.concatenate(extras).astype(np.int64) if extras else np.empty(0, np.int64)


def make_train_loader(
    imageset: ImageSet,
    train_idx: np.ndarray,
    *,
    batch_size: int,
    balance: str,
    hflip: float,
    affine: float,
    color: float,
    rare_affine: float,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """Shuffled, augmented training batches of uint8 (B, S, S, 3) images and int64 labels.

    Order and sampling come from torch's global RNG, so ``torch.manual_seed(s)``
    plus ``loader.dataset.reseed(s)`` before an epoch makes it repeatable.
    """
    if balance not in BALANCE_MODES:
        raise ConfigError(f"unknown balance {balance!r} (valid: {', '.join(BALANCE_MODES)})")
    train_idx = np.asarray(train_idx, np.int64)
    labels = imageset.labels[train_idx]
    transform = train_transform(hflip=hflip, affine=affine, color=color)
    sampler = None
    if balance == "oversample":
        extras = _oversampled(train_idx, labels, len(imageset.classes))
        rare = np.r_[np.zeros(len(train_idx), bool), np.ones(len(extras), bool)]
        rare_transform = train_transform(hflip=hflip, affine=rare_affine, color=color)
        dataset = TrainDataset(imageset, np.r_[train_idx, extras], transform, rare=rare, rare_transform=rare_transform)
    else:
        dataset = TrainDataset(imageset, train_idx, transform)
    if balance == "sampler":
        weights = 1.0 / class_counts(labels, len(imageset.classes))[labels]
        sampler = WeightedRandomSampler(torch.as_tensor(weights), num_samples=len(train_idx), replacement=True)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=len(dataset) > batch_size,
        worker_init_fn=_reseed_worker if num_workers > 0 else None,
        persistent_workers=False,
    )


# --- evaluation and model input ----------------------------------------------------------


def iter_eval_batches(
    imageset: ImageSet, idx: np.ndarray, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Un-augmented uint8 (B, S, S, 3) images and int64 labels of ``idx``, in order."""
    idx = np.asarray(idx, np.int64)
    for start in range(0, len(idx), batch_size):
        batch = idx[start : start + batch_size]
        images = np.ascontiguousarray(imageset.images[batch])
        yield torch.from_numpy(images), torch.from_numpy(imageset.labels[batch])


@functools.lru_cache(maxsize=None)
def _normalization(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and std on the 0..255 scale, shaped (1, 3, 1, 1)."""
    mean = torch.tensor([255 * m for m in IMAGENET_DEFAULT_MEAN], device=device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor([255 * s for s in IMAGENET_DEFAULT_STD], device=device, dtype=dtype).view(1, 3, 1, 1)
    return mean, std


def to_model_input(
    images_u8: torch.Tensor,
    device: torch.device | str,
    *,
    channels_last: bool = False,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """(B, S, S, 3) uint8 -> normalized (B, 3, S, S) ``dtype`` on ``device``.

    The uint8 batch crosses to the device first (4x fewer bytes than floats);
    the permuted NHWC memory already is channels_last.
    """
    x = images_u8.to(device, non_blocking=True).permute(0, 3, 1, 2)
    if not channels_last:
        x = x.contiguous()
    x = x.to(dtype)
    mean, std = _normalization(x.device, dtype)
    return x.sub_(mean).div_(std)
