"""The user's own datasets: checks with one-line errors, and batches drawn the way lrtune's own are."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from lrtune.errors import DataError
from lrtune.training.loaders import to_model_input
from lrtune.training.references import resolve
from lrtune.training.user_data import DatasetLoader, dataset_eval_batches, user_sets


class Items(Dataset):
    def __init__(self, labels, shape=(3, 8, 8), item=None, targets=False):
        self.labels, self.shape, self.item = list(labels), shape, item
        if targets:
            self.targets = list(labels)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        if self.item is not None:
            return self.item(i)
        return torch.full(self.shape, float(i)), self.labels[i]


def sets(train=None, val=None, test=None, classes=("a", "b", "c"), name="unit"):
    train = Items([0, 1, 2, 0, 1, 2, 0, 1]) if train is None else train
    text = user_sets(train=train, val=Items([0, 1, 2]) if val is None else val, test=test,
                     classes=classes, name=name)
    return resolve(text, kind="data")


def test_the_sets_are_one_index_space_training_then_validation_then_test():
    found = sets(test=Items([2, 2]))
    assert found.split(0).tolist() == list(range(8)) and found.split(1).tolist() == [8, 9, 10]
    assert found.split(2).tolist() == [11, 12] and found.labels.tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 0, 1, 2, 2, 2]
    image, label = found.item(9)
    assert label == 1 and float(image[0, 0, 0]) == 1.0  # the validation set's item 1
    assert found.image_size == 8


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"train": Items([0], item=lambda i: (np.zeros((3, 8, 8)), 0))},
         r"^train_data\[0\] is \(ndarray, int\); each item must be \(image tensor, int label\)$"),
        ({"val": Items([0], item=lambda i: (torch.zeros(3, 8, 8), "cat"))},
         r"^val_data\[0\] is \(Tensor, str\); each item must be \(image tensor, int label\)$"),
        ({"train": Items([0], item=lambda i: (torch.zeros(3, 8, 8, dtype=torch.uint8), 0))},
         r"^train_data\[0\]'s image is a torch.uint8 tensor of shape \[3, 8, 8\]; it must be the model's float input"),
        ({"val": Items([0, 1], shape=(3, 9, 9))},
         r"^val_data\[0\] is an image of shape \[3, 9, 9\], train_data\[0\] of \[3, 8, 8\]"),
        ({"val": Items([0, 3])}, r"^val_data\[1\] has label 3, outside classes \(0 to 2, 3 names\)$"),
        ({"test": Items([0, -1], targets=True)}, r"^test_data\[1\] has label -1, outside classes"),
        ({"classes": ("a",)}, r"^classes= must name at least two distinct classes"),
        ({"val": Items([])}, r"^val_data must be a non-empty torch.utils.data.Dataset"),
    ],
)
def test_a_set_that_cannot_serve_is_one_line_naming_the_item_and_what_it_is(kwargs, message):
    with pytest.raises(DataError, match=message):
        sets(**kwargs)


def test_an_epoch_after_reseed_is_the_same_and_another_seed_another_order():
    found = sets(train=Items([0, 1, 2] * 10))
    loader = DatasetLoader(found, found.split(0), batch_size=4, balance="none")

    def epoch(seed):
        loader.reseed(seed)
        return [labels.tolist() + images[:, 0, 0, 0].tolist() for images, labels in loader]

    assert len(loader) == 7 and loader.images_per_epoch == 30 and loader.drop_last
    assert epoch(1) == epoch(1) and epoch(1) != epoch(2)
    loader.reseed(5)
    state = loader.rng_state()
    first = [b[0].tolist() for b in loader]
    loader.set_rng_state(state)
    assert [b[0].tolist() for b in loader] == first


def test_balanced_draws_lift_the_rare_class():
    found = sets(train=Items([0] * 18 + [1] * 18 + [2] * 2))
    drawn = {}
    for balance in ("none", "sampler", "oversample"):
        loader = DatasetLoader(found, found.split(0), batch_size=2, balance=balance)
        loader.reseed(0)
        labels = torch.cat([b[1] for b in loader])
        drawn[balance] = int((labels == 2).sum())
    assert drawn["none"] <= 2 and drawn["sampler"] > 4 and drawn["oversample"] >= 16


def test_evaluation_batches_come_in_order_and_float_batches_pass_to_the_model_as_they_are():
    found = sets()
    batches = list(dataset_eval_batches(found, found.split(1), 2))
    assert [b[1].tolist() for b in batches] == [[0, 1], [2]]
    images = batches[0][0]
    assert torch.equal(to_model_input(images, "cpu"), images)
    assert to_model_input(images, "cpu", channels_last=True).is_contiguous(memory_format=torch.channels_last)
