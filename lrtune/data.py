"""Datasets, train/validation splits, decoded-image caching and augmentation.

Every image is decoded once into one ``(N, S, S, 3)`` uint8 array (in RAM or
memory-mapped from ``cache_dir``); training augments single images with
albumentations, and ``to_model_input`` normalizes whole batches on the device.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import math
import os
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations asks PyPI for updates on import otherwise

import albumentations as A  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.model_selection import StratifiedGroupKFold, train_test_split  # noqa: E402
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # noqa: E402
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler  # noqa: E402

from lrtune.config import DIGITS_SETS  # noqa: E402
from lrtune.errors import LRTuneError  # noqa: E402

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
CACHE_MODES = ("auto", "memory", "disk")
BALANCE_MODES = ("none", "sampler", "oversample")
CACHE_FORMAT = 1  # bump when the layout of the disk cache changes
DIGITS_IMBALANCE = 0.1  # digits-lt keeps this share of the last class, and a geometric ramp in between

_DECODE_ERRORS = (OSError, ValueError, Image.DecompressionBombError)
_LOADED: dict[tuple[Any, ...], ImageSet] = {}  # load_imageset's per-process memo


@dataclass
class ImageSet:
    """A labelled set of equally sized RGB images, decoded once."""

    images: np.ndarray  # (N, S, S, 3) uint8, in RAM or a np.memmap
    labels: np.ndarray  # (N,) int64 in [0, len(classes))
    classes: list[str]  # class names, index = label
    groups: np.ndarray | None  # (N,) str group ids (CSV 'group' column) or None
    paths: list[str] | None  # path of each image relative to its root (None for built-ins)
    skipped: list[str]  # files skipped because they could not be decoded
    name: str  # short name: "digits-lt", "digits", folder name, or CSV stem


@dataclass
class _Listing:
    """What a folder or CSV manifest holds, before any image is decoded."""

    source: Path  # the folder or the CSV file
    root: Path  # the folder that ``files`` are relative to
    files: list[str]
    labels: list[int]
    classes: list[str]
    groups: list[str] | None
    name: str


# --- loading ------------------------------------------------------------------


def load_imageset(
    data: str,
    *,
    image_size: int,
    data_root: str = "",
    cache: str = "auto",
    cache_dir: str | Path = "studies/cache",
    skip_bad_images: bool = False,
) -> ImageSet:
    """Load a built-in digit set, an ImageFolder or a CSV manifest as ``image_size`` square images.

    The result is memoized per process; with the disk cache it is also reused
    by later runs and other processes until a file changes.
    """
    if image_size <= 0:
        raise LRTuneError(f"image size must be positive, got {image_size}")
    if cache not in CACHE_MODES:
        raise LRTuneError(f"unknown cache {cache!r} (valid: {', '.join(CACHE_MODES)})")
    if data in DIGITS_SETS:
        key: tuple[Any, ...] = (data, image_size)
    else:
        root = str(Path(data_root).resolve()) if data_root else ""
        key = (str(Path(data).resolve()), root, image_size, cache, str(Path(cache_dir).resolve()), skip_bad_images)
    if key not in _LOADED:
        if data in DIGITS_SETS:
            _LOADED[key] = _load_digits(data, image_size)
        else:
            _LOADED[key] = _load_files(data, data_root, image_size, cache, Path(cache_dir), skip_bad_images)
    return _LOADED[key]


def _load_digits(name: str, image_size: int) -> ImageSet:
    """scikit-learn's bundled 8x8 digits, optionally cut down to a fixed long-tailed subset."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    keep = np.arange(len(digits.target))
    if name == "digits-lt":
        rng = np.random.default_rng(0)
        chosen = []
        for k in range(10):
            members = np.flatnonzero(digits.target == k)
            chosen.append(rng.choice(members, size=round(len(members) * DIGITS_IMBALANCE ** (k / 9)), replace=False))
        keep = np.sort(np.concatenate(chosen))
    small = np.round(digits.images[keep] * 255 / 16).astype(np.uint8)
    images = np.empty((len(keep), image_size, image_size, 3), np.uint8)
    for i, image in enumerate(small):
        resized = Image.fromarray(image).resize((image_size, image_size), Image.Resampling.BILINEAR)
        images[i] = np.asarray(resized)[..., None]
    labels = digits.target[keep].astype(np.int64)
    return ImageSet(images, labels, [str(k) for k in range(10)], None, None, [], name)


