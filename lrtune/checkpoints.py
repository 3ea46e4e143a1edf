"""Per-trial files under ``<studies_dir>/<study>/trials/<number>/``.

``last.pt`` is the end-of-epoch state a retried trial continues from;
``best.pt`` holds the weights of the trial's best epoch. Both are written to a
temporary name and renamed, so a crash never leaves half a file, and both load
with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any

import torch

LAST = "last.pt"
BEST = "best.pt"
TENSOR = "__tensor__"


def trial_dir(study_dir: Path, number: int) -> Path:
    return study_dir / "trials" / str(number)


def save(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def pack(tree: Any) -> dict[str, Any]:
    """Nested dicts and lists holding many tensors, as one flat tensor per dtype plus a layout.

    Saving one buffer instead of hundreds of small tensors (every optimizer
    state) makes a checkpoint several times cheaper to write.
    """
    parts: dict[str, list[torch.Tensor]] = {}
    sizes: dict[str, int] = {}

    def walk(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            dtype = str(value.dtype).removeprefix("torch.")
            flat = value.detach().reshape(-1).cpu()
            start = sizes.get(dtype, 0)
            sizes[dtype] = start + flat.numel()
            parts.setdefault(dtype, []).append(flat)
            return {TENSOR: [dtype, start, list(value.shape)]}
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(walk(v) for v in value)
        return value

    layout = walk(tree)
    return {"layout": layout, "buffers": {k: torch.cat(v) for k, v in parts.items()}}


def unpack(packed: dict[str, Any]) -> Any:
    buffers = packed["buffers"]

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            if TENSOR in value:
                dtype, start, shape = value[TENSOR]
                n = 1
                for d in shape:
                    n *= d
                return buffers[dtype][start : start + n].view(shape)
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(walk(v) for v in value)
        return value

    return walk(packed["layout"])


class Writer:
    """Writes checkpoints on a background thread, one at a time and in order.

    The caller hands over state it will not touch again (``pack`` makes such
    copies); ``wait`` before files are read, moved or removed.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, path: Path, state: dict[str, Any]) -> None:
        self.wait()

        def write() -> None:
            try:
                save(path, state)
            except BaseException as exc:  # re-raised on the training thread by wait()
                self._error = exc

        self._thread = threading.Thread(target=write, name="lrtune-checkpoint", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


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
