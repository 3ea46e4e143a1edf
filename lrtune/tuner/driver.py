"""The search driver: it owns the study's budget, its workers and the recovery of dead trials.

``run_search`` is what ``lrtune.search`` and ``lrtune search`` run: open the
storage, check the config against the study's, stop early when the study is
complete, queue the baseline, re-queue orphans, then run trials in this
process or in local workers until the study holds ``cfg.trials`` finished ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import warnings
from pathlib import Path
from typing import Any, Callable, Collection, Iterator

import optuna
from optuna.trial import FrozenTrial, TrialState

from lrtune import config as config_mod
from lrtune.config import Config
from lrtune.errors import ConfigError, SearchInterrupted, StudyError
from lrtune.progress import ConsoleProgress, ProgressSink
from lrtune.tuner import faults, holdout, recovery, samplers
from lrtune.tuner.fusion import fused_trials
from lrtune.tuner.interrupt import CatchSignals
from lrtune.tuner.space import baseline_params
from lrtune.storage import (
    FINISHED,
    best_first,
    count_finished,
    default_study_name,
    mask_url,
    open_storage,
    pop_waiting_by_id,
    storage_url,
    study_dir,
    study_names,
)
from lrtune.training import checkpoints

SIGNAL_NAMES = {2: "SIGINT", 15: "SIGTERM"}


def config_changes(study: optuna.Study, cfg: Config) -> list[str]:
    """How ``cfg`` differs from the study's stored config in what trials compute.

    Raises ``StudyError`` when it differs and ``cfg.force`` is off. Writes nothing.
    """
    stored = study.user_attrs.get("config")
    if stored is None:
        return []
    changes = config_mod.diff(stored, config_mod.to_dict(cfg))
    if changes and not cfg.force:
        raise StudyError(
            f"study {study.study_name!r} was made with another config ({'; '.join(changes)}); "
            "use the same options to resume it, --force to resume anyway, or --study NAME for a new study"
        )
    return changes


def record_config(study: optuna.Study, cfg: Config) -> None:
    """Store the resolved config on a new study, and each forced change in ``config_history``.

    The storage URL is stored with its password masked.
    """
    stored = study.user_attrs.get("config")
    changes = config_changes(study, cfg)
    current = config_mod.to_dict(cfg)
    current["storage"] = mask_url(current["storage"])
    if changes:
        history = list(study.user_attrs.get("config_history", []))
        history.append({"config": stored, "changes": changes})
        study.set_user_attr("config_history", history)
    if stored is None or changes:
        study.set_user_attr("config", current)
        study.set_user_attr("fingerprint", config_mod.fingerprint(current))


def record_dataset(study: optuna.Study, dataset: dict[str, Any]) -> None:
    """Store the dataset's summary on a new study; refuse data whose classes or counts differ from it."""
    stored = study.user_attrs.get("dataset")
    if stored is None:
        study.set_user_attr("dataset", dataset)
        return
    changes = config_mod.dataset_changes(stored, dataset)
    if changes:
        raise StudyError(
            f"study {study.study_name!r} was made with other data ({'; '.join(changes)}); "
            "point --data at the same images"
        )


def prepare_study(cfg: Config, *, dataset: dict[str, Any], storage: optuna.storages.BaseStorage) -> optuna.Study:
    """Create or load the study, check its config, record the dataset and queue the baseline."""
    name = cfg.study or default_study_name(cfg)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise StudyError(f"study {name!r} exists and does not maximize; pick another --study")
    samplers.attach(study, cfg)
    record_dataset(study, dataset)
    record_config(study, cfg)
    trials = study.get_trials(deepcopy=False)
    if not trials:
        baseline = baseline_params(cfg)
        study.set_user_attr("baseline", baseline)
        # Workers starting together on a new study would each queue it: once is enough.
        study.enqueue_trial(baseline, user_attrs={"baseline": True}, skip_if_exists=True)
    queued = {t.user_attrs.get("lr_free") for t in trials}
    for name in cfg.baselines:  # each LR-free baseline once, also when added to a study later (--force)
        if name not in queued:
            study.enqueue_trial({"optimizer": name}, user_attrs={"lr_free": name}, skip_if_exists=True)
    return study


