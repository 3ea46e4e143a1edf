"""Confirmation: a study's top configurations and its baselines trained again from fresh seeds, ranked by the mean.

A search picks its winner by one noisy number, one seed's best validation
value. ``confirm`` retrains the top ``top`` tuned configurations, the LR
baseline and any LR-free baselines with ``seeds`` new seeds each (the same
seeds for every configuration, so differences are paired), each run the very
``TrainingRun`` a trial runs, to the same epoch count, and ranks them by the
mean over seeds with a 95% t-interval.

The runs are trials of a companion study, ``<study>.confirm``, in the same
storage: they checkpoint, are retried after a crash and run on any machine
exactly as trials do, while the study's own trial count, sampler and pruner
never see them. The ranking is stored on the study (``confirmed``) for
``show``, the report, ``train`` and ``export``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from lrtune.config import Config
from lrtune.errors import ConfigError, StudyError
from lrtune.progress import ProgressSink
from lrtune.storage import CONFIRM_SUFFIX, best_first, study_dir
from lrtune.storage import trial_role as role
from lrtune.training import checkpoints
from lrtune.training.threads import kept_threads
from lrtune.tuner import recovery

ATTR = "confirmed"
SEED_BASE = 50_000  # confirmation seeds start here, above any trial's own seed offset


def candidates(study: optuna.Study, top: int) -> list[FrozenTrial]:
    """The top ``top`` complete tuned trials, then the complete LR baseline and LR-free baselines."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    tuned = [t for t in best_first(complete) if role(t) == "tuned"][:top]
    return tuned + [t for t in complete if role(t) != "tuned"]


def run_seed(cfg: Config, index: int) -> int:
    return cfg.seed * 100_003 + SEED_BASE + index


def companion(study: optuna.Study) -> optuna.Study:
    """The study that holds ``study``'s confirmation runs, made on first use."""
    name = study.study_name + CONFIRM_SUFFIX
    other = optuna.create_study(study_name=name, storage=study._storage, direction="maximize", load_if_exists=True,
                                pruner=optuna.pruners.NopPruner(), sampler=optuna.samplers.RandomSampler(seed=0))
    for key in ("config", "dataset"):
        if key not in other.user_attrs and key in study.user_attrs:
            other.set_user_attr(key, study.user_attrs[key])
    other.set_user_attr("confirms", study.study_name)
    return other