def _load_files(
    data: str, data_root: str, image_size: int, cache: str, cache_dir: Path, skip_bad_images: bool
) -> ImageSet:
    listing = _list_source(data, data_root)
    _check_classes(listing, np.asarray(listing.labels, np.int64), listing.files)
    nbytes = len(listing.files) * image_size * image_size * 3
    if cache == "disk" or (cache == "auto" and nbytes > _memory_budget()):
        return _load_disk_cached(listing, image_size, cache_dir, skip_bad_images)
    images = np.empty((len(listing.files), image_size, image_size, 3), np.uint8)
    ok = _decode_into(images, listing, skip_bad_images)
    return _assemble(listing, images, ok)


def _memory_budget() -> int:
    """Largest decoded array (bytes) kept in RAM by ``cache="auto"``."""
    return min(1 << 30, psutil.virtual_memory().available // 4)


def _list_source(data: str, data_root: str) -> _Listing:
    path = Path(data)
    if not path.exists():
        raise LRTuneError(
            f"data {data!r} not found; expected digits-lt, digits, a folder of class folders, or a .csv manifest"
        )
    if path.is_dir():
        return _list_folder(path.resolve())
    if path.suffix.lower() == ".csv":
        return _list_csv(path.resolve(), data_root)
    raise LRTuneError(
        f"data {data!r} is not a folder or a .csv file; expected digits-lt, digits, a folder of class folders,"
        " or a .csv manifest"
    )


def _list_folder(folder: Path) -> _Listing:
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise LRTuneError(f"{folder} has no class folders; expected {folder}/<class>/<image>")
    files: list[str] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        images = sorted(
            p.relative_to(folder).as_posix()
            for p in class_dir.rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
        if not images:
            raise LRTuneError(f"class folder {class_dir} has no images ({' '.join(IMAGE_EXTENSIONS)})")
        files += images
        labels += [label] * len(images)
    classes = [d.name for d in class_dirs]
    return _Listing(folder, folder, files, labels, classes, None, folder.name)


def _list_csv(manifest: Path, data_root: str) -> _Listing:
    root = Path(data_root).resolve() if data_root else manifest.parent
    if not root.is_dir():
        raise LRTuneError(f"data root {data_root!r} is not a folder")
    rows: list[tuple[str, str, str]] = []
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header or not any(cell.strip() for cell in header):
                raise LRTuneError(f"{manifest} is empty; expected a header path,label[,group] and one row per image")
            columns = [cell.strip() for cell in header]
            for column in ("path", "label"):
                if column not in columns:
                    raise LRTuneError(f"{manifest} has no {column!r} column (columns: {', '.join(columns)})")
            path_at, label_at = columns.index("path"), columns.index("label")
            group_at = columns.index("group") if "group" in columns else None
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                cells = [cell.strip() for cell in row] + [""] * (len(columns) - len(row))
                where = f"{manifest} line {reader.line_num}"
                rel = _checked_relative_path(cells[path_at], root, where)
                if not cells[label_at]:
                    raise LRTuneError(f"{where}: empty label for {rel}")
                rows.append((rel, cells[label_at], cells[group_at] if group_at is not None else ""))
    except UnicodeDecodeError:
        raise LRTuneError(f"{manifest} is not a UTF-8 text file") from None
    except csv.Error as exc:
        raise LRTuneError(f"{manifest} is not a valid CSV file: {exc}") from None
    if not rows:
        raise LRTuneError(f"{manifest} has no rows; expected one row per image after the header")
    classes = sorted({label for _, label, _ in rows})
    index = {name: k for k, name in enumerate(classes)}
    files = [rel for rel, _, _ in rows]
    labels = [index[label] for _, label, _ in rows]
    groups = [group for _, _, group in rows] if group_at is not None else None
    return _Listing(manifest, root, files, labels, classes, groups, manifest.stem)


def _checked_relative_path(rel: str, root: Path, where: str) -> str:
    """``rel`` normalized, once it is known to name an existing file inside ``root``."""
    if not rel:
        raise LRTuneError(f"{where}: empty path")
    if os.path.isabs(rel):
        raise LRTuneError(f"{where}: path {rel!r} is absolute; paths must be relative to {root}")
    norm = os.path.normpath(rel)
    if norm == os.pardir or norm.startswith(os.pardir + os.sep):
        raise LRTuneError(f"{where}: path {rel!r} escapes {root}")
    if not (root / norm).is_file():
        raise LRTuneError(f"{where}: image file not found: {root / norm}")
    return Path(norm).as_posix()


def _check_classes(listing: _Listing, labels: np.ndarray, files: list[str]) -> None:
    """Fail unless there are two classes or more, each with two images or more."""
    if len(listing.classes) < 2:
        raise LRTuneError(
            f"{listing.source} has only one class ({listing.classes[0]!r}); a classifier needs at least two"
        )
    for k, count in enumerate(class_counts(labels, len(listing.classes))):
        if count == 0:
            raise LRTuneError(f"class {listing.classes[k]!r} has no images left after skipping undecodable ones")
        if count == 1:
            file = listing.root / files[int(np.flatnonzero(labels == k)[0])]
            raise LRTuneError(
                f"class {listing.classes[k]!r} has only one image ({file}); a stratified split needs at least two"
            )


def _decode_into(out: np.ndarray, listing: _Listing, skip_bad_images: bool) -> np.ndarray:
    """Decode every listed file into ``out[i]`` on a thread pool; returns which ones decoded."""
    size = out.shape[1]

    def decode(i: int) -> bool:
        try:
            with Image.open(listing.root / listing.files[i]) as image:
                image.draft("RGB", (size, size))
                out[i] = np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
        except _DECODE_ERRORS:
            return False
        return True

    total = len(listing.files)
    ok = np.zeros(total, bool)
    pool = ThreadPoolExecutor(max_workers=min(32, (os.cpu_count() or 1) + 4))
    try:
        for i, decoded in enumerate(pool.map(decode, range(total))):
            if not decoded and not skip_bad_images:
                raise _bad_image_error(listing.root / listing.files[i])
            ok[i] = decoded
            _show_progress(f"decoding {listing.name}", i + 1, total)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return ok


def _bad_image_error(path: Path) -> LRTuneError:
    return LRTuneError(f"cannot decode image {path}; fix or remove it, or pass --skip-bad-images to skip it")


SHOW_PROGRESS = True  # the CLI turns it off under -q


def _show_progress(what: str, done: int, total: int) -> None:
    """A counter on stderr, shown only when stderr is a terminal."""
    if not SHOW_PROGRESS or not sys.stderr.isatty() or (done % max(1, total // 100) and done != total):
        return
    sys.stderr.write(f"\r{what}: {done}/{total} images" + ("\n" if done == total else ""))
    sys.stderr.flush()


def _assemble(listing: _Listing, images: np.ndarray, ok: np.ndarray) -> ImageSet:
    """The ImageSet of the decoded rows (``ok``), moved in place to the front of ``images``.

    Fails unless every class still has two images or more.
    """
    keep = np.flatnonzero(ok)
    labels = np.asarray(listing.labels, np.int64)[keep]
    paths = [listing.files[i] for i in keep]
    _check_classes(listing, labels, paths)
    for row, i in enumerate(keep):
        if row != i:
            images[row] = images[i]
    groups = None if listing.groups is None else np.asarray(listing.groups, dtype=str)[keep]
    skipped = [listing.files[i] for i in np.flatnonzero(~ok)]
    return ImageSet(images[: len(keep)], labels, list(listing.classes), groups, paths, skipped, listing.name)


# --- disk cache -------------------------------------------------------------------


def _cache_key(listing: _Listing, image_size: int) -> str:
    """Changes whenever the source, the image size or any listed file (name, label, size, mtime) changes."""
    entries = []
    for k, rel in enumerate(listing.files):
        stat = (listing.root / rel).stat()
        group = listing.groups[k] if listing.groups is not None else None
        entries.append([rel, listing.classes[listing.labels[k]], group, stat.st_size, stat.st_mtime_ns])
    blob = json.dumps(
        {
            "format": CACHE_FORMAT,
            "source": str(listing.source),
            "root": str(listing.root),
            "image_size": image_size,
            "files": entries,
        }
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _load_disk_cached(listing: _Listing, image_size: int, cache_dir: Path, skip_bad_images: bool) -> ImageSet:
    key = _cache_key(listing, image_size)
    array_file, meta_file = cache_dir / f"{key}.u8", cache_dir / f"{key}.json"
    imageset = _open_cached(array_file, meta_file)
    if imageset is None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _write_cache(listing, image_size, array_file, meta_file, skip_bad_images)
        imageset = _open_cached(array_file, meta_file)
        if imageset is None:
            raise LRTuneError(f"the image cache {array_file} could not be read back")
    if imageset.skipped and not skip_bad_images:
        raise _bad_image_error(listing.root / imageset.skipped[0])
    return imageset


def _write_cache(listing: _Listing, image_size: int, array_file: Path, meta_file: Path, skip_bad_images: bool) -> None:
    """Decode into a temporary memory-mapped file, then move it and its metadata into place atomically."""
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    tmp_array = array_file.with_name(f"{array_file.name}.{tag}")
    tmp_meta = meta_file.with_name(f"{meta_file.name}.{tag}")
    shape = (len(listing.files), image_size, image_size, 3)
    try:
        images = np.memmap(tmp_array, np.uint8, "w+", shape=shape)
        ok = _decode_into(images, listing, skip_bad_images)
        imageset = _assemble(listing, images, ok)
        meta = {
            "format": CACHE_FORMAT,
            "shape": list(imageset.images.shape),
            "labels": imageset.labels.tolist(),
            "classes": imageset.classes,
            "groups": None if imageset.groups is None else imageset.groups.tolist(),
            "paths": imageset.paths,
            "skipped": imageset.skipped,
            "name": imageset.name,
        }
        images.flush()
        del images, imageset
        os.truncate(tmp_array, math.prod(meta["shape"]))
        tmp_meta.write_text(json.dumps(meta))
        os.replace(tmp_array, array_file)
        os.replace(tmp_meta, meta_file)
    finally:
        tmp_array.unlink(missing_ok=True)
        tmp_meta.unlink(missing_ok=True)


def _open_cached(array_file: Path, meta_file: Path) -> ImageSet | None:
    """The cached ImageSet with its images memory-mapped read-only, or None when absent or incomplete."""
    try:
        meta = json.loads(meta_file.read_text())
        shape = tuple(meta["shape"])
        if meta["format"] != CACHE_FORMAT or array_file.stat().st_size != math.prod(shape):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    groups = None if meta["groups"] is None else np.asarray(meta["groups"], dtype=str)
    return ImageSet(
        images=np.memmap(array_file, np.uint8, "r", shape=shape),
        labels=np.asarray(meta["labels"], np.int64),
        classes=list(meta["classes"]),
        groups=groups,
        paths=list(meta["paths"]),
        skipped=list(meta["skipped"]),
        name=meta["name"],
    )


# --- splitting --------------------------------------------------------------------


def split_indices(imageset: ImageSet, *, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, validation) indices, stratified by class; with groups, no group is on both sides."""
    labels = imageset.labels
    n_classes = len(imageset.classes)
    where = f"cannot split {imageset.name} with a validation fraction of {val_fraction:g}"
    if not 0 < val_fraction < 1:
        raise LRTuneError(f"{where}: it must be between 0 and 1")
    try:
        if imageset.groups is None:
            n_val = max(n_classes, round(val_fraction * len(labels)))
            train, val = train_test_split(
                np.arange(len(labels)), test_size=n_val, stratify=labels, random_state=seed
            )
        else:
            folds = StratifiedGroupKFold(n_splits=max(2, round(1 / val_fraction)), shuffle=True, random_state=seed)
            train, val = next(folds.split(np.zeros(len(labels)), labels, imageset.groups))
    except ValueError as exc:
        raise LRTuneError(f"{where}: {' '.join(str(exc).split())}") from None
    present = class_counts(labels[train], n_classes) > 0
    if not present.all():
        missing = imageset.classes[int(np.flatnonzero(~present)[0])]
        raise LRTuneError(f"{where}: class {missing!r} has no training images left (every one is in validation)")
    return np.sort(train).astype(np.int64), np.sort(val).astype(np.int64)


def class_counts(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Number of images of each class, as an int64 array of length ``n_classes``."""
    return np.bincount(np.asarray(labels, np.int64), minlength=n_classes).astype(np.int64)


# --- training data --------------------------------------------------------------------


def train_transform(*, hflip: float, affine: float, color: float) -> A.Compose:
    """uint8 HWC in, uint8 HWC out; a step whose probability is 0 is left out."""
    steps: list[A.BasicTransform] = []
    if hflip > 0:
        steps.append(A.HorizontalFlip(p=hflip))
    if affine > 0:
        steps.append(A.Affine(translate_percent=(-0.1, 0.1), scale=(0.9, 1.1), rotate=(-15, 15), p=affine))
    if color > 0:
        steps.append(A.RandomBrightnessContrast(p=color))
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

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        index = int(self.indices[i])
        pipeline = self.rare_transform if self.rare[i] else self.transform
        image = pipeline(image=np.array(self.images[index]))["image"]
        return torch.from_numpy(np.ascontiguousarray(image)), int(self.labels[index])

    def reseed(self, seed: int) -> None:
        """Restart the augmentation random streams from ``seed``."""
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


def _reseed_worker(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    info.dataset.reseed(torch.initial_seed() % 2**32)


def _oversampled(train_idx: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
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
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """Shuffled, augmented training batches of uint8 (B, S, S, 3) images and int64 labels.

    Order and sampling come from torch's global RNG, so ``torch.manual_seed(s)``
    plus ``loader.dataset.reseed(s)`` before an epoch makes it repeatable.
    """
    if balance not in BALANCE_MODES:
        raise LRTuneError(f"unknown balance {balance!r} (valid: {', '.join(BALANCE_MODES)})")
    train_idx = np.asarray(train_idx, np.int64)
    labels = imageset.labels[train_idx]
    transform = train_transform(hflip=hflip, affine=affine, color=color)
    sampler = None
    if balance == "oversample":
        extras = _oversampled(train_idx, labels, len(imageset.classes))
        rare = np.r_[np.zeros(len(train_idx), bool), np.ones(len(extras), bool)]
        rare_transform = train_transform(hflip=hflip, affine=rare_affine, color=color)
        dataset = TrainDataset(imageset, np.r_[train_idx, extras], transform, rare=rare, rare_transform=rare_transform)
    else:
        dataset = TrainDataset(imageset, train_idx, transform)
    if balance == "sampler":
        weights = 1.0 / class_counts(labels, len(imageset.classes))[labels]
        sampler = WeightedRandomSampler(torch.as_tensor(weights), num_samples=len(train_idx), replacement=True)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=len(dataset) > batch_size,
        worker_init_fn=_reseed_worker if num_workers > 0 else None,
        persistent_workers=False,
    )


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
    """(B, S, S, 3) uint8 -> normalized (B, 3, S, S) ``dtype`` on ``device``.

    The uint8 batch crosses to the device first (4x fewer bytes than floats);
    the permuted NHWC memory already is channels_last.
    """
    x = images_u8.to(device, non_blocking=True).permute(0, 3, 1, 2)
    if not channels_last:
        x = x.contiguous()
    x = x.to(dtype)
    mean, std = _normalization(x.device, dtype)
    return x.sub_(mean).div_(std)
