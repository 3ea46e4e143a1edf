"""Device-side augmentation against albumentations, its reference, measured on the images themselves.

The source image encodes each pixel's coordinates (red = x, green = y, blue
marks the image against the black fill), so a plane fitted to an augmented
image's red and green channels gives back the map it went through: its flip,
rotation and crop.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lrtune.errors import ConfigError
from lrtune.training import device_augment, loaders
from lrtune.training.datasets import load_imageset, split_indices

SIZE, N = 48, 2000
OFF = dict(hflip=0.0, affine=0.0, color=0.0, crop=0.0)


def coordinates() -> np.ndarray:
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    return np.stack([x * 5, y * 5, np.full_like(x, 255)], axis=-1).astype(np.uint8)


def cpu_path(probs: dict[str, float], source: np.ndarray) -> np.ndarray:
    transform = loaders.train_transform(**probs, size=SIZE)
    transform.set_random_seed(0)
    return np.stack([transform(image=source)["image"] for _ in range(N)])


def device_path(probs: dict[str, float], source: np.ndarray) -> np.ndarray:
    augment = device_augment.DeviceAugment(**probs, device=torch.device("cpu"))
    augment.reseed(0)
    batch = torch.from_numpy(source).expand(500, -1, -1, -1)
    return torch.cat([augment(batch) for _ in range(N // 500)]).numpy()


def source_maps(images: np.ndarray) -> np.ndarray:
    """Per image, the 2x2 linear part of output pixel -> source pixel, fitted where the image is not fill."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    design = np.stack([x.ravel(), y.ravel(), np.ones(SIZE * SIZE)], axis=1)
    maps = np.empty((len(images), 2, 2))
    for k, image in enumerate(images):
        inside = image[..., 2].ravel() == 255
        coef, *_ = np.linalg.lstsq(design[inside], image[..., :2].reshape(-1, 2)[inside] / 5.0, rcond=None)
        maps[k] = coef[:2].T
    return maps


@pytest.fixture(scope="module")
def paths() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    source = coordinates()
    grey = np.full((SIZE, SIZE, 3), 128, np.uint8)
    cases = {"hflip": source, "affine": source, "crop": source, "color": grey}
    return {
        name: (cpu_path({**OFF, name: 0.5}, image), device_path({**OFF, name: 0.5}, image))
        for name, image in cases.items()
    }


@pytest.mark.parametrize("side", [0, 1], ids=["albumentations", "device"])
def test_flip_rate(paths, side):
    maps = source_maps(paths["hflip"][side])
    flipped = maps[:, 0, 0] < 0
    assert np.allclose(np.abs(maps[:, 0, 0]), 1, atol=1e-3)
    assert flipped.mean() == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("side", [0, 1], ids=["albumentations", "device"])
def test_rotation_and_scale_rate_and_range(paths, side):
    maps = source_maps(paths["affine"][side])
    angle = np.degrees(np.arctan2(maps[:, 0, 1] - maps[:, 1, 0], maps[:, 0, 0] + maps[:, 1, 1]))
    scale = 1 / np.sqrt(np.abs(np.linalg.det(maps)))
    moved = (np.abs(angle) > 0.05) | (np.abs(scale - 1) > 1e-3)
    assert moved.mean() == pytest.approx(0.5, abs=0.05)
    rotated = np.abs(angle[moved])
    assert rotated.max() <= 15.5 and rotated.max() > 14  # uniform on [-15, 15] degrees
    assert rotated.mean() == pytest.approx(7.5, abs=0.6)
    assert np.mean(angle[moved] > 0) == pytest.approx(0.5, abs=0.06)
    assert scale.min() > 0.88 and scale.max() < 1.12


@pytest.mark.parametrize("side", [0, 1], ids=["albumentations", "device"])
def test_crop_rate_and_scale(paths, side):
    maps = source_maps(paths["crop"][side])
    area = np.abs(np.linalg.det(maps))  # the share of the source the output shows
    cropped = area < 0.98
    # p = 0.5, less the draws so close to the whole image that they round to it
    assert cropped.mean() == pytest.approx(0.5 * (0.98 - loaders.CROP_SCALE[0]) / (1 - loaders.CROP_SCALE[0]), abs=0.05)
    assert area.min() > 0.06
    assert area[cropped].mean() == pytest.approx(0.5, abs=0.05)  # uniform on [0.08, 1] below 0.98: mean 0.53


@pytest.mark.parametrize("side", [0, 1], ids=["albumentations", "device"])
def test_brightness_and_contrast_rate_and_range(paths, side):
    means = paths["color"][side].reshape(N, -1).mean(axis=1)
    changed = np.abs(means - 128) > 0.5
    assert changed.mean() == pytest.approx(0.5, abs=0.05)
    # 128 * (1 + c) + 255 * b with c, b uniform on [-0.2, 0.2]
    assert means.min() >= 128 * 0.8 - 51 - 1 and means.max() <= 128 * 1.2 + 51 + 1
    c, b = np.random.default_rng(0).uniform(-0.2, 0.2, (2, 100_000))
    assert np.abs(means[changed] - 128).mean() == pytest.approx(np.abs(128 * c + 255 * b).mean(), rel=0.1)


def test_identity_when_every_probability_is_zero():
    image = torch.randint(0, 256, (4, SIZE, SIZE, 3), dtype=torch.uint8)
    augment = device_augment.DeviceAugment(**OFF, device=torch.device("cpu"))
    assert torch.equal(augment(image), image)
    flips = device_augment.DeviceAugment(**{**OFF, "hflip": 1.0}, device=torch.device("cpu"))
    assert torch.equal(flips(image), image.flip(2))


def test_device_loader_repeats_after_reseeding_and_keeps_the_cpu_loaders_shape():
    digits = load_imageset("digits-lt", image_size=16)
    train, _ = split_indices(digits, val_fraction=0.2, seed=0)
    for balance in ("none", "sampler", "oversample"):
        kwargs = dict(batch_size=32, balance=balance, hflip=0.5, affine=0.5, color=0.5, crop=0.5, rare_affine=0.9)
        loader = device_augment.make_device_loader(digits, train, device=torch.device("cpu"), **kwargs)
        reference = loaders.make_train_loader(digits, train, **kwargs)
        assert len(loader) == len(reference)

        def epoch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
            loader.reseed(seed)
            batches = list(loader)
            return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])

        images, labels = epoch(1)
        assert images.dtype == torch.uint8 and images.shape[1:] == (16, 16, 3) and labels.dtype == torch.int64
        again = epoch(1)
        assert torch.equal(images, again[0]) and torch.equal(labels, again[1])
        assert not torch.equal(images, epoch(2)[0])


def test_auto_picks_the_device_only_on_cuda_when_the_cache_fits():
    choose = device_augment.choose_augment
    assert choose("auto", device_type="cpu", cache_bytes=1, free_bytes=None) == "cpu"
    assert choose("auto", device_type="cuda", cache_bytes=25, free_bytes=100) == "device"
    assert choose("auto", device_type="cuda", cache_bytes=26, free_bytes=100) == "cpu"
    assert choose("device", device_type="cpu", cache_bytes=1, free_bytes=None) == "device"
    assert choose("cpu", device_type="cuda", cache_bytes=1, free_bytes=100) == "cpu"
    with pytest.raises(ConfigError, match="valid: auto, cpu, device"):
        choose("gpu", device_type="cuda", cache_bytes=1, free_bytes=100)
