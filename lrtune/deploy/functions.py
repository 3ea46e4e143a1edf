"""The public functions of the deploy side; ``lrtune.api`` re-exports them. Keyword-only, ``LRTuneError`` on bad input."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

import optuna

from lrtune.config import Config
from lrtune.deploy.evaluation import write_evaluation_page
from lrtune.deploy.files import check_output_file, write_atomically
from lrtune.deploy.inputs import list_inputs
from lrtune.deploy.modelfolder import LoadedModel, load_model_folder, load_trial_weights
from lrtune.deploy.onnx_export import OnnxExport
from lrtune.deploy.onnx_export import export_onnx as write_onnx
from lrtune.deploy.predict import Predictions, predict_images, write_predictions
from lrtune.deploy.retrain import TrainedModel, retrain
from lrtune.deploy.spec import (
    FORMATS,
    TrialSpec,
    confirmed_winner,
    find_trial,
    format_config,
    spec_from_file,
    spec_from_trial,
    trial_weights,
)
from lrtune.deploy.splits import write_split
from lrtune.errors import ConfigError
from lrtune.progress import ProgressSink
from lrtune.storage import study_dir
from lrtune.training.loop import resolve_device
from lrtune.training.parts import take

MODELS = "models"


def model_folder(studies_dir: str | Path, study: str, name: str) -> Path:
    """``<studies_dir>/<study>/models/<name>/``."""
    if not name or name != Path(name).name or name.startswith("."):
        raise ConfigError(f"--name {name!r} must be a plain folder name")
    return study_dir(studies_dir, study) / MODELS / name


def train(
    *,
    study: optuna.Study | None = None,
    trial: int | None = None,
    config: Config | None = None,
    config_file: str | Path | None = None,
    on: str = "train",
    epochs: int | None = None,
    name: str | None = None,
    studies_dir: str | Path = "studies",
    device: str | None = None,
    progress: ProgressSink | None = None,
    model: Any = None,
    model_name: str | None = None,
    loss: Mapping[str, Any] | None = None,
    train_data: Any = None,
    val_data: Any = None,
    test_data: Any = None,
    classes: Sequence[str] | None = None,
    data_name: str | None = None,
) -> TrainedModel:
    """Retrain a trial (default: the study's best) into ``<studies_dir>/<study>/models/<name>/``.

    The trial comes from ``study``, or from ``config_file`` when that is a TOML
    written by ``export_config`` (its config then is ``config``). ``on`` is
    ``train`` (the training split; validation judges the model) or ``all``
    (training plus validation images). It trains for the trial's best epoch
    count, or ``epochs``; running it again after a crash continues it. A study that ran with Python objects
    (``search``'s ``model=``, ``loss=`` and datasets) needs them given again, with the same names.
    """
    parts = take(model=model, model_name=model_name, loss=loss, train_data=train_data, val_data=val_data,
                 test_data=test_data, classes=classes, data_name=data_name,
                 num_workers=config.num_workers if config is not None else 0)
    spec = None
    if config_file is not None:
        spec = spec_from_file(config_file, config if config is not None else Config())
    if spec is None:
        if study is None:
            raise ConfigError("train needs a study, or a config file written by `lrtune export --format toml`")
        spec = _spec(study, trial)
        if spec.chosen_by and progress is not None:
            progress.message(f"retraining trial {spec.trial}, {spec.chosen_by}")
    parts.check(spec.config)
    spec = dataclasses.replace(spec, config=dataclasses.replace(spec.config, studies_dir=str(studies_dir)))
    folder = model_folder(studies_dir, spec.study, name or _default_name(spec.trial, on, epochs))
    return retrain(spec, folder=folder, on=on, epochs=epochs, device=device, progress=progress)


def _spec(study: optuna.Study, trial: int | None) -> TrialSpec:
    """Trial ``trial``, or the confirmed winner, or the best trial; ``chosen_by`` says when it is the confirmed one."""
    chosen = find_trial(study, trial, confirmed=True)
    spec = spec_from_trial(study, chosen)
    winner = confirmed_winner(study) if trial is None else None
    return dataclasses.replace(spec, chosen_by=winner[1]) if winner and winner[0] == chosen.number else spec


def _default_name(trial: int, on: str, epochs: int | None) -> str:
    return f"trial{trial}-{on}" + (f"-{epochs}ep" if epochs else "")


def load_model(
    *,
    path: str | Path | None = None,
    study: optuna.Study | None = None,
    trial: int | None = None,
    studies_dir: str | Path = "studies",
    device: str = "cpu",
    model: Any = None,
    model_name: str | None = None,
) -> LoadedModel:
    """A model folder (``path``), a trial's ``best.pt`` (``path``), or the weights a study's trial kept.

    Without ``path``: trial ``trial`` of ``study``, by default its best. A model trained from a Python object
    (``search``'s ``model=``) needs it given again as ``model`` with its ``model_name``.
    """
    take(model=model, model_name=model_name)
    target = resolve_device(device)
    if path is not None:
        path = Path(path)
        if path.is_file() and path.suffix == ".pt":
            return load_trial_weights(path, device=target)
        return load_model_folder(path, device=target)
    if study is None:
        raise ConfigError("load_model needs a model folder or a study")
    return load_trial_weights(trial_weights(study, find_trial(study, trial), studies_dir), device=target)


def predict(
    *,
    model: LoadedModel,
    data: str | Path | list[str | Path],
    out: str | Path | None = None,
    report: str | Path | None = None,
    batch_size: int = 64,
    tta: str = "none",
    skip_bad_images: bool = False,
    progress: ProgressSink | None = None,
) -> Predictions:
    """Class probabilities for a folder, a list of image files or a CSV (``path`` and optional ``label``).

    ``out`` gets the CSV (path, true label when known, prediction, one
    probability per class); ``report`` an HTML page of the scores and the
    confusion matrix, for labelled input. Both are written whole or not at all.
    """
    items = [str(d) for d in data] if isinstance(data, (list, tuple)) else [str(data)]
    out_path = check_output_file(out, "--out") if out is not None else None
    report_path = check_output_file(report, "--report") if report is not None else None
    inputs = list_inputs(items)
    if report_path is not None and inputs.labels is None:
        raise ConfigError("--report needs labelled images (class folders, or a CSV with a 'label' column)")
    pred = predict_images(
        model, inputs, batch_size=batch_size, tta=tta, skip_bad_images=skip_bad_images, progress=progress
    )
    if out_path is not None:
        write_predictions(pred, out_path)
    ev = pred.evaluation()
    if report_path is not None and ev is not None:
        write_evaluation_page(pred, ev, report_path, title=f"Evaluation of {model.source}")
    return pred


def export_config(
    *, study: optuna.Study, trial: int | None = None, format: str = "toml", out: str | Path | None = None
) -> str:
    """The trial's configuration (default: the best) as JSON, YAML or TOML; also written to ``out`` when given.

    The TOML is a config file ``search`` and ``train`` accept back.
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown format {format!r} (valid: {', '.join(FORMATS)}, onnx)")
    out_path = check_output_file(out) if out is not None else None
    text = format_config(_spec(study, trial), format)
    if out_path is not None:
        write_atomically(out_path, text)
    return text


def export_onnx(*, model: LoadedModel, out: str | Path) -> OnnxExport:
    """The model as ONNX at ``out``, checked against PyTorch with onnxruntime when it is installed."""
    return write_onnx(model, check_output_file(out))


def export_split(
    *, study: optuna.Study, split: str = "test", out: str | Path, studies_dir: str | Path = "studies"
) -> Path:
    """The images of the study's ``test`` (``--test-fraction``) or ``validation`` split, no trial trained on them,
    as ``out/<class>/<image>.png``: a labelled folder to ``predict``. Replaces what ``out`` held; returns it."""
    return write_split(study, split=split, out=Path(out), studies_dir=studies_dir)
