"""The user's own data: ``torch.utils.data.Dataset``s of ``(image_tensor, label)`` for training, validation
and (optionally) test, trained on as they come.

Each item already is the model's input (the user's dataset decodes, augments and normalizes it), so
lrtune's augmentation options do not apply. The sets are one index space, training first, then validation,
then test, so a run's indices, a retrain on training plus validation and the test scores work as they do
for lrtune's own images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, WeightedRandomSampler

from lrtune.errors import DataError
from lrtune.training.datasets import class_counts
from lrtune.training.loaders import BALANCE_MODES, oversampled
from lrtune.training.references import give

PARTS = ("train_data", "val_data", "test_data")


@dataclass
class UserSets:
    """The user's datasets as one index space, with every item's label read once."""

    sets: list[Dataset]
    classes: list[str]
    name: str
    labels: np.ndarray  # (N,) int64, the sets' labels one after the other
    offsets: list[int]  # where each set starts
    image_shape: tuple[int, ...]
    num_workers: int = 0

    # What the rest of lrtune asks of any image set.
    groups = None
    paths = None
    skipped: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.labels)

    def item(self, i: int) -> tuple[torch.Tensor, int]:
        k = int(np.searchsorted(self.offsets, i, side="right")) - 1
        image, _ = self.sets[k][i - self.offsets[k]]
        return image, int(self.labels[i])

    @property
    def image_size(self) -> int:
        return int(self.image_shape[-1])

    def split(self, k: int) -> np.ndarray:
        """The indices of set ``k`` (0 training, 1 validation, 2 test; empty when there is none)."""
        if k >= len(self.sets):
            return np.empty(0, np.int64)
        end = self.offsets[k + 1] if k + 1 < len(self.offsets) else len(self.labels)
        return np.arange(self.offsets[k], end, dtype=np.int64)


def user_sets(*, train: Dataset, val: Dataset, test: Dataset | None, classes: Sequence[str], name: str,
              num_workers: int = 0) -> str:
    """Check the user's datasets, keep them for this process under ``name``, and return the config's ``data``.

    ``DataError`` names the set, the item and what it is, for an item that is not ``(tensor, int)``, images of
    differing shapes, or a label outside ``classes``.
    """
    classes = [str(c) for c in classes]
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise DataError(f"classes= must name at least two distinct classes, got {classes!r}")
    sets = [train, val] + ([test] if test is not None else [])
    labels, shape = [], None
    for part, dataset in zip(PARTS, sets):
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__") or not len(dataset):
            raise DataError(f"{part} must be a non-empty torch.utils.data.Dataset, got {type(dataset).__name__}")
        image, _ = _checked_item(dataset, 0, part)
        if shape is None:
            shape = tuple(image.shape)
        elif tuple(image.shape) != shape:
            raise DataError(f"{part}[0] is an image of shape {list(image.shape)}, train_data[0] of {list(shape)}; "
                            "every image must have the same shape")
        labels.append(_labels(dataset, part, len(classes)))
    offsets = np.cumsum([0] + [len(d) for d in sets[:-1]]).tolist()
    found = UserSets(sets, classes, name, np.concatenate(labels), offsets, shape or (), num_workers)
    return give("data", name, found)


def _checked_item(dataset: Dataset, i: int, part: str) -> tuple[torch.Tensor, int]:
    item = dataset[i]
    ok = isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], torch.Tensor)
    if not ok or not _is_label(item[1]):
        kinds = ", ".join(type(v).__name__ for v in item) if isinstance(item, (tuple, list)) else type(item).__name__
        raise DataError(f"{part}[{i}] is ({kinds}); each item must be (image tensor, int label)")
    if item[0].dim() != 3 or not item[0].is_floating_point():
        raise DataError(f"{part}[{i}]'s image is a {item[0].dtype} tensor of shape {list(item[0].shape)}; it must be "
                        "the model's float input of shape [channels, height, width]")
    return item[0], int(item[1])


def _is_label(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and not value.is_floating_point()
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _labels(dataset: Dataset, part: str, n_classes: int) -> np.ndarray:
    """Every item's label: the dataset's ``targets`` (torchvision's name) when it has one, else read item by item."""
    targets = getattr(dataset, "targets", None)
    if targets is not None and len(targets) == len(dataset):
        labels = np.asarray([int(t) for t in targets], np.int64)
    else:
        labels = np.asarray([_checked_item(dataset, i, part)[1] for i in range(len(dataset))], np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= n_classes))
    if len(bad):
        raise DataError(f"{part}[{bad[0]}] has label {labels[bad[0]]}, outside classes (0 to {n_classes - 1}, "
                        f"{n_classes} names)")
    return labels


class _Items(Dataset):
    """The items at ``idx`` of the user's sets."""

    def __init__(self, sets: UserSets, idx: np.ndarray) -> None:
        self.sets, self.idx = sets, np.asarray(idx, np.int64)

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.sets.item(int(self.idx[i]))


class DatasetLoader:
    """``EpochBatches`` from the user's training set: an order (or a balanced draw) from the epoch's seed; the
    user's dataset augments. Items come as the model's float input."""

    def __init__(self, sets: UserSets, train_idx: np.ndarray, *, batch_size: int, balance: str,
                 pin_memory: bool = False) -> None:
        if balance not in BALANCE_MODES:
            raise DataError(f"unknown balance {balance!r} (valid: {', '.join(BALANCE_MODES)})")
        train_idx = np.asarray(train_idx, np.int64)
        labels = sets.labels[train_idx]
        self.generator = torch.Generator().manual_seed(0)
        self.seed = 0
        if balance == "oversample":
            train_idx = np.r_[train_idx, oversampled(train_idx, labels, len(sets.classes))]
        items = _Items(sets, train_idx)
        if balance == "sampler":
            weights = 1.0 / class_counts(labels, len(sets.classes))[labels]
            sampler: Any = WeightedRandomSampler(torch.as_tensor(weights), num_samples=len(items), replacement=True,
                                                 generator=self.generator)
        else:
            sampler = RandomSampler(items, generator=self.generator)
        self.batch_size, self.drop_last = batch_size, len(items) > batch_size
        self._loader = DataLoader(items, batch_size=batch_size, sampler=sampler, num_workers=sets.num_workers,
                                  pin_memory=pin_memory, drop_last=self.drop_last)

    def __len__(self) -> int:
        return len(self._loader)

    @property
    def images_per_epoch(self) -> int:
        return len(self._loader.sampler)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self._loader)

    def reseed(self, seed: int) -> None:
        self.seed = seed
        self.generator.manual_seed(seed)

    def ahead(self) -> None:
        return None  # the user's dataset augments, in its own loader processes if it asks for them

    def rng_state(self) -> dict[str, Any]:
        return {"seed": self.seed, "generator": self.generator.get_state().tolist()}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        self.seed = state["seed"]
        self.generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))


def dataset_eval_batches(sets: UserSets, idx: np.ndarray, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The items at ``idx``, in order, as float batches and int64 labels."""
    yield from DataLoader(_Items(sets, idx), batch_size=batch_size, shuffle=False, num_workers=sets.num_workers)
