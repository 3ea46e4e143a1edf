"""Studies: where they are stored, their names and folders, and reading them.

Naming, listing and loading studies and ranking their trials.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from lrtune.config import DIGITS_SETS, OBJECT, Config, part_label
from lrtune.errors import StorageError
from lrtune.storage.backend import mask_url, open_storage, resilient
from lrtune.storage.sqlite import sqlite_path

DB_NAME = "lrtune.db"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def default_storage_url(studies_dir: str | Path) -> str:
    return f"sqlite:///{Path(studies_dir) / DB_NAME}"


def storage_url(cfg: Config) -> str:
    """``cfg.storage``, or the default SQLite file under ``cfg.studies_dir``."""
    return cfg.storage or default_storage_url(cfg.studies_dir)


def open_existing_storage(url: str) -> RDBStorage:
    """Open a storage to read it; a missing SQLite file is an error, never created."""
    path = sqlite_path(url)
    if path is not None and not Path(path).is_file():
        raise StorageError(f"no study database at {path}; run `lrtune search` first")
    return open_storage(url)


def storage_label(study: optuna.Study) -> str:
    """The study's storage URL with any password masked, or its type when it has no URL."""
    storage = study._storage
    backend = getattr(storage, "_backend", storage)  # Optuna wraps an RDBStorage in a cache
    url = getattr(backend, "url", None)
    return mask_url(str(url)) if url else type(backend).__name__


def study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    return [s.study_name for s in storage.get_all_studies()]


CONFIRM_SUFFIX = ".confirm"  # the companion study that holds a study's confirmation runs


def main_study_name(name: str, names: list[str]) -> str:
    """The study a companion (``<study>.confirm``) belongs to; any other name itself."""
    base = name.removesuffix(CONFIRM_SUFFIX)
    return base if base != name and base in names else name


def latest_study_name(storage: optuna.storages.BaseStorage) -> str | None:
    """The study whose last trial started or finished most recently (its confirmation runs count as its own);
    studies without trials come last."""
    best: tuple[float, int, str] | None = None
    studies = storage.get_all_studies()
    names = [s.study_name for s in studies]
    for order, summary in enumerate(studies):
        stamps = [
            (t.datetime_complete or t.datetime_start).timestamp()
            for t in storage.get_all_trials(summary._study_id, deepcopy=False)
            if (t.datetime_complete or t.datetime_start) is not None
        ]
        key = (max(stamps) if stamps else float("-inf"), order, main_study_name(summary.study_name, names))
        if best is None or key > best:
            best = key
    return best[2] if best else None


def load_study(storage: optuna.storages.BaseStorage, name: str | None = None) -> optuna.Study:
    """Study ``name``, or the most recently active one when ``name`` is None."""
    names = study_names(storage)
    if name is None:
        name = latest_study_name(storage)
        if name is None:
            raise StorageError(f"no studies in {mask_url(str(storage.url))}")
    if name not in names:
        listed = ", ".join(names) if names else "none"
        raise StorageError(f"unknown study {name!r} (existing studies: {listed})")
    return optuna.load_study(study_name=name, storage=storage)


def default_study_name(cfg: Config) -> str:
    if cfg.data in DIGITS_SETS or cfg.data.startswith(OBJECT):
        data = part_label(cfg.data)
    else:
        data = Path(cfg.data.rstrip("/\\")).stem or "data"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{data}-{part_label(cfg.model)}")


def study_dir(studies_dir: str | Path, study_name: str) -> Path:
    """Artifacts of one study (report, trial checkpoints and weights), always inside ``studies_dir``."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", study_name).lstrip(".") or "_"
    return Path(studies_dir) / safe


def count_finished(study: optuna.Study, states: tuple[TrialState, ...] = FINISHED) -> int:
    """Trials in ``states`` (complete and pruned): one query on lrtune's storage, which need not load them."""
    backend = resilient(study._storage)
    if backend is not None:
        return len(backend.trial_ids(study._study_id, states))
    return len(study.get_trials(deepcopy=False, states=states))


def best_first(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Trials with a value, highest first; ties go to the earlier trial."""
    return sorted((t for t in trials if t.value is not None), key=lambda t: (-t.value, t.number))


def top_trials(study: optuna.Study, n: int = 10) -> list[FrozenTrial]:
    """Finished trials with a value, best first."""
    return best_first(study.get_trials(deepcopy=False, states=FINISHED))[:n]


def summarize_studies(storage: optuna.storages.BaseStorage) -> list[dict[str, Any]]:
    """One row per study: finished, pruned, failed and running counts, and the best value."""
    rows = []
    for summary in storage.get_all_studies():
        trials = storage.get_all_trials(summary._study_id, deepcopy=False)
        done = [t for t in trials if t.state in FINISHED]
        values = [t.value for t in done if t.value is not None]
        rows.append(
            {
                "study": summary.study_name,
                "finished": len(done),
                "pruned": sum(t.state == TrialState.PRUNED for t in trials),
                "failed": sum(t.state == TrialState.FAIL for t in trials),
                "running": sum(t.state == TrialState.RUNNING for t in trials),
                "best": max(values) if values else None,
            }
        )
    return rows


def trial_role(trial: FrozenTrial) -> str:
    """``baseline`` (the LR a user would start with), an LR-free baseline's optimizer name, or ``tuned``."""
    if trial.user_attrs.get("lr_free"):
        return str(trial.user_attrs["lr_free"])
    return "baseline" if trial.user_attrs.get("baseline") else "tuned"


def completed_roles(study: optuna.Study) -> list[tuple[int, str, float]]:
    """(number, role, value) of every complete trial."""
    return [(t.number, trial_role(t), float(t.value)) for t in study.get_trials(deepcopy=False)
            if t.state == TrialState.COMPLETE and t.value is not None]
