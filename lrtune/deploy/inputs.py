"""What to predict: a folder (of class folders, when labelled), a list of image files, or a CSV."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from lrtune.errors import DataError
from lrtune.training.datasets import IMAGE_EXTENSIONS


@dataclass
class Inputs:
    """Image files, the name each is shown by in the output, and their labels when the input has them."""

    files: list[Path]
    names: list[str]
    labels: list[str] | None


def list_inputs(data: list[str]) -> Inputs:
    """One folder or CSV, or any number of image files."""
    if not data:
        raise DataError("--data names no images")
    if len(data) == 1 and Path(data[0]).is_dir():
        return _folder(Path(data[0]))
    if len(data) == 1 and data[0].lower().endswith(".csv"):
        return _csv(Path(data[0]))
    files = []
    for item in data:
        path = Path(item)
        if not path.is_file():
            raise DataError(f"--data {item}: no such image file")
        files.append(path)
    return Inputs(files, [str(p) for p in files], None)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def _folder(folder: Path) -> Inputs:
    """A folder of class folders is labelled by them; a folder holding images itself is not."""
    loose = sorted(p for p in folder.iterdir() if _is_image(p))
    if loose:
        nested = sorted(p for p in folder.rglob("*") if _is_image(p) and p.parent != folder)
        files = loose + nested
        return Inputs(files, [p.relative_to(folder).as_posix() for p in files], None)
    files, labels = [], []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found = sorted(p for p in class_dir.rglob("*") if _is_image(p))
        files += found
        labels += [class_dir.name] * len(found)
    if not files:
        raise DataError(f"--data {folder} holds no images ({' '.join(IMAGE_EXTENSIONS)})")
    return Inputs(files, [p.relative_to(folder).as_posix() for p in files], labels)


def _csv(manifest: Path) -> Inputs:
    """A CSV with a ``path`` column (relative to the CSV's folder) and an optional ``label`` column."""
    if not manifest.is_file():
        raise DataError(f"--data {manifest}: no such CSV file")
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
            columns = [c.strip() for c in (rows[0].keys() if rows else [])]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{manifest} is not a UTF-8 CSV file: {exc}") from None
    if not rows:
        raise DataError(f"{manifest} has no rows; expected a header with a 'path' column and one row per image")
    if "path" not in columns:
        raise DataError(f"{manifest} has no 'path' column (columns: {', '.join(columns)})")
    root = manifest.parent
    files, names, labels = [], [], []
    for line, row in enumerate(rows, start=2):
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
        rel = row["path"]
        path = Path(rel) if os.path.isabs(rel) else root / rel
        if not rel or not path.is_file():
            raise DataError(f"{manifest} line {line}: image file not found: {path}")
        files.append(path)
        names.append(rel)
        labels.append(row.get("label", ""))
    has_labels = "label" in columns
    if has_labels and not all(labels):
        line = labels.index("") + 2
        raise DataError(f"{manifest} line {line}: empty label")
    return Inputs(files, names, labels if has_labels else None)
