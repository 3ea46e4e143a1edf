"""Training augmentation as batched tensor ops on a uint8 cache that lives on the device.

The same transforms, probabilities and ranges as ``loaders.train_transform``
(albumentations, the CPU path and the reference), but every image of a batch
draws its own parameters on the device: random-resized crop, flip and
shift/scale/rotate are composed into one affine map per image and applied by
one ``grid_sample``; brightness and contrast are one multiply-add.

Plain ``affine_grid``/``grid_sample`` rather than torchvision.transforms.v2 or
kornia: v2 draws one set of parameters per call, so a batch would be flipped or
rotated as a whole, and kornia is a dependency for what is here about a hundred
lines of tensor code.
"""

from __future__ import annotations

import functools
import math
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from lrtune.errors import ConfigError
from lrtune.training.datasets import ImageSet, class_counts
from lrtune.training.loaders import (
    AFFINE_ROTATE,
    AFFINE_SCALE,
    AFFINE_SHIFT,
    BALANCE_MODES,
    BRIGHTNESS,
    CONTRAST,
    CROP_RATIO,
    CROP_SCALE,
    oversampled,
)

AUGMENT_MODES = ("auto", "cpu", "device")
DEVICE_CACHE_SHARE = 0.25  # auto: the cache goes on a CUDA device when it takes at most this share of its free memory
CROP_ATTEMPTS = 10  # as albumentations: draws of area and ratio before falling back to the whole image


def choose_augment(mode: str, *, device_type: str, cache_bytes: int, free_bytes: int | None) -> str:
    """``cpu`` or ``device``: where a run's training images are augmented.

    ``auto`` picks the device on CUDA when the uint8 cache fits in
    ``DEVICE_CACHE_SHARE`` of the free device memory, else the CPU (albumentations).
    """
    if mode not in AUGMENT_MODES:
        raise ConfigError(f"unknown augment {mode!r} (valid: {', '.join(AUGMENT_MODES)})")
    if mode != "auto":
        return mode
    if device_type != "cuda" or free_bytes is None:
        return "cpu"
    return "device" if cache_bytes <= DEVICE_CACHE_SHARE * free_bytes else "cpu"


