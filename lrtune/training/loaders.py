"""Training batches (augmented with albumentations) and evaluation batches, as uint8 images.

``EpochBatches`` is what training sees of its batches, whichever path
augments them: ``HostLoader`` here (albumentations in a DataLoader, on the
CPU) or ``device_augment.DeviceLoader`` (batched on the device). Callers
never ask which one they hold.

``to_model_input`` normalizes whole batches on the device, so workers only ever
move uint8 pixels.
"""

from __future__ import annotations

import copy
import functools
import math
import os
from typing import Any, Iterator, Protocol

import albumentations as A
import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, WeightedRandomSampler

from lrtune.errors import ConfigError
from lrtune.training.datasets import ImageSet, class_counts
from lrtune.training.prefetch import Prefetcher

BALANCE_MODES = ("none", "sampler", "oversample")

# The ranges of the augmentations, shared with the device path (device_augment.py).
AFFINE_SHIFT = 0.1  # shift by up to this share of the side, each axis on its own
AFFINE_SCALE = (0.9, 1.1)  # scale, each axis on its own
AFFINE_ROTATE = 15.0  # rotate by up to this many degrees either way
BRIGHTNESS = 0.2  # add up to this share of 255 either way
CONTRAST = 0.2  # multiply by 1 plus up to this either way
CROP_SCALE = (0.08, 1.0)  # random-resized crop: share of the area kept (timm's and torchvision's default)
CROP_RATIO = (3 / 4, 4 / 3)  # and its aspect ratio

# --- the batches of an epoch ----------------------------------------------------------


class Batches(Protocol):
    """An epoch's batches, counted before they are read: an ``EpochBatches``, or the same batches from elsewhere."""

    def __len__(self) -> int:
        ...

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        ...


class EpochBatches(Protocol):
    """The augmented training batches of an epoch: what the loop, the range test and a run use.

    Both augmentation paths implement it; an epoch after ``reseed(s)`` is the
    same every time, and ``rng_state``/``set_rng_state`` put the random
    streams back where they were (the range test restores them).
    """

    batch_size: int
    drop_last: bool

    def __len__(self) -> int:
        """Batches per epoch."""
        ...

    @property
    def images_per_epoch(self) -> int:
        """Images an epoch draws (with ``balance=oversample``, the copies too)."""
        ...

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """uint8 (B, S, S, 3) images and int64 labels."""
        ...

    def reseed(self, seed: int) -> None:
        """Restart the order and the augmentation from ``seed``."""
        ...

    def rng_state(self) -> Any:
        """The random streams' state: plain data that compares equal when the streams are."""
        ...

    def set_rng_state(self, state: Any) -> None:
        ...

    def ahead(self) -> Prefetcher | None:
        """A source of this loader's epochs that augments each in a loader process while the one before it
        trains (``prefetch.Prefetcher``), or None where that gains nothing: the augmentation runs on the device,
        in the user's dataset, or already in loader processes."""
        ...


# --- training data --------------------------------------------------------------------


def train_transform(*, hflip: float, affine: float, color: float, crop: float = 0.0, size: int = 0) -> A.Compose:
    """uint8 HWC in, uint8 HWC out; a step whose probability is 0 is left out.

    ``crop`` is the probability of a random-resized crop back to ``size`` pixels.
    """
    steps: list[A.BasicTransform] = []
    if crop > 0:
        steps.append(A.RandomResizedCrop(size=(size, size), scale=CROP_SCALE, ratio=CROP_RATIO, p=crop))
    if hflip > 0:
        steps.append(A.HorizontalFlip(p=hflip))
    if affine > 0:
        steps.append(
            A.Affine(
                translate_percent=(-AFFINE_SHIFT, AFFINE_SHIFT),
                scale=AFFINE_SCALE,
                rotate=(-AFFINE_ROTATE, AFFINE_ROTATE),
                p=affine,
            )
        )
    if color > 0:
        steps.append(A.RandomBrightnessContrast(brightness_limit=BRIGHTNESS, contrast_limit=CONTRAST, p=color))
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
        self.seed = 0  # the seed of the current epoch
        self._worker_epoch = -1  # in a worker process: the epoch its transforms were last reseeded for

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int | tuple[int, int, int]) -> tuple[torch.Tensor, int]:
        if isinstance(i, tuple):  # (position, epoch seed, epoch count) from an EpochSampler
            i, seed, count = i
            if self._worker_epoch != count:
                self._worker_epoch = count
                info = torch.utils.data.get_worker_info()
                self.reseed(worker_seed(seed, info.id if info is not None else 0))
        index = int(self.indices[i])
        pipeline = self.rare_transform if self.rare[i] else self.transform
        image = pipeline(image=np.array(self.images[index]))["image"]
        return torch.from_numpy(np.ascontiguousarray(image)), int(self.labels[index])

    def reseed(self, seed: int) -> None:
        """Restart the augmentation random streams from ``seed``."""
        self.seed = seed
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


def worker_seed(epoch_seed: int, worker_id: int) -> int:
    """The augmentation seed of one loader worker in one epoch."""
    return (epoch_seed * 7919 + worker_id) % 2**32


class EpochSampler(Sampler):
    """Wraps a sampler to hand each position to the dataset with the epoch's seed.

    Worker processes live for the whole run (``persistent_workers``), so they
    cannot be reseeded from the main process between epochs; they read the seed
    that comes with every index instead. The order itself is drawn from a
    generator seeded by that seed, never from the global RNG, so an epoch does
    not depend on what ran before it and a resumed run replays exactly.
    """

    def __init__(self, dataset: TrainDataset, sampler: Sampler) -> None:
        self.dataset, self.sampler = dataset, sampler
        self.epochs = 0

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        seed, count = self.dataset.seed, self.epochs
        self.epochs += 1
        self.sampler.generator = torch.Generator().manual_seed(seed)  # type: ignore[attr-defined]
        for i in self.sampler:
            yield int(i), seed, count


