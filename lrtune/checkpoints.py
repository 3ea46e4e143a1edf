"""Per-trial files under ``<studies_dir>/<study>/trials/<number>/``.

``last.pt`` is the end-of-epoch state a retried trial continues from;
``best.pt`` holds the weights of the trial's best epoch. Both are written to a
temporary name and renamed, so a crash never leaves half a file, and both load
with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

LAST = "last.pt"
BEST = "best.pt"


def trial_dir(study_dir: Path, number: int) -> Path:
    return study_dir / "trials" / str(number)


def save(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=device, weights_only=True)


def adopt(study_dir: Path, old: int, new: int) -> bool:
    """Move trial ``old``'s files to trial ``new`` (its retry). True when there were any."""
    src, dst = trial_dir(study_dir, old), trial_dir(study_dir, new)
    if not (src / LAST).is_file():
        return False
    if dst.exists():
        shutil.rmtree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)
    return True


def remove(study_dir: Path, number: int, *, keep_best: bool = False) -> None:
    folder = trial_dir(study_dir, number)
    if keep_best and (folder / BEST).is_file():
        (folder / LAST).unlink(missing_ok=True)
        return
    shutil.rmtree(folder, ignore_errors=True)


def weight_files(study_dir: Path) -> dict[int, Path]:
    """Trial number -> its ``best.pt``, for every trial that kept weights."""
    root = study_dir / "trials"
    if not root.is_dir():
        return {}
    return {int(p.parent.name): p for p in root.glob(f"*/{BEST}") if p.parent.name.isdigit()}
