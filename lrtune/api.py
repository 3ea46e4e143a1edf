"""The public functions of lrtune. Every argument is a keyword; every error an ``LRTuneError``.

Nothing here prints, unless a progress sink is given, and nothing exits the
process.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial

from lrtune import config as config_mod
from lrtune.config import Config
from lrtune.progress import ConsoleProgress, ProgressSink
from lrtune.training.parts import take
from lrtune.storage import (
    default_storage_url,
    load_study,
    open_existing_storage,
    storage_label,
    summarize_studies,
    top_trials,
)

if TYPE_CHECKING:
    from lrtune.training.range_test import RangeTestResult


def load_config(
    *,
    overrides: Mapping[str, Any] | None = None,
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """A validated config: ``overrides`` > ``LRTUNE_*`` in ``environ`` (default ``os.environ``) > the TOML file > defaults."""
    return config_mod.resolve(overrides, config_file=config_file, environ=environ)


def search(
    *,
    config: Config | None = None,
    progress: ProgressSink | None = None,
    given: Collection[str] | None = None,
    model: Any = None,
    model_name: str | None = None,
    loss: Mapping[str, Any] | None = None,
    train_data: Any = None,
    val_data: Any = None,
    test_data: Any = None,
    classes: Sequence[str] | None = None,
    data_name: str | None = None,
) -> optuna.Study:
    """Run, or resume, the study ``config`` describes, and return it.

    Running the same search again continues it: ``config.trials`` is the
    study's total of finished trials. Ctrl-C (or SIGTERM) stops the running
    trial at its next micro-batch and raises ``SearchInterrupted``; the next
    call continues that trial from its last epoch.

    ``given`` names the fields of ``config`` the caller chose; when the study
    exists, every other field (except where this machine keeps its data and
    study files) is taken from the study's stored config, so another machine
    joins a study with ``Config(storage=..., study=...)`` and
    ``given={"storage", "study"}``. None: ``config`` is used as it is.

    Your own parts: ``model`` is a ``torch.nn.Module``, a callable ``(num_classes) -> nn.Module``, or a
    ``"module:callable"`` reference; a Python object needs ``model_name``, and a resume gives the same object
    and name again (another machine needs a reference it can import). ``loss`` maps names to callables
    ``(logits, targets, **params) -> scalar`` (or references), searched beside ``config.losses``; a callable's
    dict attribute ``space`` declares its own parameters, each ``(low, high)``, ``(low, high, "log")`` or a
    list of choices. ``train_data`` and ``val_data`` (and ``test_data``, scored once at the end) are datasets
    of ``(image_tensor, label)``, each image the model's input, with ``classes`` naming the labels 0, 1, ...
    and ``data_name`` naming the data; they replace ``config.data`` and its split.
    """
    from lrtune.tuner.driver import run_search

    parts = take(model=model, model_name=model_name, loss=loss, train_data=train_data, val_data=val_data,
                 test_data=test_data, classes=classes, data_name=data_name, num_workers=(config or Config()).num_workers)
    cfg, chosen = parts.apply(config if config is not None else Config())
    verbosity = progress.verbosity if isinstance(progress, ConsoleProgress) else 0
    return run_search(cfg, progress=progress, verbosity=verbosity, given=None if given is None else {*given, *chosen})


def estimate(*, config: Config | None = None, progress: ProgressSink | None = None) -> dict[str, Any]:
    """What ``search`` would do with ``config``, without running a trial or writing a study: the resolved
    config, the data's summary, and the estimated wall time (``estimate``: its line, its seconds and what they
    rest on, timed on a few batches of the baseline trial). An existing study's finished trials are not
    counted again."""
    from lrtune.tuner.driver import dry_run

    return dry_run(config if config is not None else Config(), progress=progress)


def lr_find(
    *,
    config: Config | None = None,
    start: float | None = None,
    end: float = 10.0,
    steps: int = 100,
    loss: str | None = None,
    accum: int | None = None,
    progress: ProgressSink | None = None,
    model: Any = None,
    model_name: str | None = None,
    train_data: Any = None,
    val_data: Any = None,
    classes: Sequence[str] | None = None,
    data_name: str | None = None,
) -> "RangeTestResult":
    """Run an LR range test on the data, model and batch size of ``config``, and return its curve and suggestion.

    The LR grows exponentially from ``start`` (default ``config.lr_min / 100``)
    toward ``end`` over ``steps`` optimizer steps, on ``loss`` with ``accum``
    accumulation steps (default: the baseline trial's). The result holds the
    curve (``lrs``, ``losses``, ``smoothed``), every rule's LR
    (``suggestions``), and ``suggestion`` with the ``rule`` that chose it, or
    None and the reason when the curve shows no clear descent. Global RNG
    states are the same afterwards, so a later search computes what it would
    have without the test. Your own model and data: as ``search`` takes them.
    """
    from lrtune.training.loop import amp_policy, resolve_device
    from lrtune.training.range_test import check_sweep
    from lrtune.training.run import Hyperparams, check_parts, load_training_data, thread_guard
    from lrtune.training.threads import kept_threads
    from lrtune.tuner.lr_range import default_start, run_range_test
    from lrtune.tuner.space import baseline_params, check_space

    parts = take(model=model, model_name=model_name, train_data=train_data, val_data=val_data, classes=classes,
                 data_name=data_name, num_workers=(config or Config()).num_workers)
    cfg, _ = parts.apply(config if config is not None else Config())
    config_mod.validate(cfg)
    check_sweep(start=default_start(cfg) if start is None else start, end=end, steps=steps)
    device = resolve_device(cfg.device)
    check_space(cfg)
    data = load_training_data(cfg, progress=progress)
    check_parts(cfg, data)
    amp = amp_policy(device, cfg.amp)
    with kept_threads():
        say = progress.message if progress is not None else None
        thread_guard(cfg, Hyperparams.from_dict(baseline_params(cfg)), data=data, amp=amp, say=say)
        return run_range_test(cfg, data=data, amp=amp, start=start, end=end, steps=steps, loss=loss, accum=accum,
                              progress=progress)


def _storage_url(storage: str | None, studies_dir: str | Path) -> str:
    return storage or default_storage_url(studies_dir)


def open_study(
    *, name: str | None = None, storage: str | None = None, studies_dir: str | Path = "studies"
) -> optuna.Study:
    """Study ``name`` (default: the most recently active one) from ``storage``, to read.

    ``storage`` is any SQLAlchemy URL; by default the SQLite file under
    ``studies_dir``, which must exist.
    """
    return load_study(open_existing_storage(_storage_url(storage, studies_dir)), name)


def track(*, study: optuna.Study, to: list[str], studies_dir: str | Path = "studies",
          progress: ProgressSink | None = None) -> dict[str, int]:
    """Log ``study``'s ended trials from its storage to trackers (``mlflow[=URI]``, ``tensorboard[=DIR]``), skipping
    trials a tracker holds already: how many each got. A tracker that fails is said once through ``progress``."""
    from lrtune.tuner.tracking import backfill, parse

    stored = dict(study.user_attrs.get("config") or {})
    stored.pop("storage", None)
    cfg = config_mod.from_dict({**stored, "studies_dir": str(studies_dir), "track": list(to)})
    say = progress.message if progress is not None else (lambda text: None)
    return backfill(study, cfg, parse(list(to), cfg), say)


def list_studies(*, storage: str | None = None, studies_dir: str | Path = "studies") -> list[dict[str, Any]]:
    """One row per study: its name, finished, pruned, failed and running trials, and best value."""
    return summarize_studies(open_existing_storage(_storage_url(storage, studies_dir)))


def best_trial(*, study: optuna.Study) -> FrozenTrial | None:
    """The finished trial with the highest value of the study's metric (ties: the earlier), or None."""
    best = top_trials(study, 1)
    return best[0] if best else None


def ranked_trials(*, study: optuna.Study, n: int = 10) -> list[FrozenTrial]:
    """The ``n`` finished trials with the highest values, best first (ties: the earlier)."""
    return top_trials(study, n)


def report_figures(*, study: optuna.Study) -> dict[str, Any]:
    """The report's figures as plotly figures by name (``history``, ``curves``, ``lr``, ...), to show in a
    notebook; a figure with nothing to show yet is left out."""
    from lrtune.report import compute_report, report_figures as figures

    return figures(compute_report(study, storage_label=storage_label(study)))


def write_report(
    *,
    study: optuna.Study,
    out: str | Path | None = None,
    studies_dir: str | Path = "studies",
    plotlyjs: str = "inline",
) -> Path:
    """Write the study's HTML report and return its path.

    ``out`` defaults to ``<studies_dir>/<study>/report.html``. ``plotlyjs`` is
    ``inline`` (the page works offline) or ``cdn`` (a small file).
    """
    from lrtune.report import write_report as write

    return write(study, out=out, studies_dir=studies_dir, plotlyjs=plotlyjs, storage_label=storage_label(study))


def confirm(
    *,
    study: optuna.Study,
    top: int = 3,
    seeds: int = 3,
    device: str = "auto",
    studies_dir: str | Path = "studies",
    progress: ProgressSink | None = None,
    model: Any = None,
    model_name: str | None = None,
    loss: Mapping[str, Any] | None = None,
    train_data: Any = None,
    val_data: Any = None,
    test_data: Any = None,
    classes: Sequence[str] | None = None,
    data_name: str | None = None,
) -> dict[str, Any]:
    """Retrain the study's top ``top`` configurations, its LR baseline and LR-free baselines with ``seeds`` fresh
    seeds each, and rank them by the mean validation value (95% interval over seeds).

    The runs are trials of the companion study ``<study>.confirm``: they resume
    after a crash like trials, and the study's own trials, sampler and pruner
    never see them. The ranking is stored on the study (``confirmed``) and
    returned; with a test split each configuration is also scored there.
    ``train`` and ``export_config`` then take the confirmed winner by default.
    Ctrl-C raises ``SearchInterrupted``, and the next call continues. A study that ran with Python objects
    (``search``'s ``model=``, ``loss=`` and datasets) needs them given again, with the same names.
    """
    from lrtune.tuner.confirm import confirm_study

    stored = config_mod.from_dict(dict(study.user_attrs.get("config") or {}))
    take(model=model, model_name=model_name, loss=loss, train_data=train_data, val_data=val_data, test_data=test_data,
         classes=classes, data_name=data_name, num_workers=stored.num_workers).check(stored)
    return confirm_study(study, top=top, seeds=seeds, device=device, studies_dir=studies_dir, progress=progress)


DEPLOY_FUNCTIONS = ("train", "load_model", "predict", "export_config", "export_onnx", "export_split")


def __getattr__(name: str) -> Any:
    """The deploy functions (``lrtune.deploy.functions``) load torch, so they are imported on first use."""
    if name in DEPLOY_FUNCTIONS:
        from lrtune.deploy import functions

        return getattr(functions, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