def oversampled(train_idx: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
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
    crop: float = 0.0,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> "HostLoader":
    """Shuffled, augmented training batches of uint8 (B, S, S, 3) images and int64 labels.

    Order and sampling come from torch's global RNG (with worker processes: from
    the epoch's seed), so ``torch.manual_seed(s)`` plus ``loader.reseed(s)``
    before an epoch makes it repeatable. Worker processes persist across epochs.
    ``pin_memory`` puts each batch in page-locked memory, so its copy to a GPU
    runs beside the step (``to_model_input`` copies with ``non_blocking``).
    """
    if balance not in BALANCE_MODES:
        raise ConfigError(f"unknown balance {balance!r} (valid: {', '.join(BALANCE_MODES)})")
    train_idx = np.asarray(train_idx, np.int64)
    labels = imageset.labels[train_idx]
    size = int(imageset.images.shape[1])
    transform = train_transform(hflip=hflip, affine=affine, color=color, crop=crop, size=size)
    sampler = None
    if balance == "oversample":
        extras = oversampled(train_idx, labels, len(imageset.classes))
        rare = np.r_[np.zeros(len(train_idx), bool), np.ones(len(extras), bool)]
        rare_transform = train_transform(hflip=hflip, affine=rare_affine, color=color, crop=crop, size=size)
        dataset = TrainDataset(imageset, np.r_[train_idx, extras], transform, rare=rare, rare_transform=rare_transform)
    else:
        dataset = TrainDataset(imageset, train_idx, transform)
    if balance == "sampler":
        weights = 1.0 / class_counts(labels, len(imageset.classes))[labels]
        sampler = WeightedRandomSampler(torch.as_tensor(weights), num_samples=len(train_idx), replacement=True)
    if num_workers > 0:
        # Workers stay up for the whole run; each epoch's seed travels with its indices.
        sampler = EpochSampler(dataset, sampler if sampler is not None else RandomSampler(dataset))
    return HostLoader(DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=len(dataset) > batch_size,
        # The workers' base seed comes from a generator of their own, not from the
        # global RNG, which the model's dropout goes on drawing from.
        generator=torch.Generator() if num_workers > 0 else None,
        persistent_workers=num_workers > 0,
        worker_init_fn=_one_thread if num_workers > 0 else None,
    ))


def _one_thread(worker_id: int) -> None:
    """A loader process is one of the processes the trial's thread budget counts: one thread each, OpenCV's too
    (torch already sets its own to one there)."""
    import cv2

    cv2.setNumThreads(1)


class HostLoader:
    """``EpochBatches`` augmented on the CPU: albumentations in a DataLoader, optionally in worker processes."""

    def __init__(self, loader: DataLoader) -> None:
        self._loader = loader
        self._dataset: TrainDataset = loader.dataset  # type: ignore[assignment]
        self.batch_size = int(loader.batch_size or 1)
        self.drop_last = bool(loader.drop_last)
        self.pin_memory = bool(loader.pin_memory)

    def __len__(self) -> int:
        return len(self._loader)

    @property
    def images_per_epoch(self) -> int:
        return len(self._loader.sampler)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self._loader)

    def reseed(self, seed: int) -> None:
        self._dataset.reseed(seed)

    def ahead(self) -> Prefetcher | None:
        return Prefetcher(self) if self._loader.num_workers == 0 else None

    def order(self) -> list[list[int]]:
        """The indices of each batch of an epoch, drawn from torch's RNG as iterating this loader draws them."""
        epoch = iter(self._loader)
        batches = []
        while True:
            try:
                batches.append([int(i) for i in epoch._next_index()])
            except StopIteration:
                return batches

    def collate(self, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """The augmented batch of ``indices`` as numpy arrays: the bytes iterating this loader collates."""
        items = [self._dataset[i] for i in indices]
        return np.stack([image.numpy() for image, _ in items]), np.array([label for _, label in items], np.int64)

    def rng_state(self) -> dict[str, Any]:
        dataset = self._dataset
        return {"seed": dataset.seed, "transform": _compose_state(dataset.transform),
                "rare": _compose_state(dataset.rare_transform)}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        self._dataset.seed = state["seed"]
        _set_compose_state(self._dataset.transform, state["transform"])
        _set_compose_state(self._dataset.rare_transform, state["rare"])


def _compose_state(transform: A.Compose) -> tuple[Any, Any]:
    """An albumentations pipeline's random streams (its steps share them)."""
    return copy.deepcopy(transform.random_generator.bit_generator.state), transform.py_random.getstate()


def _set_compose_state(transform: A.Compose, state: tuple[Any, Any]) -> None:
    transform.random_generator.bit_generator.state = copy.deepcopy(state[0])
    transform.py_random.setstate(state[1])


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
    """(B, S, S, 3) uint8 -> normalized (B, 3, S, S) ``dtype`` on ``device``. A float batch (a user's dataset
    yields the model's input) goes to the device as it is.

    The uint8 batch crosses to the device first (4x fewer bytes than floats);
    the permuted NHWC memory already is channels_last.
    """
    if images_u8.is_floating_point():
        x = images_u8.to(device, non_blocking=True)
        return (x.contiguous(memory_format=torch.channels_last) if channels_last else x).to(dtype)
    x = images_u8.to(device, non_blocking=True).permute(0, 3, 1, 2)
    if not channels_last:
        x = x.contiguous()
    x = x.to(dtype)
    mean, std = _normalization(x.device, dtype)
    return x.sub_(mean).div_(std)
