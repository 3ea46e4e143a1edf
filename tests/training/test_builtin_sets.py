"""The built-in sets made from scikit-learn's digits; digits-writers above all."""

from __future__ import annotations

import numpy as np

from lrtune.config import Config, effective_hflip, effective_image_size
from lrtune.training.builtin_sets import WRITERS_COUNT, WRITERS_IMAGES, load_digit_set
from lrtune.training.datasets import class_counts
from lrtune.training.run import load_training_data


def test_digits_writers_is_long_tailed_and_grouped_by_writer() -> None:
    images, labels, writers = load_digit_set("digits-writers", 24)
    counts = class_counts(labels, 10)
    assert images.shape == (WRITERS_IMAGES, 24, 24, 3) and images.dtype == np.uint8 and labels.dtype == np.int64
    assert np.all(np.diff(counts) < 0) and 18 <= counts[0] / counts[9] <= 22
    assert writers is not None and len(set(writers)) == WRITERS_COUNT
    assert (images[..., 0] == images[..., 2]).all()


def test_digits_writers_is_the_same_every_time() -> None:
    first = load_digit_set("digits-writers", 16)
    np.random.seed(5)
    second = load_digit_set("digits-writers", 16)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_a_writers_images_share_a_hand() -> None:
    images, _, writers = load_digit_set("digits-writers", 24)
    paper = np.median(images[..., 0].reshape(len(images), -1), axis=1)  # the background's grey level
    means = {w: paper[writers == w].mean() for w in set(writers)}
    within = np.mean([paper[writers == w].std() for w in means])
    assert within * 3 < np.std(list(means.values()))


def test_digits_writers_defaults_and_split_keep_writers_apart() -> None:
    cfg = Config(data="digits-writers", test_fraction=0.2)
    assert effective_image_size(cfg) == 24 and effective_hflip(cfg) == 0
    data = load_training_data(cfg)
    groups = data.imageset.groups
    assert data.imageset.images.shape[1] == 24
    assert len(data.val_idx) >= 500 and len(data.test_idx) >= 500
    parts = [set(groups[idx]) for idx in (data.train_idx, data.val_idx, data.test_idx)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert (class_counts(data.imageset.labels[data.val_idx], 10) > 0).all()