def keep_weights(cfg: Config, folder: Path) -> Callable[[optuna.Study, FrozenTrial], None]:
    """Study callback: with ``keep=best`` only the study's best trial keeps its weights.

    With a test split the baseline keeps its weights too: the test split scores both.
    """

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        if cfg.keep != "best":
            return
        files = checkpoints.weight_files(folder)
        if len(files) < 2:
            return
        # The best of the finished trials that have weights: a pruned trial may
        # have a higher value than every complete one, but no weights to keep.
        finished = [t for t in study.get_trials(deepcopy=False, states=FINISHED) if t.number in files]
        for t in best_first(finished)[1:]:
            if not (cfg.test_fraction and t.user_attrs.get("baseline")):
                checkpoints.remove(folder, t.number)

    return callback


def report_trial(progress: ProgressSink | None) -> Callable[[optuna.Study, FrozenTrial], None]:
    """Study callback: tell ``progress`` how each trial ended."""

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        if progress is not None:
            reason = str(trial.user_attrs.get("reason") or "")
            progress.trial_done(trial.number, trial.state.name, trial.value, dict(trial.params), reason)

    return callback


def stop_at(trials: int) -> Callable[[optuna.Study, FrozenTrial], None]:
    """Study callback: stop once the study holds ``trials`` finished trials."""

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        if count_finished(study) >= trials:
            study.stop()

    return callback


def optimize(
    study: optuna.Study, objective: Any, cfg: Config, *, stop: Callable[[], bool], progress: ProgressSink | None,
    n_trials: int | None = None,
) -> None:
    """Run trials until the study holds ``cfg.trials`` finished ones (or ``n_trials`` more have run), the timeout
    passes, or a stop."""
    from lrtune.tuner.trial import TrialFailed

    def stop_when_asked(study: optuna.Study, trial: FrozenTrial) -> None:
        if stop():
            study.stop()

    tracking = getattr(objective, "tracking", None)
    pop_waiting_by_id(study)
    try:
        study.optimize(
            objective,
            n_trials=n_trials,
            timeout=cfg.timeout or None,
            catch=(TrialFailed,),
            callbacks=[
                report_trial(progress),
                keep_weights(cfg, study_dir(cfg.studies_dir, study.study_name)),
                stop_at(cfg.trials),
                stop_when_asked,
                *([tracking.callback()] if tracking is not None else []),
            ],
        )
    except Exception as exc:
        # A fault of the machine (a full disk, a storage gone) also breaks Optuna's own bookkeeping of the trial
        # after it: the fault is what to report.
        fault = getattr(objective, "fault", None) or faults.fatal_cause(exc)
        if fault is not None and fault is not exc:
            raise fault from None
        raise


def run_trials(study: optuna.Study, objective: Any, cfg: Config, *, stop: Callable[[], bool],
               progress: ProgressSink | None, say: Callable[[str], None], worker: int = 0) -> None:
    """This process's trials: one at a time, or ``--fuse``'s group of them side by side."""
    with _frozen_heap():
        _run_trials(study, objective, cfg, stop=stop, progress=progress, say=say, worker=worker)