class DeviceAugment:
    """Random crop, flip, shift/scale/rotate and brightness/contrast of uint8 (B, S, S, 3) batches.

    A step whose probability is 0 draws nothing; every other step draws for
    every image, applied or not, so a batch's draws do not depend on its luck.
    """

    def __init__(self, *, hflip: float, affine: float, color: float, crop: float, device: torch.device) -> None:
        self.hflip, self.affine, self.color, self.crop = hflip, affine, color, crop
        self.generator = torch.Generator(device=device)

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def _rand(self, n: int, device: torch.device, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
        return torch.rand(n, device=device, generator=self.generator) * (hi - lo) + lo

    def __call__(self, images: torch.Tensor, affine_p: torch.Tensor | None = None) -> torch.Tensor:
        """Augmented copies of ``images``; ``affine_p`` overrides the affine probability per image."""
        b, h, w, _ = images.shape
        device = images.device
        inverse = torch.eye(3, device=device).repeat(b, 1, 1)  # output pixel -> input pixel
        if self.crop > 0:
            inverse = inverse @ self._crop_inverse(b, h, w, device)
        if self.hflip > 0:
            flip = self._rand(b, device) < self.hflip
            mirror = torch.eye(3, device=device).repeat(b, 1, 1)
            mirror[:, 0, 0] = torch.where(flip, -1.0, 1.0)  # no boolean indexing: it would wait for the device
            mirror[:, 0, 2] = torch.where(flip, w - 1.0, 0.0)
            inverse = inverse @ mirror
        if self.affine > 0 or affine_p is not None:
            p = affine_p if affine_p is not None else torch.full((b,), self.affine, device=device)
            inverse = inverse @ self._affine_inverse(b, h, w, device, p)
        x = images.permute(0, 3, 1, 2).float()
        if self.crop > 0 or self.hflip > 0 or self.affine > 0 or affine_p is not None:
            theta = _to_normalized(h, w, device) @ inverse @ torch.linalg.inv(_to_normalized(h, w, device))
            grid = F.affine_grid(theta[:, :2], [b, 3, h, w], align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if self.color > 0:
            on = self._rand(b, device) < self.color
            alpha = torch.where(on, 1 + self._rand(b, device, -CONTRAST, CONTRAST), 1.0)
            beta = torch.where(on, 255 * self._rand(b, device, -BRIGHTNESS, BRIGHTNESS), 0.0)
            x = x * alpha.view(b, 1, 1, 1) + beta.view(b, 1, 1, 1)
        return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)

    def _crop_inverse(self, b: int, h: int, w: int, device: torch.device) -> torch.Tensor:
        """Random-resized crop: output pixel -> source pixel, the first fitting of ``CROP_ATTEMPTS`` draws."""
        on = self._rand(b, device) < self.crop
        area = self._rand(b * CROP_ATTEMPTS, device, *CROP_SCALE).view(b, -1) * (h * w)
        ratio = torch.exp(self._rand(b * CROP_ATTEMPTS, device, *map(math.log, CROP_RATIO))).view(b, -1)
        cw, ch = torch.sqrt(area * ratio).round(), torch.sqrt(area / ratio).round()
        fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
        first = fits.float().argmax(dim=1, keepdim=True)
        found = fits.any(dim=1) & on  # else the whole image (a square fits any default ratio)
        cw = torch.where(found, cw.gather(1, first).squeeze(1), float(w))
        ch = torch.where(found, ch.gather(1, first).squeeze(1), float(h))
        y0 = torch.floor((h - ch + 1) * self._rand(b, device))
        x0 = torch.floor((w - cw + 1) * self._rand(b, device))
        crop = torch.zeros(b, 3, 3, device=device)
        crop[:, 0, 0], crop[:, 1, 1], crop[:, 2, 2] = cw / w, ch / h, 1.0
        crop[:, 0, 2] = x0 - 0.5 + 0.5 * cw / w
        crop[:, 1, 2] = y0 - 0.5 + 0.5 * ch / h
        return crop

    def _affine_inverse(self, b: int, h: int, w: int, device: torch.device, p: torch.Tensor) -> torch.Tensor:
        """Shift/scale/rotate about the centre, as albumentations' ``Affine``, inverted."""
        on = self._rand(b, device) < p
        tx = self._rand(b, device, -AFFINE_SHIFT, AFFINE_SHIFT) * w
        ty = self._rand(b, device, -AFFINE_SHIFT, AFFINE_SHIFT) * h
        sx, sy = self._rand(b, device, *AFFINE_SCALE), self._rand(b, device, *AFFINE_SCALE)
        angle = torch.deg2rad(self._rand(b, device, -AFFINE_ROTATE, AFFINE_ROTATE))
        cos, sin = torch.cos(angle), torch.sin(angle)
        cx, cy = w / 2 - 0.5, h / 2 - 0.5
        forward = torch.zeros(b, 3, 3, device=device)
        # centre, translate, rotate, scale, uncentre: the matrix albumentations warps with
        forward[:, 0, 0], forward[:, 0, 1] = cos * sx, sin * sy
        forward[:, 1, 0], forward[:, 1, 1] = -sin * sx, cos * sy
        forward[:, 0, 2] = cx + tx - (forward[:, 0, 0] * cx + forward[:, 0, 1] * cy)
        forward[:, 1, 2] = cy + ty - (forward[:, 1, 0] * cx + forward[:, 1, 1] * cy)
        forward[:, 2, 2] = 1.0
        inverse = torch.linalg.inv(forward)
        return torch.where(on.view(b, 1, 1), inverse, torch.eye(3, device=device))


@functools.lru_cache(maxsize=8)
def _to_normalized(h: int, w: int, device: torch.device) -> torch.Tensor:
    """Pixel-centre coordinates -> grid_sample's [-1, 1] (``align_corners=False``)."""
    return torch.tensor([[2 / w, 0, 1 / w - 1], [0, 2 / h, 1 / h - 1], [0, 0, 1]], device=device)


class DeviceLoader:
    """``loaders.EpochBatches`` cut from a uint8 cache on the device and augmented there.

    What ``loaders.make_train_loader`` yields, without a worker process or a
    host-to-device copy: the order and the augmentations come from generators
    on the device that ``reseed`` restarts, so an epoch is repeatable.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        indices: np.ndarray,
        *,
        batch_size: int,
        augment: DeviceAugment,
        weights: np.ndarray | None = None,
        affine_p: np.ndarray | None = None,
    ) -> None:
        device = images.device
        self.images, self.labels, self.augment, self.batch_size = images, labels, augment, batch_size
        self.indices = torch.as_tensor(indices, dtype=torch.int64, device=device)
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64, device=device)
        self.affine_p = None if affine_p is None else torch.as_tensor(affine_p, dtype=torch.float32, device=device)
        self.drop_last = len(indices) > batch_size
        self.generator = torch.Generator(device=device)

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)
        self.augment.reseed(seed + 1)

    def rng_state(self) -> tuple[bytes, bytes]:
        return _state_bytes(self.generator), _state_bytes(self.augment.generator)

    def set_rng_state(self, state: tuple[bytes, bytes]) -> None:
        for generator, saved in zip((self.generator, self.augment.generator), state):
            generator.set_state(torch.frombuffer(bytearray(saved), dtype=torch.uint8))

    @property
    def images_per_epoch(self) -> int:
        return len(self.indices)

    def ahead(self) -> None:
        return None  # augmented on the device already

    def __len__(self) -> int:
        n = len(self.indices)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, device = len(self.indices), self.indices.device
        if self.weights is None:
            order = torch.randperm(n, device=device, generator=self.generator)
        else:
            order = torch.multinomial(self.weights, n, replacement=True, generator=self.generator)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            positions = order[start : start + self.batch_size]
            index = self.indices[positions]
            affine_p = self.affine_p[positions] if self.affine_p is not None else None
            yield self.augment(self.images[index], affine_p), self.labels[index]


def _state_bytes(generator: torch.Generator) -> bytes:
    return generator.get_state().numpy().tobytes()


# (id of the source array, device) -> (the source array, kept so its id stays its own; images; labels)
_CACHE: dict[tuple[int, str], tuple[np.ndarray, torch.Tensor, torch.Tensor]] = {}


def device_cache(imageset: ImageSet, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The set's uint8 images and labels on ``device``, copied once per process (the last set only)."""
    key = (id(imageset.images), str(device))
    if key not in _CACHE:
        _CACHE.clear()
        images = torch.tensor(np.asarray(imageset.images), dtype=torch.uint8).to(device)
        _CACHE[key] = imageset.images, images, torch.as_tensor(imageset.labels, dtype=torch.int64).to(device)
    return _CACHE[key][1:]


def make_device_loader(
    imageset: ImageSet,
    train_idx: np.ndarray,
    *,
    device: torch.device,
    batch_size: int,
    balance: str,
    hflip: float,
    affine: float,
    color: float,
    crop: float,
    rare_affine: float,
) -> DeviceLoader:
    """The device-side counterpart of ``loaders.make_train_loader``, with the same balance modes."""
    if balance not in BALANCE_MODES:
        raise ConfigError(f"unknown balance {balance!r} (valid: {', '.join(BALANCE_MODES)})")
    images, labels = device_cache(imageset, device)
    train_idx = np.asarray(train_idx, np.int64)
    train_labels = imageset.labels[train_idx]
    augment = DeviceAugment(hflip=hflip, affine=affine, color=color, crop=crop, device=device)
    weights = affine_p = None
    indices = train_idx
    if balance == "oversample":
        extras = oversampled(train_idx, train_labels, len(imageset.classes))
        indices = np.r_[train_idx, extras]
        affine_p = np.r_[np.full(len(train_idx), affine), np.full(len(extras), rare_affine)]
    elif balance == "sampler":
        weights = 1.0 / class_counts(train_labels, len(imageset.classes))[train_labels]
    return DeviceLoader(
        images, labels, indices, batch_size=batch_size, augment=augment, weights=weights, affine_p=affine_p
    )
