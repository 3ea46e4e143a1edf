"""The exceptions lrtune raises. Each message is one line that names the culprit."""


class LRTuneError(Exception):
    """A problem the user can fix: bad input, a missing file, an unknown name."""


class ConfigError(LRTuneError):
    """An option, an environment variable or a config file holds a bad value."""


class DataError(LRTuneError):
    """A dataset is missing, malformed, or holds an image that cannot be decoded."""


class ModelError(LRTuneError):
    """An unknown model, or weights that cannot be found or loaded."""


class StorageError(LRTuneError):
    """A storage cannot be opened, or a study or trial is not in it."""


class StudyError(LRTuneError):
    """A study cannot go on: another config, too many failed trials in a row."""


class OutputError(LRTuneError):
    """An output file or folder cannot be written: missing, read-only, or a folder where a file belongs."""


class RangeTestError(LRTuneError):
    """An LR range test cannot give a curve: the loss is non-finite from its first step."""


SIGNAL_EXIT = {2: 130, 15: 143}  # the exit status of a command stopped by SIGINT or SIGTERM, as a shell reports it


class SearchInterrupted(LRTuneError):
    """Ctrl-C or SIGTERM stopped a search; running it again resumes where it stopped.

    ``signum`` is the signal that stopped it.
    """

    def __init__(self, message: str, *, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class NoSpaceError(LRTuneError):
    """A disk is full (the studies folder, the image cache or the storage's): the search stops at once, and the
    running trial continues from its last checkpoint once there is room."""


NO_SPACE_ERRNOS = {28, 122}  # ENOSPC, EDQUOT: no space left, disk quota exceeded
NO_SPACE_TEXTS = ("database or disk is full", "no space left on device", "disk quota exceeded")


def is_no_space(exc: BaseException) -> bool:
    """True when ``exc``, or what caused it, says a disk is full."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, NoSpaceError):
            return True
        if isinstance(seen, OSError) and seen.errno in NO_SPACE_ERRNOS:
            return True
        if any(text in str(seen).lower() for text in NO_SPACE_TEXTS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def size_text(n: float) -> str:
    """``n`` bytes as a short size: ``0 B``, ``812 kB``, ``4.5 MB``, ``1.2 GB``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            value = n / scale
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{int(n)} B"


def free_bytes(folder: object) -> int | None:
    """Bytes free to this user on the file system holding ``folder`` (or its nearest existing parent)."""
    import os

    path = os.path.abspath(os.fspath(folder))  # type: ignore[call-overload]
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        stat = os.statvfs(path)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def no_space(folder: object, *, what: str, need: int | None = None, fix: str = "free space there") -> NoSpaceError:
    """The one line for a full disk: where, how much is free, what ``what`` needs, and ``fix``."""
    free = free_bytes(folder)
    facts = [f"{size_text(free)} free" if free is not None else None, f"it needs about {size_text(need)}" if need else None]
    shown = "; ".join(fact for fact in facts if fact)
    return NoSpaceError(f"no space left under {folder} for {what}{f' ({shown})' if shown else ''}: {fix}")
