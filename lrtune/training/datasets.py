"""Datasets: the built-in sets, ImageFolder and CSV manifests, decoded once; train/validation splits.

Every image is decoded once into one ``(N, S, S, 3)`` uint8 array, in RAM or
memory-mapped from ``cache_dir``.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import math
import os
import uuid
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import psutil
from PIL import Image, ImageOps
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from lrtune.config import DIGITS_SETS
from lrtune.errors import ConfigError, DataError, is_no_space, no_space
from lrtune.progress import ProgressSink
from lrtune.training.builtin_sets import load_digit_set

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
CACHE_MODES = ("auto", "memory", "disk")
CACHE_FORMAT = 2  # bump when the layout of the disk cache, or how an image is decoded, changes

_DECODE_ERRORS = (OSError, ValueError, Image.DecompressionBombError)
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # more than 8 bits per pixel
_LOADED: OrderedDict[tuple[Any, ...], ImageSet] = OrderedDict()  # load_imageset's memo of recent sets
_LOADED_MAX = 2  # a process trains on one set, and may evaluate on one more


@dataclass
class ImageSet:
    """A labelled set of equally sized RGB images, decoded once."""

    images: np.ndarray  # (N, S, S, 3) uint8, in RAM or a np.memmap
    labels: np.ndarray  # (N,) int64 in [0, len(classes))
    classes: list[str]  # class names, index = label
    groups: np.ndarray | None  # (N,) str group ids (CSV 'group' column, digits-writers' writers) or None
    paths: list[str] | None  # path of each image relative to its root (None for built-ins)
    skipped: list[str]  # files skipped because they could not be decoded
    name: str  # short name: a built-in set's, the folder name, or the CSV stem


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
    shared: bool = False,
    progress: ProgressSink | None = None,
) -> ImageSet:
    """Load a built-in digit set, an ImageFolder or a CSV manifest as ``image_size`` square images.

    The last few results are memoized per process; with the disk cache a set is
    also reused by later runs and other processes until a file changes.
    ``shared`` (several processes train on the set) decodes files once, into
    the disk cache, whatever ``cache`` says: with ``memory`` each process then
    copies the decoded set into its RAM instead of mapping it.
    ``progress`` hears how many images are decoded.
    """
    if image_size <= 0:
        raise ConfigError(f"image size must be positive, got {image_size}")
    if cache not in CACHE_MODES:
        raise ConfigError(f"unknown cache {cache!r} (valid: {', '.join(CACHE_MODES)})")
    if data in DIGITS_SETS:
        key: tuple[Any, ...] = (data, image_size)
    else:
        root = str(Path(data_root).resolve()) if data_root else ""
        key = (str(Path(data).resolve()), root, image_size, cache, str(Path(cache_dir).resolve()), skip_bad_images,
               shared)
    if key in _LOADED:
        _LOADED.move_to_end(key)
        return _LOADED[key]
    if data in DIGITS_SETS:
        imageset = _load_digits(data, image_size)
    else:
        imageset = _load_files(data, data_root, image_size, cache, Path(cache_dir), skip_bad_images, shared, progress)
    _LOADED[key] = imageset
    while len(_LOADED) > _LOADED_MAX:
        _LOADED.popitem(last=False)
    return imageset


def _load_digits(name: str, image_size: int) -> ImageSet:
    images, labels, writers = load_digit_set(name, image_size)
    return ImageSet(images, labels, [str(k) for k in range(10)], writers, None, [], name)


def _load_files(
    data: str,
    data_root: str,
    image_size: int,
    cache: str,
    cache_dir: Path,
    skip_bad_images: bool,
    shared: bool,
    progress: ProgressSink | None,
) -> ImageSet:
    listing = _list_source(data, data_root)
    _check_classes(listing, np.asarray(listing.labels, np.int64), listing.files)
    nbytes = len(listing.files) * image_size * image_size * 3
    if shared or cache == "disk" or (cache == "auto" and nbytes > _memory_budget()):
        imageset = _load_disk_cached(listing, image_size, cache_dir, skip_bad_images, progress)
        if cache == "memory":  # decoded once for every process, each holding its own copy
            imageset.images = np.array(imageset.images)
        return imageset
    images = np.empty((len(listing.files), image_size, image_size, 3), np.uint8)
    ok = _decode_into(images, listing, skip_bad_images, progress)
    return _assemble(listing, images, ok)


def _memory_budget() -> int:
    """Largest decoded array (bytes) kept in RAM by ``cache="auto"``."""
    return min(1 << 30, psutil.virtual_memory().available // 4)


def _list_source(data: str, data_root: str) -> _Listing:
    path = Path(data)
    if not path.exists():
        raise DataError(
            f"data {data!r} not found; expected {', '.join(DIGITS_SETS)}, a folder of class folders, or a .csv manifest"
        )
    if path.is_dir():
        return _list_folder(path.resolve())
    if path.suffix.lower() == ".csv":
        return _list_csv(path.resolve(), data_root)
    raise DataError(
        f"data {data!r} is not a folder or a .csv file; expected {', '.join(DIGITS_SETS)}, a folder of class folders,"
        " or a .csv manifest"
    )


def _list_folder(folder: Path) -> _Listing:
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{folder} has no class folders; expected {folder}/<class>/<image>")
    files: list[str] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        images = sorted(
            p.relative_to(folder).as_posix()
            for p in class_dir.rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
        if not images:
            raise DataError(f"class folder {class_dir} has no images ({' '.join(IMAGE_EXTENSIONS)})")
        files += images
        labels += [label] * len(images)
    classes = [d.name for d in class_dirs]
    return _Listing(folder, folder, files, labels, classes, None, folder.name)


def _list_csv(manifest: Path, data_root: str) -> _Listing:
    root = Path(data_root).resolve() if data_root else manifest.parent
    if not root.is_dir():
        raise DataError(f"data root {data_root!r} is not a folder")
    rows: list[tuple[str, str, str]] = []
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header or not any(cell.strip() for cell in header):
                raise DataError(f"{manifest} is empty; expected a header path,label[,group] and one row per image")
            columns = [cell.strip() for cell in header]
            for column in ("path", "label"):
                if column not in columns:
                    raise DataError(f"{manifest} has no {column!r} column (columns: {', '.join(columns)})")
            path_at, label_at = columns.index("path"), columns.index("label")
            group_at = columns.index("group") if "group" in columns else None
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                cells = [cell.strip() for cell in row] + [""] * (len(columns) - len(row))
                where = f"{manifest} line {reader.line_num}"
                rel = _checked_relative_path(cells[path_at], root, where)
                if not cells[label_at]:
                    raise DataError(f"{where}: empty label for {rel}")
                rows.append((rel, cells[label_at], cells[group_at] if group_at is not None else ""))
    except UnicodeDecodeError:
        raise DataError(f"{manifest} is not a UTF-8 text file") from None
    except csv.Error as exc:
        raise DataError(f"{manifest} is not a valid CSV file: {exc}") from None
    if not rows:
        raise DataError(f"{manifest} has no rows; expected one row per image after the header")
    classes = sorted({label for _, label, _ in rows})
    index = {name: k for k, name in enumerate(classes)}
    files = [rel for rel, _, _ in rows]
    labels = [index[label] for _, label, _ in rows]
    groups = [group for _, _, group in rows] if group_at is not None else None
    return _Listing(manifest, root, files, labels, classes, groups, manifest.stem)


def _checked_relative_path(rel: str, root: Path, where: str) -> str:
    """``rel`` normalized, once it is known to name an existing file inside ``root``."""
    if not rel:
        raise DataError(f"{where}: empty path")
    if os.path.isabs(rel):
        raise DataError(f"{where}: path {rel!r} is absolute; paths must be relative to {root}")
    norm = os.path.normpath(rel)
    if norm == os.pardir or norm.startswith(os.pardir + os.sep):
        raise DataError(f"{where}: path {rel!r} escapes {root}")
    if not (root / norm).is_file():
        raise DataError(f"{where}: image file not found: {root / norm}")
    return Path(norm).as_posix()


def _check_classes(listing: _Listing, labels: np.ndarray, files: list[str]) -> None:
    """Fail unless there are two classes or more, each with two images or more."""
    if len(listing.classes) < 2:
        raise DataError(
            f"{listing.source} has only one class ({listing.classes[0]!r}); a classifier needs at least two"
        )
    for k, count in enumerate(class_counts(labels, len(listing.classes))):
        if count == 0:
            raise DataError(f"class {listing.classes[k]!r} has no images left after skipping undecodable ones")
        if count == 1:
            file = listing.root / files[int(np.flatnonzero(labels == k)[0])]
            raise DataError(
                f"class {listing.classes[k]!r} has only one image ({file}); a stratified split needs at least two"
            )


def _decode_into(
    out: np.ndarray, listing: _Listing, skip_bad_images: bool, progress: ProgressSink | None
) -> np.ndarray:
    """Decode every listed file into ``out[i]`` on a thread pool; returns which ones decoded."""
    size = out.shape[1]

    def decode(i: int) -> bool:
        try:
            out[i] = decode_image(listing.root / listing.files[i], size)
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
            if progress is not None:
                progress.count(f"decoding {listing.name}", i + 1, total)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return ok


def decode_image(path: str | Path, size: int) -> np.ndarray:
    """One image file as a ``(size, size, 3)`` uint8 RGB array, the way training and prediction both see it.

    Upright by its EXIF orientation; grayscale, palette and RGBA images become
    RGB (alpha dropped, as timm's loader does); 16-bit images keep their top 8
    bits; any size is resized (bilinear) to the square. Raises OSError or
    ValueError when the file cannot be decoded.
    """
    with Image.open(path) as image:
        image.draft("RGB", (size, size))
        image = ImageOps.exif_transpose(image)
        if image.mode in _WIDE_MODES:
            wide = np.asarray(image, dtype=np.uint32 if image.mode != "F" else np.float32)
            image = Image.fromarray(np.clip(wide / 256, 0, 255).astype(np.uint8), "L")
        return np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))


def _bad_image_error(path: Path) -> DataError:
    return DataError(f"cannot decode image {path}; fix or remove it, or pass --skip-bad-images to skip it")


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


def _load_disk_cached(
    listing: _Listing, image_size: int, cache_dir: Path, skip_bad_images: bool, progress: ProgressSink | None
) -> ImageSet:
    key = _cache_key(listing, image_size)
    array_file, meta_file = cache_dir / f"{key}.u8", cache_dir / f"{key}.json"
    imageset = _open_cached(array_file, meta_file)
    if imageset is None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _write_cache(listing, image_size, array_file, meta_file, skip_bad_images, progress)
        imageset = _open_cached(array_file, meta_file)
        if imageset is None:
            raise DataError(f"the image cache {array_file} could not be read back")
    if imageset.skipped and not skip_bad_images:
        raise _bad_image_error(listing.root / imageset.skipped[0])
    return imageset


def _write_cache(
    listing: _Listing,
    image_size: int,
    array_file: Path,
    meta_file: Path,
    skip_bad_images: bool,
    progress: ProgressSink | None,
) -> None:
    """Decode into a temporary memory-mapped file, then move it and its metadata into place atomically."""
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    tmp_array = array_file.with_name(f"{array_file.name}.{tag}")
    tmp_meta = meta_file.with_name(f"{meta_file.name}.{tag}")
    shape = (len(listing.files), image_size, image_size, 3)
    try:
        _reserve(tmp_array, math.prod(shape))
        images = np.memmap(tmp_array, np.uint8, "r+", shape=shape)
        ok = _decode_into(images, listing, skip_bad_images, progress)
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


def _reserve(path: Path, size: int) -> None:
    """Create ``path`` with ``size`` bytes allocated on disk, so that writing through a memory map never meets a
    full disk (a process writing to a mapped page the disk has no room for is killed by SIGBUS)."""
    with open(path, "wb") as file:
        try:
            if hasattr(os, "posix_fallocate") and size:
                os.posix_fallocate(file.fileno(), 0, size)
            else:
                file.truncate(size)
        except OSError as exc:
            if is_no_space(exc):
                raise no_space(path.parent, what="the image cache", need=size,
                               fix="free space there, point --studies-dir at a larger disk, or use --cache memory") from None
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            file.truncate(size)  # a file system without fallocate: a sparse file, as before


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


def split_indices(
    imageset: ImageSet, *, val_fraction: float, seed: int, among: np.ndarray | None = None, part: str = "validation",
    say: Callable[[str], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (kept, held-out) indices of ``among`` (all images by default), stratified by class.

    With groups, no group is on both sides; a class with fewer images than the split has folds cannot be
    stratified, and ``say`` hears one line naming it and what the held-out side got. ``part`` names the
    held-out side in errors and notes.
    """
    idx = np.arange(len(imageset.labels)) if among is None else np.asarray(among, np.int64)
    labels = imageset.labels[idx]
    groups = None if imageset.groups is None else imageset.groups[idx]
    n_classes = len(imageset.classes)
    where = f"cannot split {imageset.name} with a {part} fraction of {val_fraction:g}"
    if not 0 < val_fraction < 1:
        raise DataError(f"{where}: it must be between 0 and 1")
    try:
        if groups is None:
            n_val = max(n_classes, round(val_fraction * len(labels)))
            train, val = train_test_split(np.arange(len(labels)), test_size=n_val, stratify=labels, random_state=seed)
        else:
            n_folds = max(2, round(1 / val_fraction))
            folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
            with warnings.catch_warnings():  # scikit-learn's "least populated class" warning: said below
                warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
                train, val = next(folds.split(np.zeros(len(labels)), labels, groups))
            if say is not None:
                _say_rare(imageset.classes, labels, val, n_folds, part, say)
    except ValueError as exc:
        raise DataError(f"{where}: {' '.join(str(exc).split())}") from None
    present = class_counts(labels[train], n_classes) > 0
    if not present.all():
        missing = imageset.classes[int(np.flatnonzero(~present)[0])]
        raise DataError(f"{where}: class {missing!r} has no training images left (every one is in {part})")
    return np.sort(idx[train]).astype(np.int64), np.sort(idx[val]).astype(np.int64)


def _say_rare(classes: list[str], labels: np.ndarray, held: np.ndarray, n_folds: int, part: str,
              say: Callable[[str], None]) -> None:
    """One line for the classes with fewer images than the grouped split has folds: how many each has, and how
    many of them the held-out side got (groups stay whole, so it may be none)."""
    counts = class_counts(labels, len(classes))
    got = class_counts(labels[held], len(classes))
    rare = [k for k in range(len(classes)) if 0 < counts[k] < n_folds]
    if not rare:
        return
    listed = ", ".join(f"{classes[k]!r} ({counts[k]} images, {got[k]} in {part})" for k in rare)
    say(f"note: {'class' if len(rare) == 1 else 'classes'} {listed} {'has' if len(rare) == 1 else 'have'} fewer "
        f"images than the {n_folds} folds the grouped {part} split is drawn from, so {part} cannot be stratified "
        f"there: each group stays on one side, and a rare class's {part} score rests on the few images it got")


def class_counts(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Number of images of each class, as an int64 array of length ``n_classes``."""
    return np.bincount(np.asarray(labels, np.int64), minlength=n_classes).astype(np.int64)
