"""Image folders and CSV manifests written by tests, and loading them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lrtune.errors import LRTuneError
from lrtune.training.datasets import ImageSet, load_imageset

COLORS = {"cat": (255, 0, 0), "dog": (0, 255, 0), "eel": (0, 0, 255)}
NO_AUGMENT = dict(hflip=0.0, affine=0.0, color=0.0, rare_affine=0.0)
AUGMENT = dict(hflip=0.5, affine=0.5, color=0.5, rare_affine=0.9)


def write_png(path: Path, color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 12), color).save(path)


def make_folder(root: Path, counts: dict[str, int]) -> Path:
    for name, count in counts.items():
        for i in range(count):
            write_png(root / name / f"{i}.png", COLORS[name])
    return root


def write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def load(source: Path, tmp_path: Path, **kwargs) -> ImageSet:
    kwargs.setdefault("cache", "memory")
    return load_imageset(str(source), image_size=8, cache_dir=tmp_path / "cache", **kwargs)


def error_of(source: Path | str, tmp_path: Path, **kwargs) -> str:
    with pytest.raises(LRTuneError) as info:
        load(Path(source), tmp_path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def synthetic(labels: list[int], groups: list[str] | None = None) -> ImageSet:
    n = len(labels)
    return ImageSet(
        images=np.zeros((n, 4, 4, 3), np.uint8),
        labels=np.asarray(labels, np.int64),
        classes=[str(k) for k in range(max(labels) + 1)],
        groups=None if groups is None else np.asarray(groups),
        paths=None,
        skipped=[],
        name="synthetic",
    )


def one_epoch(loader: torch.utils.data.DataLoader, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    loader.dataset.reseed(seed)
    batches = list(loader)
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
