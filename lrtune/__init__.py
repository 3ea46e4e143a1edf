"""lrtune: tune the learning rate of PyTorch image classifiers, and the choices that interact with it.

The public API is what ``__all__`` names; every other module is internal.
"""

from typing import Any

from lrtune import api
from lrtune.api import (
    best_trial,
    confirm,
    estimate,
    list_studies,
    load_config,
    lr_find,
    open_study,
    ranked_trials,
    report_figures,
    search,
    track,
    write_report,
)
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
    "confirm",
    "estimate",
    "export_config",
    "export_onnx",
    "export_split",
    "list_studies",
    "load_config",
    "load_model",
    "lr_find",
    "open_study",
    "predict",
    "ranked_trials",
    "report_figures",
    "search",
    "track",
    "train",
    "write_report",
]


def __getattr__(name: str) -> Any:
    """The deploy functions (``train``, ``load_model``, ``predict``, ``export_*``) load torch: on first use."""
    if name in api.DEPLOY_FUNCTIONS:
        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
