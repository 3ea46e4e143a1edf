"""Per-trial files under ``<studies_dir>/<study>/trials/<number>/``.

``last.pt`` is the end-of-epoch state a retried trial continues from;
``best.pt`` holds the weights of the trial's best epoch. Both are written to a
temporary name and renamed, so a crash never leaves half a file, and both load
with ``torch.load(weights_only=True)``. A write that fails removes its
temporary file; ``sweep`` removes those of processes that died mid-write, and
``set_aside`` moves a checkpoint that cannot be read out of the way.
"""

from __future__ import annotations

import functools
import os
import re
import socket
import shutil
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import psutil
import torch

from lrtune.errors import LRTuneError, first_line, is_no_space, no_space

LAST = "last.pt"
BEST = "best.pt"
TENSOR = "__tensor__"


def trial_dir(study_dir: Path, number: int) -> Path:
    return study_dir / "trials" / str(number)


UNREADABLE = "unreadable"  # under the study's folder: checkpoints that could not be read, set aside
TEMPORARY = re.compile(r"^\.(.+)\.(\d+)(?:@(.+))?\.tmp$")  # what ``save`` writes before the rename: pid@host


class UnreadableCheckpoint(LRTuneError):
    """A checkpoint cannot be read back: torn, truncated, or not a checkpoint of this model."""


def save(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` through a temporary file, removed if the write fails.

    A full disk raises ``NoSpaceError``, naming the folder and the checkpoint's size.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}@{socket.gethostname()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, Exception) and is_no_space(exc):
            raise no_space(path.parent, what=f"its {path.name}", need=state_bytes(state),
                           fix="free space there, or point --studies-dir at a larger disk (--keep best keeps fewer "
                               "weights)") from exc
        raise


def state_bytes(tree: Any) -> int:
    """The bytes of every tensor in nested dicts and lists: about what ``save`` writes."""
    if isinstance(tree, torch.Tensor):
        return tree.numel() * tree.element_size()
    if isinstance(tree, dict):
        return sum(state_bytes(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(state_bytes(v) for v in tree)
    return 0


@functools.cache
def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def pack(tree: Any) -> dict[str, Any]:
    """Nested dicts and lists holding many tensors, as one flat tensor per dtype plus a layout.

    Saving one buffer instead of hundreds of small tensors (every optimizer
    state) makes a checkpoint several times cheaper to write.
    """
    parts: dict[torch.dtype, list[torch.Tensor]] = {}
    sizes: dict[torch.dtype, int] = {}

    def walk(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            dtype = value.dtype
            start = sizes.get(dtype, 0)
            sizes[dtype] = start + value.numel()
            parts.setdefault(dtype, []).append(value.detach().reshape(-1))
            return {TENSOR: [_dtype_name(dtype), start, list(value.shape)]}
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(walk(v) for v in value)
        return value

    layout = walk(tree)
    return {"layout": layout, "buffers": {_dtype_name(k): _concat(v) for k, v in parts.items()}}


def _concat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One new CPU tensor (always a copy) holding all of ``tensors`` end to end."""
    if len({t.device for t in tensors}) > 1:  # e.g. Adam's CPU step counts beside CUDA moments
        tensors = [t.cpu() for t in tensors]
    return torch.cat(tensors).cpu()


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
    """Writes checkpoints on one background thread, one at a time and in order.

    The caller hands over state it will not touch again (``pack`` makes such
    copies); ``wait`` before files are read, moved or removed, and ``close``
    when done. At most ``MAX_PENDING`` writes wait their turn, which bounds the
    memory held when writing is slower than training.

    On Linux the thread runs at the lowest CPU priority: training keeps every
    core busy, and a write at normal priority would take a core from it in the
    middle of a step instead of using the idle moments between.
    """

    MAX_PENDING = 2  # best.pt and last.pt of one epoch

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="lrtune-checkpoint", initializer=_lower_priority
        )
        self._pending: list[Future] = []
        self.last_seconds = 0.0  # how long the last finished save took

    def save(self, path: Path, state: dict[str, Any], then: Callable[[], None] | None = None) -> None:
        """Write ``state`` to ``path``, then call ``then`` (e.g. an upload), both on the writer's thread."""
        while len(self._pending) >= self.MAX_PENDING:
            self._pending.pop(0).result()
        self._pending.append(self._pool.submit(self._timed_save, path, state, then))

    def _timed_save(self, path: Path, state: dict[str, Any], then: Callable[[], None] | None) -> None:
        started = time.perf_counter()
        save(path, state)
        self.last_seconds = time.perf_counter() - started
        if then is not None:
            then()

    def wait(self) -> None:
        """Block until every save is on disk; re-raise the first error here, on the training thread."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)


def _lower_priority() -> None:
    if sys.platform.startswith("linux"):  # there a thread id names one thread, not the process
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError:
            pass  # not permitted here: the write just runs at normal priority


def load(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=device, weights_only=True)


def load_checked(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """``load``, where a file that cannot be read (torn, truncated, not a checkpoint) raises ``UnreadableCheckpoint``."""
    try:
        state = load(path, device)
    except (OSError, MemoryError):
        raise
    except Exception as exc:
        raise UnreadableCheckpoint(f"{path}: {first_line(exc)}") from exc
    if not isinstance(state, dict):
        raise UnreadableCheckpoint(f"{path}: holds a {type(state).__name__}, not a checkpoint")
    return state


def set_aside(study_dir: Path, path: Path, number: int) -> Path:
    """Move the checkpoint ``path`` of trial ``number`` to the study's ``unreadable/`` folder (never deleted)."""
    folder = study_dir / UNREADABLE
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = folder / f"trial-{number}-{stamp}-{path.name}"
    n = 1
    while target.exists():
        n += 1
        target = folder / f"trial-{number}-{stamp}-{n}-{path.name}"
    os.replace(path, target)
    return target


def sweep(study_dir: Path) -> list[Path]:
    """Remove the temporary files that processes of this host which no longer run left in the trials' folders."""
    removed, host = [], socket.gethostname()
    for tmp in (study_dir / "trials").glob("*/.*.tmp"):
        match = TEMPORARY.match(tmp.name)
        if match and match.group(3) in (None, host) and not _alive(int(match.group(2))):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


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
