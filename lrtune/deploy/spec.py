"""A trial to reuse: its config, parameters, seed and best epoch, from a study or from an exported file."""

from __future__ import annotations

import json
import platform
import tomllib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lrtune import config as config_mod
from lrtune.config import Config
from lrtune.errors import ConfigError, ModelError, StorageError
from lrtune.storage import mask_url, study_dir, top_trials
from lrtune.training import checkpoints
from lrtune.training.run import Hyperparams

FORMATS = ("json", "yaml", "toml")
TOML_LEFT_OUT = ("storage", "studies_dir", "force")  # where and how to run: the command line's to say
TRIAL_TABLE = "trial"  # the table of an exported TOML that ``lrtune train --config`` reads


@dataclass(frozen=True)
class TrialSpec:
    """What retraining a trial needs, and where it came from."""

    study: str
    trial: int
    config: Config  # the study's config: its ``epochs`` is the horizon of the trial's schedule
    params: Hyperparams
    seed: int
    best_epoch: int
    value: float | None
    val_curve: list[float] = field(default_factory=list)  # validation value of the study's metric per epoch
    data_summary: dict[str, Any] = field(default_factory=dict)
    chosen_by: str = ""  # why this trial, when it is not the one asked for nor the single-run best


def confirmed_winner(study: optuna.Study) -> tuple[int, str] | None:
    """The trial ``lrtune confirm`` ranked first (all its runs done), and a line that says so; None without one."""
    record = study.user_attrs.get("confirmed")
    if not isinstance(record, dict) or not record.get("complete") or record.get("winner") is None:
        return None
    first = record["configs"][0]
    label = config_mod.metric_label(record.get("metric"))
    return int(record["winner"]), (f"the confirmed winner: mean validation {label} {first['mean']:.4f} over "
                                   f"{record['seeds']} seeds")


def find_trial(study: optuna.Study, number: int | None, *, confirmed: bool = False) -> FrozenTrial:
    """Trial ``number`` of ``study``, or when ``number`` is None its confirmed winner (with ``confirmed``, when
    ``lrtune confirm`` ranked one) or else its best finished trial."""
    winner = confirmed_winner(study) if confirmed and number is None else None
    if winner is not None:
        number = winner[0]
    if number is None:
        best = top_trials(study, 1)
        if not best:
            raise StorageError(f"study {study.study_name!r} has no finished trial yet")
        return best[0]
    trials = study.get_trials(deepcopy=False)
    if not 0 <= number < len(trials):
        raise StorageError(f"study {study.study_name!r} has no trial {number} (trials 0 to {len(trials) - 1})")
    trial = trials[number]
    if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED) or not trial.intermediate_values:
        raise StorageError(f"trial {number} of study {study.study_name!r} is {trial.state.name.lower()}, not finished")
    return trial


def spec_from_trial(study: optuna.Study, trial: FrozenTrial) -> TrialSpec:
    stored = study.user_attrs.get("config")
    if not isinstance(stored, dict):
        raise StorageError(f"study {study.study_name!r} has no stored config; it was not made by lrtune search")
    values = dict(sorted(trial.intermediate_values.items()))
    best = trial.user_attrs.get("best") or {}
    best_epoch = int(best["epoch"]) if "epoch" in best else max(values, key=lambda e: (values[e], -e))
    return TrialSpec(
        study=study.study_name,
        trial=trial.number,
        config=config_mod.from_dict(stored),
        params=Hyperparams.from_dict(trial.params),
        seed=int(trial.user_attrs["seed"]),
        best_epoch=best_epoch,
        value=trial.value,
        val_curve=[float(v) for v in values.values()],
        data_summary=dict(study.user_attrs.get("dataset") or {}),
    )


