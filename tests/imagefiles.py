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


def one_epoch(loader, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    loader.reseed(seed)
    batches = list(loader)
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def digit_images(count_per_class: int = 3) -> list[tuple[str, Image.Image]]:
    """scikit-learn's 8x8 digits as (label, 24x24 grayscale PNG-ready image) pairs, every class present."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = []
    for k in range(10):
        for i in np.flatnonzero(digits.target == k)[:count_per_class]:
            pixels = np.round(digits.images[i] * 255 / 16).astype(np.uint8)
            out.append((str(k), Image.fromarray(pixels).resize((24, 24), Image.Resampling.BILINEAR)))
    return out


def write_odd_images(folder: Path) -> list[str]:
    """PNG and JPEG files of every awkward kind: grayscale, RGBA, palette, 16-bit, EXIF-rotated, odd sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("L", (40, 20), 128).save(folder / "gray.png")
    Image.new("L", (17, 33), 200).save(folder / "gray.jpg")
    Image.new("RGBA", (20, 30), (255, 0, 0, 128)).save(folder / "rgba.png")
    Image.new("P", (9, 9), 3).save(folder / "palette.png")
    deep = (np.arange(400, dtype=np.uint16).reshape(20, 20) * 150).astype(np.uint16)
    Image.fromarray(deep).save(folder / "deep16.png")
    upright_top_red(folder / "rotated.jpg")
    Image.new("RGB", (300, 7), (10, 200, 30)).save(folder / "wide.jpg")
    return sorted(p.name for p in folder.iterdir())


def upright_top_red(path: Path) -> None:
    """A JPEG whose upright image is red on top and blue below, stored rotated with EXIF orientation 6."""
    upright = Image.new("RGB", (32, 48), (0, 0, 255))
    upright.paste((255, 0, 0), (0, 0, 32, 24))
    path.parent.mkdir(parents=True, exist_ok=True)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # orientation 6 turns it back 90 degrees clockwise
    exif = stored.getexif()
    exif[0x0112] = 6
    stored.save(path, exif=exif, quality=95)
