"""Writing outputs whole or not at all: a temporary name in the same folder, then a rename."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from lrtune.errors import ConfigError


def check_output_file(path: str | Path, option: str = "--out") -> Path:
    """``path`` as a file that can be written: not a folder, in a folder that exists and is writable."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder; give a file name")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ConfigError(f"{option} {path}: folder {folder} does not exist")
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{option} {path} is not writable")
    probe = temporary_sibling(path)
    try:
        probe.touch(exist_ok=False)
    except OSError as exc:
        raise ConfigError(f"{option} {path} is not writable ({exc.strerror or exc})") from None
    probe.unlink(missing_ok=True)
    return path


def temporary_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def write_atomically(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, so a crash never leaves half of it."""
    tmp = temporary_sibling(path)
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def replace_folder(tmp: Path, folder: Path) -> None:
    """Move the finished folder ``tmp`` to ``folder``, replacing any folder already there."""
    old = temporary_sibling(folder)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