def trial_weights(study: optuna.Study, trial: FrozenTrial, studies_dir: str | Path) -> Path:
    """The trial's ``best.pt``; a ``ModelError`` saying which ``--keep`` keeps it when it is not there."""
    path = checkpoints.trial_dir(study_dir(studies_dir, study.study_name), trial.number) / checkpoints.BEST
    if path.is_file():
        return path
    keep = (study.user_attrs.get("config") or {}).get("keep", "best")
    best = top_trials(study, 1)
    if best and best[0].number == trial.number:
        hint = "--keep best (the default) or --keep all keeps the best trial's"
    else:
        hint = "only --keep all keeps the weights of a trial that is not the best"
    raise ModelError(
        f"trial {trial.number} of study {study.study_name!r} kept no weights ({path} is missing; "
        f"the search ran with --keep {keep}, and {hint}); retrain it with `lrtune train --trial {trial.number}`"
    )


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("lrtune", "torch", "timm", "optuna"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def exported(spec: TrialSpec) -> dict[str, Any]:
    """The best configuration as plain data: trial, parameters, training config, value, dataset, versions."""
    return {
        TRIAL_TABLE: {
            "study": spec.study,
            "number": spec.trial,
            "value": spec.value,
            "best_epoch": spec.best_epoch,
            "seed": spec.seed,
            "params": spec.params.to_dict(),
            **({"chosen_by": spec.chosen_by} if spec.chosen_by else {}),
        },
        "config": {**config_mod.to_dict(spec.config), "storage": mask_url(spec.config.storage)},
        "dataset": spec.data_summary,
        "versions": versions(),
    }


def format_config(spec: TrialSpec, fmt: str) -> str:
    """``json``, ``yaml`` or ``toml``; the TOML is a config file that ``search`` and ``train`` accept."""
    data = exported(spec)
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    if fmt == "yaml":
        import yaml

        return yaml.safe_dump(data, sort_keys=False)
    if fmt == "toml":
        return _toml(spec, data)
    raise ConfigError(f"unknown format {fmt!r} (valid: {', '.join(FORMATS)}, onnx)")


def _toml(spec: TrialSpec, data: dict[str, Any]) -> str:
    """The study's config with the search space narrowed to this trial, then the trial's own tables."""
    values = {k: v for k, v in data["config"].items() if k not in TOML_LEFT_OUT}
    p = spec.params
    values.update(lr_min=p.lr, lr_max=p.lr, schedulers=[p.scheduler], losses=[p.loss], accum=[p.accum])
    values["study"] = f"{spec.study}-best"
    lines = [
        f"# lrtune: trial {spec.trial} of study {spec.study}, validation {config_mod.metric_label(spec.config.metric)} "
        f"{spec.value} at epoch {spec.best_epoch}",
        "# `lrtune train --config FILE` retrains this trial; `lrtune search --config FILE` searches only around it.",
    ]
    if spec.chosen_by:
        lines.insert(1, f"# {spec.chosen_by}")
    lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    for table in (TRIAL_TABLE, "dataset", "versions"):
        body = {k: v for k, v in data[table].items() if v is not None and not isinstance(v, dict)}
        lines += ["", f"[{table}]"] + [f"{k} = {_toml_value(v)}" for k, v in body.items()]
    lines += ["", f"[{TRIAL_TABLE}.params]"] + [f"{k} = {_toml_value(v)}" for k, v in p.to_dict().items()]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if not isinstance(value, float) or value == value else "nan"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def spec_from_file(path: str | Path, cfg: Config) -> TrialSpec | None:
    """The trial of a TOML written by ``lrtune export --format toml``, with ``cfg`` as its config; None without one."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return None  # config.resolve has already reported a bad file
    trial = raw.get(TRIAL_TABLE)
    if trial is None:
        return None
    try:
        return TrialSpec(
            study=str(trial["study"]),
            trial=int(trial["number"]),
            config=cfg,
            params=Hyperparams.from_dict(trial["params"]),
            seed=int(trial["seed"]),
            best_epoch=int(trial["best_epoch"]),
            value=float(trial["value"]) if "value" in trial else None,
            data_summary=dict(raw.get("dataset") or {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"config file {path}: the [{TRIAL_TABLE}] table is incomplete ({exc})") from None
