"""Training and evaluation batches, augmentation, model input."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from imagefiles import AUGMENT, NO_AUGMENT, load, make_folder, one_epoch
from lrtune.errors import LRTuneError
from lrtune.training import loaders
from lrtune.training.datasets import ImageSet, class_counts, load_imageset, split_indices


# --- training loader ------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_train() -> tuple[ImageSet, np.ndarray]:
    digits = load_imageset("digits-lt", image_size=16)
    train, _ = split_indices(digits, val_fraction=0.2, seed=0)
    return digits, train


def test_train_transform_keeps_uint8_hwc() -> None:
    transform = loaders.train_transform(hflip=1.0, affine=1.0, color=1.0)
    assert len(transform.transforms) == 3
    assert len(loaders.train_transform(hflip=0.0, affine=0.5, color=0.0).transforms) == 1
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    out = transform(image=image)["image"]
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert not np.array_equal(out, image)


@pytest.mark.parametrize("balance", ["none", "sampler", "oversample"])
def test_epoch_repeats_after_reseeding(digits_train: tuple[ImageSet, np.ndarray], balance: str) -> None:
    digits, train = digits_train
    loader = loaders.make_train_loader(digits, train[:200], batch_size=32, balance=balance, **AUGMENT)
    images, labels = one_epoch(loader, 1)
    assert images.dtype == torch.uint8 and images.shape[1:] == (16, 16, 3) and labels.dtype == torch.int64
    again_images, again_labels = one_epoch(loader, 1)
    assert torch.equal(images, again_images) and torch.equal(labels, again_labels)
    other_images, _ = one_epoch(loader, 2)
    assert not torch.equal(images, other_images)


def test_epoch_repeats_with_worker_processes(digits_train: tuple[ImageSet, np.ndarray]) -> None:
    digits, train = digits_train
    loader = loaders.make_train_loader(digits, train[:64], batch_size=16, balance="none", num_workers=2, **AUGMENT)
    first, _ = one_epoch(loader, 3)
    second, _ = one_epoch(loader, 3)
    assert torch.equal(first, second)
    assert not torch.equal(first, one_epoch(loader, 4)[0])


def test_augmentation_changes_images_only_when_asked(digits_train: tuple[ImageSet, np.ndarray]) -> None:
    digits, train = digits_train
    plain = loaders.TrainDataset(digits, train, loaders.train_transform(hflip=0.0, affine=0.0, color=0.0))
    image, label = plain[5]
    assert torch.equal(image, torch.from_numpy(digits.images[train[5]])) and label == digits.labels[train[5]]
    augmented = loaders.TrainDataset(digits, train, loaders.train_transform(hflip=0.0, affine=1.0, color=1.0))
    assert not torch.equal(augmented[5][0], image)


def test_dataset_on_a_memmap_pickles_without_its_pixels(tmp_path: Path) -> None:
    pets = load(make_folder(tmp_path / "pets", {"cat": 20, "dog": 20}), tmp_path, cache="disk")
    dataset = loaders.TrainDataset(pets, np.arange(40), loaders.train_transform(hflip=0.0, affine=0.0, color=0.0))
    blob = pickle.dumps(dataset)
    copy = pickle.loads(blob)
    assert len(blob) < pets.images.nbytes
    assert isinstance(copy.images, np.memmap)
    assert torch.equal(copy[39][0], dataset[39][0])


def test_drop_last_only_when_there_is_more_than_one_batch(digits_train: tuple[ImageSet, np.ndarray]) -> None:
    digits, train = digits_train
    assert loaders.make_train_loader(digits, train, batch_size=32, balance="none", **NO_AUGMENT).drop_last
    few = loaders.make_train_loader(digits, train[:20], batch_size=32, balance="none", **NO_AUGMENT)
    assert not few.drop_last
    assert len(one_epoch(few, 0)[1]) == 20


def test_sampler_draws_rare_classes_more_often(digits_train: tuple[ImageSet, np.ndarray]) -> None:
    digits, train = digits_train

    def share_of_rarest(balance: str) -> float:
        loader = loaders.make_train_loader(digits, train, batch_size=64, balance=balance, **NO_AUGMENT)
        labels = torch.cat([one_epoch(loader, seed)[1] for seed in range(3)])
        return float((labels == 9).float().mean())

    natural = share_of_rarest("none")
    balanced = share_of_rarest("sampler")
    assert natural < 0.04
    assert balanced > 3 * natural and 0.05 < balanced < 0.15


def test_oversample_lifts_rare_classes_to_the_median(digits_train: tuple[ImageSet, np.ndarray]) -> None:
    digits, train = digits_train
    before = class_counts(digits.labels[train], 10)
    median = np.median(before)
    extras = loaders.oversampled(train, digits.labels[train], 10)
    after = class_counts(digits.labels[np.r_[train, extras]], 10)
    assert np.all(after >= median)
    np.testing.assert_array_equal(after[before >= median], before[before >= median])
    assert set(extras) <= set(train[digits.labels[train] >= 5])
    loader = loaders.make_train_loader(digits, train, batch_size=32, balance="oversample", **AUGMENT)
    assert loader.images_per_epoch == len(train) + len(extras) == (after - before).sum() + len(train)
    labels = torch.cat([one_epoch(loader, seed)[1] for seed in range(3)])
    assert (labels == 9).float().mean() > 2 * before[9] / len(train)


def test_unknown_balance(digits_train: tuple[ImageSet, np.ndarray]) -> None:
    digits, train = digits_train
    with pytest.raises(LRTuneError, match="weights"):
        loaders.make_train_loader(digits, train, batch_size=8, balance="weights", **NO_AUGMENT)


# --- evaluation and model input --------------------------------------------------------


def test_eval_batches_are_in_order_and_unaugmented(digits_train: tuple[ImageSet, np.ndarray]) -> None:
    digits, _ = digits_train
    idx = np.array([3, 1, 4, 15, 9, 2, 6])
    batches = list(loaders.iter_eval_batches(digits, idx, 3))
    assert [len(y) for _, y in batches] == [3, 3, 1]
    images = torch.cat([x for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    assert images.dtype == torch.uint8 and labels.dtype == torch.int64
    assert torch.equal(images, torch.from_numpy(digits.images[idx]))
    assert labels.tolist() == digits.labels[idx].tolist()


def test_eval_batches_from_a_memmap(tmp_path: Path) -> None:
    pets = load(make_folder(tmp_path / "pets", {"cat": 2, "dog": 2}), tmp_path, cache="disk")
    [(images, labels)] = list(loaders.iter_eval_batches(pets, np.arange(4), 8))
    assert images.shape == (4, 8, 8, 3) and labels.tolist() == [0, 0, 1, 1]


def test_model_input_is_normalized_nchw() -> None:
    batch = torch.zeros(2, 5, 5, 3, dtype=torch.uint8)
    batch[1] = 255
    x = loaders.to_model_input(batch, "cpu")
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN)
    std = torch.tensor(IMAGENET_DEFAULT_STD)
    assert x.shape == (2, 3, 5, 5) and x.dtype == torch.float32 and x.is_contiguous()
    torch.testing.assert_close(x[0, :, 2, 2], -mean / std)
    torch.testing.assert_close(x[1, :, 0, 4], (1 - mean) / std)
    assert batch.max() == 255


def test_model_input_in_channels_last_and_bfloat16() -> None:
    batch = torch.randint(0, 256, (4, 6, 6, 3), dtype=torch.uint8)
    x = loaders.to_model_input(batch, torch.device("cpu"), channels_last=True, dtype=torch.bfloat16)
    assert x.shape == (4, 3, 6, 6) and x.dtype == torch.bfloat16
    assert x.is_contiguous(memory_format=torch.channels_last)
    reference = loaders.to_model_input(batch, "cpu")
    torch.testing.assert_close(x.float(), reference, atol=0.05, rtol=0.02)


def test_class_counts() -> None:
    assert class_counts(np.array([2, 0, 2]), 4).tolist() == [1, 0, 2, 0]
