"""lrtune: tune the learning rate of PyTorch image classifiers, and the choices that interact with it.

The public API is what ``__all__`` names; every other module is internal.
"""

from lrtune.api import best_trial, list_studies, load_config, lr_find, open_study, search, write_report
from lrtune.config import Config
from lrtune.errors import (
    ConfigError,
    DataError,
    LRTuneError,
    ModelError,
    OutputError,
    RangeTestError,
    SearchInterrupted,
    StorageError,
    StudyError,
)
from lrtune.progress import ConsoleProgress, ProgressSink

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigError",
    "ConsoleProgress",
    "DataError",
    "LRTuneError",
    "ModelError",
    "OutputError",
    "ProgressSink",
    "RangeTestError",
    "SearchInterrupted",
    "StorageError",
    "StudyError",
    "__version__",
    "best_trial",
    "list_studies",
    "load_config",
    "lr_find",
    "open_study",
    "search",
    "write_report",
]
