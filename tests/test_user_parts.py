"""Your own model, loss and datasets as Python objects: what search, lr_find, confirm, train and load_model do
with them, and what a resume asks of them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import Dataset

import lrtune

CLASSES = [str(k) for k in range(10)]


class Digits(Dataset):
    """Scikit-learn's digits as 3x16x16 float tensors; the training set flips at random, its own augmentation."""

    def __init__(self, idx: np.ndarray, augment: bool) -> None:
        digits = load_digits()
        x = torch.tensor(digits.images[idx], dtype=torch.float32)[:, None] / 8 - 1
        self.images = F.interpolate(x, size=16).expand(-1, 3, -1, -1).contiguous()
        self.targets = digits.target[idx].tolist()
        self.augment = augment

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.images[i]
        if self.augment and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image, self.targets[i]


def build(num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(128, num_classes))


def tempered(logits: torch.Tensor, targets: torch.Tensor, t: float = 1.0) -> torch.Tensor:
    return F.cross_entropy(logits / t, targets)


tempered.space = {"t": (0.5, 2.0)}


@pytest.fixture(scope="module")
def data() -> dict:
    order = np.random.default_rng(0).permutation(1797)
    return {"train_data": Digits(order[:900], True), "val_data": Digits(order[900:1200], False),
            "test_data": Digits(order[1200:1500], False), "classes": CLASSES, "data_name": "digits16"}


def parts(data: dict) -> dict:
    return {"model": build, "model_name": "small", "loss": {"tempered": tempered}, **data}


def test_a_search_trains_your_model_on_your_datasets_scores_the_test_set_and_resumes(tmp_path, data):
    config = lrtune.Config(trials=3, epochs=2, studies_dir=str(tmp_path), losses=["ce"], lr_range="off")
    study = lrtune.search(config=config, **parts(data))
    assert study.study_name == "digits16-small"
    stored = study.user_attrs["config"]
    assert (stored["model"], stored["data"], stored["losses"]) == ("object:small", "object:digits16",
                                                                   ["ce", "object:tempered"])
    assert study.user_attrs["dataset"]["n_train"] == 900 and study.user_attrs["dataset"]["n_test"] == 300
    assert study.user_attrs["test_split"]["best"]["value"] > 0.5  # scored on the test set, unseen by trials
    assert study.best_value > 0.5

    again = lrtune.search(config=lrtune.Config(**{**stored, "trials": 4, "studies_dir": str(tmp_path)}), **parts(data))
    assert len(again.trials) == 4
    with pytest.raises(lrtune.StudyError, match=r"model: 'object:small' -> 'object:bigger'"):
        lrtune.search(config=dataclasses.replace(config, study=study.study_name), **{**parts(data), "model_name": "bigger"})
    with pytest.raises(lrtune.ConfigError, match=r"^model= is a Python object \(function\) with no import path: name "
                                                 r"it with model_name="):
        lrtune.search(config=config, model=build)
    with pytest.raises(lrtune.ConfigError, match=r"^--workers 2 starts processes that import the model and losses"):
        lrtune.search(config=lrtune.Config(**{**stored, "workers": 2, "trials": 5, "studies_dir": str(tmp_path)}), **parts(data))

    result = lrtune.lr_find(config=config, steps=20, model=build, model_name="small",
                            **{k: v for k, v in data.items() if k != "test_data"})
    assert len(result.lrs) == 20

    ranking = lrtune.confirm(study=again, top=1, seeds=1, studies_dir=tmp_path, **parts(data))
    assert ranking["configs"] and all(len(c["runs"]) == 1 for c in ranking["configs"])  # one seed each
    trained = lrtune.train(study=again, on="all", studies_dir=tmp_path, **parts(data))
    loaded = lrtune.load_model(path=trained.folder, model=build, model_name="small")
    images = torch.stack([data["val_data"][i][0] for i in range(8)])
    with torch.no_grad():
        assert loaded.model(images).shape == (8, 10)
    with pytest.raises(lrtune.ConfigError, match=r"the study ran with data 'object:digits16', not 'object:other'"):
        lrtune.train(study=again, studies_dir=tmp_path, **{**parts(data), "data_name": "other"})