@contextlib.contextmanager
def _frozen_heap() -> Iterator[None]:
    """Within, what the process already holds (torch, timm, the data, the study) is left out of the garbage
    collector's full passes, which would otherwise scan it all again every few trials, holding up every thread;
    afterwards it is collected as before. A process that froze its own heap keeps it as it was."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _run_trials(study: optuna.Study, objective: Any, cfg: Config, *, stop: Callable[[], bool],
                progress: ProgressSink | None, say: Callable[[str], None], worker: int = 0) -> None:
    from lrtune.tuner.fusion import optimize_fused, resolve_fuse

    k = resolve_fuse(cfg, objective, study, say)
    if k == 1 and not objective.threads_probed:  # trials one at a time after all: their threads, measured
        from lrtune.tuner.trial import use_threads

        use_threads(objective, workers=max(1, cfg.workers), say=say)
    if k > 1:
        optimize_fused(study, objective, cfg, k, stop=stop, progress=progress, worker=worker)
    else:
        optimize(study, objective, cfg, stop=stop, progress=progress)


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's own log lines and experimental warnings off, unless its verbosity was raised to DEBUG."""
    level = optuna.logging.get_verbosity()
    if level < logging.DEBUG + 1:
        yield
        return
    optuna.logging.set_verbosity(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(level)


def _complete(study: optuna.Study, cfg: Config) -> bool:
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return count_finished(study) >= cfg.trials and not running


def run_search(
    cfg: Config,
    *,
    progress: ProgressSink | None = None,
    verbosity: int = 0,
    given: Collection[str] | None = None,
) -> optuna.Study:
    """Run, or resume, the study ``cfg`` names until it holds ``cfg.trials`` finished trials.

    With ``given`` (the fields the user chose), a study that exists lends its
    stored config to every other field: a worker joins it with nothing but
    ``--storage`` and ``--study``.

    Ctrl-C and SIGTERM stop the running trial at its next micro-batch and queue
    it to continue; ``SearchInterrupted`` then says which signal it was.
    ``verbosity`` is what local worker processes print on stderr.
    """
    config_mod.validate(cfg)
    say = progress.message if progress is not None else (lambda text: None)
    name = cfg.study or default_study_name(cfg)
    url = storage_url(cfg)
    with quiet_optuna():
        samplers.check_names(cfg)
        storage = open_storage(url, heartbeat=recovery.heartbeat(cfg), retry_for=cfg.storage_retry,
                               trials=fused_trials(cfg), say=say)
        if name in study_names(storage):
            existing = optuna.load_study(study_name=name, storage=storage)
            if given is not None:
                cfg = config_mod.adopt(existing.user_attrs.get("config") or {}, cfg, given)
                if isinstance(progress, ConsoleProgress):  # the values it shows are the study's metric
                    progress.metric = config_mod.metric_label(cfg.metric)
            config_changes(existing, cfg)
            if _complete(existing, cfg) and holdout.is_current(existing, cfg):  # before torch, the data or a model
                say(f"study {name!r} already has {count_finished(existing)} finished trials (--trials {cfg.trials}); nothing to run")
                return existing
        from lrtune.training.threads import kept_threads  # imports torch: after the early exit

        with CatchSignals() as signals, kept_threads():  # the caller's thread counts, whatever the search chose
            study = _search(cfg, storage, name, url, progress, verbosity, signals)
            if signals.flag.signum is not None:
                signame = SIGNAL_NAMES.get(signals.flag.signum, str(signals.flag.signum))
                raise SearchInterrupted(
                    f"search interrupted by {signame}; the running trial continues from its last epoch "
                    "when the same search runs again",
                    signum=signals.flag.signum,
                )
    return study


def _search(
    cfg: Config,
    storage: optuna.storages.BaseStorage,
    name: str,
    url: str,
    progress: ProgressSink | None,
    verbosity: int,
    signals: CatchSignals,
) -> optuna.Study:
    from lrtune.tuner import lr_range
    from lrtune.tuner.tracking import attach as attach_tracking
    from lrtune.tuner.trial import Objective, use_threads  # imports torch, timm and albumentations: after the early exit
    from lrtune.tuner.workers import run_workers
    from lrtune.training.loop import Interrupted

    say = progress.message if progress is not None else (lambda text: None)
    cfg = _workers_for_objects(cfg)
    objective = Objective(cfg, study_dir=study_dir(cfg.studies_dir, name), stop=signals.flag, progress=progress)
    study = prepare_study(cfg, dataset=objective.data.summary(), storage=storage)
    use_threads(objective, say=say, probe=cfg.fuse == 1)  # local workers choose their own share when they start
    tracking = attach_tracking(objective, study, cfg, say)  # the study's parent run before any worker's trial
    lr_range.seed_study(study, cfg, data=objective.data, amp=objective.amp, progress=progress)
    recovered = recovery.recover_orphans(study)
    if recovered:
        say(f"re-queued trial(s) {', '.join(map(str, recovered))} left running by a dead process")
    checkpoints.sweep(objective.study_dir)
    faults.check_free_space(cfg, Path(cfg.studies_dir), objective.model_bytes, say)
    done = count_finished(study)
    if done >= cfg.trials:
        say(f"study {name!r} already has {done} finished trials (--trials {cfg.trials}); nothing to run")
        _score(study, cfg, objective, say)
        return study
    verb = "resuming" if done else "starting"
    say(
        f"{verb} study {name!r}: {done} of {cfg.trials} trials finished, {cfg.trials - done} to go "
        f"(storage {mask_url(url)}, device {objective.device})"
    )
    if progress is not None:
        from lrtune.tuner.estimate import estimate_search

        say(estimate_search(cfg, data=objective.data, amp=objective.amp, finished=done).line())
        finished = study.get_trials(deepcopy=False, states=FINISHED)
        values = [t.value for t in finished if t.state == TrialState.COMPLETE and t.value is not None]
        pruned = sum(t.state == TrialState.PRUNED for t in finished)
        progress.start(total=cfg.trials, finished=len(finished), pruned=pruned, best=max(values, default=None))
    if cfg.workers == 0:
        cfg = resolve_auto_workers(cfg, objective, say)
    try:
        if cfg.workers > 1:
            run_workers(cfg, name, verbosity, signals)
        else:
            run_trials(study, objective, cfg, stop=signals.flag, progress=progress, say=say)
    except Interrupted:
        pass
    for line in tracking.summary() if tracking is not None else []:
        say(line)
    if signals.flag.signum is None:
        _score(study, cfg, objective, say)
    return study


def _workers_for_objects(cfg: Config) -> Config:
    """Local workers import the model and losses by reference: Python objects given to the API train in this
    process alone (``--workers auto`` becomes 1, a count over 1 is refused)."""
    from lrtune.training.references import OBJECT

    objects = [part[len(OBJECT):] for part in (cfg.model, *cfg.losses) if part.startswith(OBJECT)]
    if not objects or cfg.workers == 1:
        return cfg
    if cfg.workers > 1:
        raise ConfigError(f"--workers {cfg.workers} starts processes that import the model and losses, and "
                          f"{objects[0]!r} is a Python object: name it as a 'module:callable' reference, or use one worker")
    return dataclasses.replace(cfg, workers=1)


def resolve_auto_workers(cfg: Config, objective: Any, say: Callable[[str], None]) -> Config:
    """``--workers auto``: a short probe of the baseline's training step on this device, then the count."""

    import torch

    from lrtune.training import memory
    from lrtune.training.probe import probe_step
    from lrtune.training.run import Hyperparams, TrainingRun
    from lrtune.tuner.workers import auto_workers

    device = objective.device
    if device.type == "cuda":
        run = TrainingRun(cfg, Hyperparams.from_dict(baseline_params(cfg)), data=objective.data, amp=objective.amp,
                          seed=cfg.seed)
        step_s, peak = probe_step(run)
        del run
        torch.cuda.empty_cache()
    else:
        step_s, peak = 0.0, 0
    n_gpus = torch.cuda.device_count() if cfg.device in ("auto", "cuda") else 1
    workers, reason = auto_workers(device_type=device.type, free_bytes=memory.free_bytes(device), peak_bytes=peak,
                                   step_s=step_s, n_gpus=n_gpus)
    say(f"--workers auto: {workers} ({reason})")
    return dataclasses.replace(cfg, workers=workers)


def _score(study: optuna.Study, cfg: Config, objective: Any, say: Callable[[str], None]) -> None:
    """With a test split, score the best trial and the baseline on it (once per best trial)."""
    if holdout.is_current(study, cfg):
        return
    say("scoring the best trial and the baseline on the test split")
    holdout.score_test_split(study, cfg, data=objective.data, amp=objective.amp, folder=objective.study_dir)


def dry_run(cfg: Config, *, progress: ProgressSink | None = None) -> dict[str, Any]:
    """``lrtune search --dry-run``: the resolved config, the data and the estimate; no trial, no study written."""
    config_mod.validate(cfg)
    from lrtune.tuner.estimate import estimate_search
    from lrtune.tuner.space import check_space
    from lrtune.training.loop import amp_policy, resolve_device
    from lrtune.training.run import Hyperparams, load_training_data, thread_guard
    from lrtune.training.threads import kept_threads

    check_space(cfg)
    with quiet_optuna():
        samplers.check_names(cfg)
        finished = _finished_so_far(cfg)
    amp = amp_policy(resolve_device(cfg.device), cfg.amp)
    with kept_threads():
        data = load_training_data(cfg, progress=progress)
        thread_guard(cfg, Hyperparams.from_dict(baseline_params(cfg)), data=data, amp=amp, workers=max(cfg.workers, 1),
                     say=progress.message if progress is not None else None)
        estimate = estimate_search(cfg, data=data, amp=amp, finished=finished)
    return {"config": config_mod.to_dict(cfg), "data": data.summary(), "finished": finished,
            "estimate": {**estimate.to_dict(), "line": estimate.line()}}


def _finished_so_far(cfg: Config) -> int:
    """The finished trials of the study ``cfg`` names, read without creating a storage or a study; 0 if none."""
    from lrtune.storage import open_existing_storage
    from lrtune.storage.sqlite import sqlite_path

    url = storage_url(cfg)
    path = sqlite_path(url)
    if path is not None and not Path(path).is_file():
        return 0
    storage = open_existing_storage(url)
    name = cfg.study or default_study_name(cfg)
    if name not in study_names(storage):
        return 0
    return count_finished(optuna.load_study(study_name=name, storage=storage))