def plan(study: optuna.Study, runs: optuna.Study, cfg: Config, *, top: int, seeds: int) -> int:
    """Queue every (configuration, seed) run the companion has not got yet; returns how many are queued."""
    had = {(t.user_attrs.get("confirm_of"), t.user_attrs.get("seed_index"))
           for t in runs.get_trials(deepcopy=False) if t.state != TrialState.FAIL}
    for trial in candidates(study, top):
        for index in range(seeds):
            if (trial.number, index) in had:
                continue
            attrs = {"confirm_of": trial.number, "seed_index": index, "seed": run_seed(cfg, index)}
            if trial.user_attrs.get("lr_free"):
                attrs["lr_free"] = trial.user_attrs["lr_free"]
            runs.enqueue_trial(dict(trial.params), user_attrs=attrs)
    return len(runs.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def run_confirm(
    cfg: Config,
    *,
    study: optuna.Study,
    top: int,
    seeds: int,
    stop: Callable[[], bool],
    progress: ProgressSink | None = None,
) -> dict[str, Any]:
    """Run (or resume) the confirmation of ``study`` and store its ranking on it; returns the record."""
    from lrtune.tuner.driver import optimize
    from lrtune.tuner.trial import Objective, use_threads

    if top < 1 or seeds < 1:
        raise ConfigError(f"--top and --seeds must be positive, got {top} and {seeds}")
    if not candidates(study, top):
        raise StudyError(f"study {study.study_name!r} has no complete trial to confirm")
    runs = companion(study)
    recovery.recover_orphans(runs)
    waiting = plan(study, runs, cfg, top=top, seeds=seeds)
    folder = study_dir(cfg.studies_dir, runs.study_name)
    # Every run keeps its best weights until the test split has scored them; the count is the companion's own.
    run_cfg = dataclasses.replace(cfg, keep="all", trials=10**9, pruner="none")
    objective = None
    if waiting:
        if progress is not None:
            progress.message(f"confirming {len(candidates(study, top))} configurations with {seeds} seeds each: "
                             f"{waiting} runs to go (study {runs.study_name!r})")
            progress.start(total=waiting, finished=0, pruned=0, best=None)
        objective = Objective(run_cfg, study_dir=folder, stop=stop, progress=progress)
        objective.checkpoint_every_epoch = True  # a crash loses at most the running epoch
        with kept_threads():
            use_threads(objective, say=progress.message if progress is not None else None)
            optimize(runs, objective, run_cfg, stop=stop, progress=progress, n_trials=waiting)
        if stop():
            return study.user_attrs.get(ATTR) or {}
    if cfg.test_fraction and _unscored(runs):  # also what a run killed before its scoring left
        _score_test(runs, objective or Objective(run_cfg, study_dir=folder, stop=stop), folder)
    record = ranking(study, runs, cfg, top=top, seeds=seeds)
    study.set_user_attr(ATTR, record)
    return record


def _unscored(runs: optuna.Study) -> bool:
    scored = runs.user_attrs.get("test_scores") or {}
    return any(str(t.number) not in scored for t in runs.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def _score_test(runs: optuna.Study, objective: Any, folder: Path) -> None:
    """Each complete run's best weights on the test split, once; the weights go when they are scored."""
    from lrtune.tuner.holdout import predict_test

    scored = dict(runs.user_attrs.get("test_scores") or {})
    metric = objective.cfg.metric
    for trial in runs.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if str(trial.number) in scored:
            continue
        path = checkpoints.trial_dir(folder, trial.number) / checkpoints.BEST
        if path.is_file():
            scored[str(trial.number)] = predict_test(path, objective.cfg, objective.data, objective.amp).value(metric)
            checkpoints.remove(folder, trial.number)
    runs.set_user_attr("test_scores", scored)


def interval(values: list[float]) -> list[float] | None:
    """The 95% t-interval of the mean; None from fewer than two values."""
    if len(values) < 2:
        return None
    from scipy.stats import t

    half = float(t.ppf(0.975, len(values) - 1)) * float(np.std(values, ddof=1)) / math.sqrt(len(values))
    mean = float(np.mean(values))
    return [round(mean - half, 6), round(mean + half, 6)]


def ranking(study: optuna.Study, runs: optuna.Study, cfg: Config, *, top: int, seeds: int) -> dict[str, Any]:
    """JSON-safe: every configuration's runs, mean and interval, best mean first; the winners; the test split."""
    done = runs.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    tests = runs.user_attrs.get("test_scores") or {}
    configs = []
    for trial in candidates(study, top):
        mine = sorted((t for t in done if t.user_attrs.get("confirm_of") == trial.number),
                      key=lambda t: t.user_attrs["seed_index"])
        values = [float(t.value) for t in mine]
        entry = {"trial": trial.number, "role": role(trial), "params": dict(trial.params), "single_run": trial.value,
                 "seeds": [t.user_attrs["seed_index"] for t in mine], "runs": values,
                 "mean": float(np.mean(values)) if values else None, "ci95": interval(values)}
        test = [float(tests[str(t.number)]) for t in mine if str(t.number) in tests]
        if test:
            entry.update(test_runs=test, test_mean=float(np.mean(test)), test_ci95=interval(test))
        configs.append(entry)
    configs.sort(key=lambda c: (c["mean"] is None, -(c["mean"] or 0.0), c["trial"]))
    single = best_first(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))[0].number
    winner = configs[0]["trial"] if configs and configs[0]["mean"] is not None else None
    record = {"metric": cfg.metric, "top": top, "seeds": seeds, "configs": configs, "winner": winner,
              "single_run_winner": single, "still_first": winner == single,
              "complete": all(len(c["runs"]) == seeds for c in configs)}
    ranked = [c for c in configs if c["mean"] is not None]
    tuned = next((c for c in ranked if c["role"] in ("tuned", "baseline")), None)
    lr_free = next((c for c in ranked if c["role"] not in ("tuned", "baseline")), None)
    if tuned is not None and lr_free is not None:
        gain = paired_gain(record, tuned["trial"], lr_free["trial"])
        if gain is not None:
            record["against_lr_free"] = {"tuned": tuned["trial"], "lr_free": lr_free["trial"],
                                         "name": lr_free["role"], "gain": gain[0], "ci95": gain[1]}
    return record


def paired_gain(record: dict[str, Any], a: int, b: int) -> tuple[float, list[float] | None] | None:
    """Configuration ``a`` minus ``b`` over the seeds both ran: the mean difference and its 95% interval."""
    by_trial = {c["trial"]: dict(zip(c["seeds"], c["runs"])) for c in record.get("configs", [])}
    if a not in by_trial or b not in by_trial:
        return None
    common = sorted(set(by_trial[a]) & set(by_trial[b]))
    if not common:
        return None
    diffs = [by_trial[a][s] - by_trial[b][s] for s in common]
    return float(np.mean(diffs)), interval(diffs)


def confirm_study(
    study: optuna.Study, *, top: int, seeds: int, device: str = "auto", studies_dir: str | Path = "studies",
    progress: ProgressSink | None = None,
) -> dict[str, Any]:
    """Confirm ``study`` with its stored config (on ``device``), through its storage with heartbeats on.

    Ctrl-C and SIGTERM stop the running run at its next micro-batch and queue
    it again; ``SearchInterrupted`` then says which signal it was.
    """
    from lrtune import config as config_mod
    from lrtune.errors import SearchInterrupted
    from lrtune.storage import open_storage, resilient
    from lrtune.tuner.driver import SIGNAL_NAMES, quiet_optuna
    from lrtune.tuner.interrupt import CatchSignals

    if study.study_name.endswith(CONFIRM_SUFFIX) and "confirms" in study.user_attrs:
        raise StudyError(f"study {study.study_name!r} holds the confirmation runs of "
                         f"{study.user_attrs['confirms']!r}; confirm that one")
    stored = study.user_attrs.get("config")
    if not isinstance(stored, dict):
        raise StudyError(f"study {study.study_name!r} has no stored config; it was not made by lrtune search")
    backend = resilient(study._storage)
    url = backend.url if backend is not None else str(getattr(study._storage, "url", ""))
    cfg = config_mod.from_dict({**stored, "device": device, "studies_dir": str(studies_dir), "storage": url,
                                "study": study.study_name, "workers": 1})
    with quiet_optuna():
        storage = open_storage(url, heartbeat=recovery.heartbeat(cfg), retry_for=cfg.storage_retry)
        study = optuna.load_study(study_name=study.study_name, storage=storage)
        with CatchSignals() as signals:
            record = run_confirm(cfg, study=study, top=top, seeds=seeds, stop=signals.flag, progress=progress)
        if record.get("winner") is not None and record.get("complete") and cfg.track:
            from lrtune.tuner.tracking import tag_winner

            tag_winner(study, cfg, int(record["winner"]), progress.message if progress is not None else lambda t: None)
        if signals.flag.signum is not None:
            name = SIGNAL_NAMES.get(signals.flag.signum, str(signals.flag.signum))
            raise SearchInterrupted(f"confirmation interrupted by {name}; the running run continues from its last "
                                    "epoch when the same confirm runs again", signum=signals.flag.signum)
    return record
