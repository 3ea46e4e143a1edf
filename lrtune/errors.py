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
