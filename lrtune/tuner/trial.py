"""A trial as a training run that reports, prunes, records and checkpoints.

``Objective`` is what ``study.optimize`` calls. The training itself is a
``TrainingRun``; this module adds what makes it a trial: the intermediate value
and the pruner each epoch, the trial's files, and its attributes.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna
import torch

from lrtune.config import CURVE_KEYS, Config
from lrtune.errors import LRTuneError, StudyError, first_line
from lrtune.progress import ProgressSink
from lrtune.storage import resilient
from lrtune.tuner import faults, samplers
from lrtune.tuner.artifacts import RemoteCheckpoints
from lrtune.tuner.records import batch_reporter, params_together, publish, set_user_attrs, weights_record
from lrtune.tuner.space import baseline_params, check_space, suggest
from lrtune.training import checkpoints, memory
from lrtune.training.loop import Diverged, Interrupted, amp_policy, resolve_device
from lrtune.training.run import Hyperparams, TrainingData, TrainingRun, check_parts, load_training_data, thread_guard
from lrtune.training.fused import FusedGroup, fusable
from lrtune.training.threads import ThreadGuard

MAX_CONSECUTIVE_FAILURES = 3  # then the study stops: the fault is not in one trial's parameters
CHECKPOINT_SHARE = 0.02  # at most this share of a trial's time goes to writing last.pt
REPORT_EVERY = 10.0  # s: on lrtune's storage, values of shorter epochs are written together, at most this late


class TrialFailed(Exception):
    """One trial failed for a reason of its own; the study goes on."""


@dataclass
class StopFlag:
    """Set by signal handlers; read by the training loop between micro-batches."""

    signum: int | None = None

    def __call__(self) -> bool:
        return self.signum is not None


@dataclass
class TrialFiles:
    """A trial's folder, its checkpoint writer, and its best weights while not yet in best.pt.

    Also what decides when ``last.pt`` is written: the seconds of epochs since
    the last one and what the last one cost; and the last epoch whose value the
    study has heard, the values not yet written, and when values last were.
    """

    folder: Path
    writer: checkpoints.Writer = field(default_factory=checkpoints.Writer)
    best_weights: dict[str, torch.Tensor] | None = None
    since_checkpoint: float = 0.0
    checkpoint_cost: float = 0.0
    skipped: int = 0  # epochs that ended without a checkpoint
    reported: int = 0
    unwritten: dict[int, float] = field(default_factory=dict)
    written_at: float = -math.inf

    def keep(
        self, run: TrainingRun, *, due: bool, keep_best: bool, last: bool, then: Callable[[], None] | None = None
    ) -> None:
        """Copy the epoch's weights where they are needed (best weights, last.pt); queue last.pt when ``due``,
        and ``then`` (its upload) after it on the writer's thread.

        After the last epoch the trial ends: nothing to continue from, and the
        model itself holds the final weights.
        """
        started = time.perf_counter()
        packed = checkpoints.pack(run.model.state_dict()) if not last and (due or keep_best) else None
        if keep_best:
            self.best_weights = checkpoints.unpack(packed) if packed is not None else run.model.state_dict()
        if due:
            self.writer.save(self.folder / checkpoints.LAST, run.checkpoint(packed), then=then)
            self.checkpoint_cost = time.perf_counter() - started + self.writer.last_seconds
            self.since_checkpoint = 0.0
        elif not last:
            self.skipped += 1

    def checkpoint_due(self) -> bool:
        """The first epoch, then whenever the epochs since the last checkpoint took
        ``1 / CHECKPOINT_SHARE`` times what writing one costs: a kill loses at most that much training."""
        return self.checkpoint_cost == 0 or self.since_checkpoint * CHECKPOINT_SHARE >= self.checkpoint_cost


class Objective:
    """Callable objective: ``study.optimize(Objective(cfg, study_dir=...))``. Loading the data, checking names
    and building the model once happen here, so errors that would fail every trial stop the study before it starts.
    """

    def __init__(self, cfg: Config, *, study_dir: Path, stop: Callable[[], bool] | None = None,
                 progress: ProgressSink | None = None, data: TrainingData | None = None) -> None:
        check_space(cfg)
        self.cfg = cfg
        self.study_dir = Path(study_dir)
        self.stop = stop or (lambda: False)
        self.progress = progress
        self.device = resolve_device(cfg.device)
        self.amp = amp_policy(self.device, cfg.amp)
        self.data = data or load_training_data(cfg, progress=progress)
        self.model_bytes = check_parts(cfg, self.data)
        self.consecutive_failures = 0
        self.peak = 0  # the most device memory a trial of this process has reserved
        self.remote = RemoteCheckpoints(cfg.artifacts, self.study_dir.name) if cfg.artifacts else None
        self.checkpoint_every_epoch = False  # else when due: a kill then loses at most 1 / CHECKPOINT_SHARE of the time
        self.threads: ThreadGuard | None = None  # this process's CPU threads, set by ``use_threads``
        self.threads_probed = True  # False while ``threads`` is the share of the cores, unmeasured
        self.group: FusedGroup | None = None  # with --fuse: where this process's trials train together
        self.turn: Any = None  # with --fuse: the group's ``turns.Turns``, ended once a trial's parameters are drawn
        self.fault: BaseException | None = None  # a fault of the machine that stopped this process's trials
        self.tracking: Any = None  # a ``tracking.Tracking``: each trial's run in MLflow or TensorBoard

    def __call__(self, trial: optuna.Trial) -> float:
        if self.stop():
            raise Interrupted
        if self.peak:  # other trials may share this GPU: wait for room for one more like the last
            wait_for_room(self.device, int(self.peak * memory.MEMORY_MARGIN), self.progress)
        with params_together(trial):
            params = suggest(trial, self.cfg)
        if self.turn is not None:
            self.turn.end()
        seed, retry_of = _start(trial, self.cfg, params, {"fused_group": self.group.name} if self.group else {})
        if self.tracking is not None:
            self.tracking.start(trial)
        failure, requeued = None, False
        try:
            try:
                value = self._run(trial, params, seed, retry_of)
            finally:
                self.peak = max(self.peak, memory.peak_bytes(self.device))
        except (Interrupted, KeyboardInterrupt):
            trial.set_user_attr("reason", "interrupted")
            _retry(trial, seed, fault=False)
            raise
        except optuna.TrialPruned as exc:
            trial.set_user_attr("reason", str(exc))
            remove_files(self.study_dir, self.remote, trial)
            raise
        except Diverged as exc:
            reason = f"diverged: {exc}"
            trial.set_user_attr("reason", reason)
            remove_files(self.study_dir, self.remote, trial)
            raise optuna.TrialPruned(reason) from None
        except faults.FATAL as exc:  # a full disk, a storage gone: the search stops; the trial continues later
            self.fault = exc
            _retry(trial, seed, fault=False, reason=first_line(exc))
            raise
        except LRTuneError:  # a fault of the setup, not of this trial: it would fail every trial
            remove_files(self.study_dir, self.remote, trial)
            raise
        except torch.cuda.OutOfMemoryError as exc:
            failure = f"out of memory: {first_line(exc)}"
        except Exception as exc:  # an OSError is the machine's: the trial runs again from its checkpoint
            requeued = isinstance(exc, OSError) and _retry(trial, seed, fault=True)
            failure = faults.failure(exc, requeued=requeued)
        if failure is not None:
            # Outside the except clause the failed run's frames, and with them its
            # model and optimizer, are no longer held by the traceback.
            self._fail(trial, failure, keep_files=requeued)
        self.consecutive_failures = 0
        if self.remote is not None:
            self.remote.upload_best(trial, checkpoints.trial_dir(self.study_dir, trial.number) / checkpoints.BEST)
        remove_files(self.study_dir, self.remote, trial, keep_best=self.cfg.keep != "none")
        return value

    def _fail(self, trial: optuna.Trial, reason: str, *, keep_files: bool = False) -> None:
        """Record the trial as failed for ``reason`` (its files kept for its retry with ``keep_files``)."""
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        trial.set_user_attr("reason", reason)
        if not keep_files:
            remove_files(self.study_dir, self.remote, trial)
        self.consecutive_failures += 1
        if self.consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
            raise StudyError(f"{self.consecutive_failures} trials in a row failed; the last: {reason}")
        raise TrialFailed(reason)

    def _run(self, trial: optuna.Trial, params: Hyperparams, seed: int, retry_of: int | None) -> float:
        def fresh() -> TrainingRun:
            with self.group.building if self.group is not None else contextlib.nullcontext():
                return TrainingRun(self.cfg, params, data=self.data, amp=self.amp, seed=seed, should_stop=self.stop,
                                   threads=self.threads)

        run = fresh()
        files = TrialFiles(checkpoints.trial_dir(self.study_dir, trial.number))
        if retry_of is not None and take_checkpoint(self.study_dir, self.remote, trial, int(retry_of), files.folder):
            run = resumed(trial, run, files, study_dir=self.study_dir, fresh=fresh, progress=self.progress)
        run.on_batch = batch_reporter(self.progress, trial.number, run)
        # The best epoch's weights stay in memory (the copy packed for its last.pt)
        # and are written to best.pt only when a later epoch stops matching them
        # (or at the end): until then the epoch's last.pt holds the same weights.
        state = run.state
        if self.cfg.keep != "none" and state.best and state.best.get("epoch") == state.epoch and not state.best_saved:
            files.best_weights = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
        try:
            with _fused(self.group, run, trial, self.progress), _counted_ahead(trial, run, fused=bool(self.group)):
                for epoch in range(state.epoch + 1, self.cfg.epochs + 1):
                    self._epoch(trial, run, files, epoch)
            if files.best_weights is not None and not state.best_saved:
                save_best(trial, run, files)
        finally:
            _finish(trial, run, files)
        return state.best_value

    def _epoch(self, trial: optuna.Trial, run: TrainingRun, files: TrialFiles, epoch: int) -> None:
        """Train one epoch, report it, checkpoint it; prune if the pruner says so.

        Without a pruner, values are reported with the next checkpoint (or at
        the end); an epoch much shorter than writing a checkpoint writes none. A
        retry still continues from the last checkpoint and replays the same epochs.
        A pruned trial's values are all written (``_finish``) before Optuna records it.
        """
        backend = resilient(getattr(trial, "storage", None))
        if backend is not None:  # a full disk or a lost storage, met by the heartbeat thread
            backend.raise_heartbeat_fault()
        started = time.perf_counter()
        outcome = run.train_epoch(epoch)
        files.since_checkpoint += (time.perf_counter() - started) / run.sharing  # a fused run's share of the pass
        if not outcome.improved and files.best_weights is not None and not run.state.best_saved:
            # last.pt is about to move past the best epoch: persist its weights first.
            # The writer keeps order, so best.pt is on disk before that last.pt.
            save_best(trial, run, files)
        last, prunes = epoch == self.cfg.epochs, _prunes(trial)
        due = not last and (self.checkpoint_every_epoch or files.checkpoint_due())
        if prunes or due:
            _report(trial, run, files, flush=False)
        upload = None
        if due and self.remote is not None:
            upload = functools.partial(self.remote.upload_last, trial, files.folder / checkpoints.LAST, epoch)
        files.keep(run, due=due, keep_best=outcome.improved and self.cfg.keep != "none", last=last, then=upload)
        if self.progress is not None:
            self.progress.epoch(trial.number, epoch, self.cfg.epochs, outcome.value)
        if prunes and _judged(trial, run):
            raise optuna.TrialPruned(f"pruned at epoch {epoch}")



def _judged(trial: optuna.Trial, run: TrainingRun) -> bool:
    """Whether the pruner stops the trial at the epoch just reported; a fused trial is judged once the trials
    numbered before it in its pass are (``turns.Turns.decide``), as one trial after another would be."""
    if run.group is not None:
        run.group.turns.decide(id(run))
    return trial.should_prune()


@contextlib.contextmanager
def _fused(group: FusedGroup | None, run: TrainingRun, trial: optuna.Trial,
           say: ProgressSink | None) -> Iterator[None]:
    """Within, ``run`` (trial ``trial``'s) trains in ``group`` (one pass with the group's other runs per epoch), if
    it can fuse."""
    reason = fusable([run]) if group is not None else None
    if group is None or reason is not None:
        if reason is not None and say is not None:
            say.message(f"a trial runs unfused: {reason}")
        yield
        return
    run.group = group
    with group.member(run, trial.number):
        yield


@contextlib.contextmanager
def _counted_ahead(trial: optuna.Trial, run: TrainingRun, *, fused: bool) -> Iterator[None]:
    """Within, a fused trial's curve counts in the median pruner's decisions of the trials numbered after it
    (``samplers.MedianPruner``): a solo search would have finished it before them."""
    study = getattr(trial, "study", None)
    pruner = getattr(study, "pruner", None)
    if not fused or not isinstance(pruner, samplers.MedianPruner):
        yield
        return
    curves, key = run.state.curves, CURVE_KEYS[run.cfg.metric]

    def curve() -> dict[int, float]:
        return {int(epoch): float(value) for epoch, value in zip(curves["epoch"], curves[key])}

    with pruner.ahead(study._study_id, trial.number, curve):
        yield


def resumed(trial: optuna.Trial, run: TrainingRun, files: TrialFiles, *, study_dir: Path,
            fresh: Callable[[], TrainingRun], progress: ProgressSink | None) -> TrainingRun:
    """``run`` continued from the trial's ``last.pt``; when that cannot be read (torn, truncated, another model's),
    the file is set aside, the trial says so, and a ``fresh()`` run starts again from epoch 0."""
    path = files.folder / checkpoints.LAST
    try:
        run.restore(checkpoints.load_checked(path, run.amp.device))
    except (OSError, MemoryError):
        raise
    except Exception as exc:
        aside = checkpoints.set_aside(study_dir, path, trial.number)
        trial.set_user_attr("checkpoint_set_aside", str(aside))
        if progress is not None:
            progress.message(f"trial {trial.number}: its checkpoint cannot be read ({first_line(exc)}); moved to "
                             f"{aside}, and the trial starts again from epoch 0")
        return fresh()
    _report(trial, run, files)
    trial.set_user_attr("resumed_at_epoch", run.state.epoch + 1)
    return run


def _retry(trial: optuna.Trial, seed: int, *, fault: bool, reason: str | None = None) -> bool:
    """Queue the running trial to run again (``faults.retry``); False when it is not, or the storage cannot
    take it (then the next search's recovery queues it)."""
    study = getattr(trial, "study", None)
    if study is None:
        return False
    try:
        if reason is not None:
            trial.set_user_attr("reason", reason)
        return faults.retry(study, trial, seed, fault=fault)
    except Exception:
        return False


def save_best(trial: optuna.Trial, run: TrainingRun, files: TrialFiles) -> None:
    """Queue best.pt, unless ``keep=best`` and a finished trial already does at least as well.

    Such weights would be deleted as soon as this trial ends, and a later
    epoch that does better is kept by then.
    """
    cfg = run.cfg
    scored = cfg.test_fraction and trial.user_attrs.get("baseline")  # the test split scores the baseline too
    if cfg.keep == "best" and not scored and not _may_beat_study(trial, run.state.best_value):
        files.best_weights = None
        return
    files.writer.save(files.folder / checkpoints.BEST, weights_record(trial, run, files))
    run.state.best_saved = True


def use_threads(objective: Objective, *, workers: int = 1, say: Callable[[str], None] | None = None,
                probe: bool = True) -> None:
    """Choose this process's CPU threads (``cfg.threads``, or auto from a probe of the baseline's step), with
    ``workers`` trial processes sharing the cores, and guard every trial of ``objective`` from then on.

    Without ``probe`` the count is the process's share of the cores, unmeasured (``objective.threads_probed``
    says so): ``--fuse`` chooses the threads of its passes itself, and probes only if its trials run one at a time.
    """
    cfg = objective.cfg
    params = Hyperparams.from_dict(baseline_params(cfg))
    objective.threads = thread_guard(cfg, params, data=objective.data, amp=objective.amp, workers=workers, say=say,
                                     probe=probe)
    objective.threads_probed = probe


def wait_for_room(device: torch.device, need: int, progress: ProgressSink | None) -> None:
    """Until ``device`` has ``need`` bytes free; past ``MEMORY_WAIT_S`` the trial starts anyway, and says so."""
    if not memory.wait_for_memory(need, lambda: memory.free_bytes(device)) and progress is not None:
        free = memory.free_bytes(device) or 0
        progress.message(
            f"waited {memory.MEMORY_WAIT_S:g} s for {need / 2**30:.2f} GiB of free memory on {device} "
            f"({free / 2**30:.2f} GiB free); starting the trial anyway"
        )


def _start(trial: optuna.Trial, cfg: Config, params: Hyperparams, extra: dict) -> tuple[int, int | None]:
    """Record who runs the trial and with which seed; returns the seed and the trial it retries, if any."""
    seed = int(trial.user_attrs.get("seed", cfg.seed * 100_003 + trial.number))
    retry_of = trial.user_attrs.get("retry_of")
    set_user_attrs(trial, {"seed": seed, "host": socket.gethostname(), "pid": os.getpid(),
                           "effective_batch": cfg.batch_size * params.accum, **extra})
    return seed, retry_of


def _finish(trial: optuna.Trial, run: TrainingRun, files: TrialFiles) -> None:
    """However the trial ends: its checkpoints on disk, every value reported, its attributes written."""
    try:
        files.writer.close()
    finally:
        _report(trial, run, files)
        publish(trial, run, {"epochs_without_checkpoint": files.skipped} if files.skipped else {})


def _report(trial: optuna.Trial, run: TrainingRun, files: TrialFiles, *, flush: bool = True) -> None:
    """Tell the study every epoch's validation value of its metric it has not heard yet.

    On lrtune's storage the pruner sees each value at once, and the values
    are written together: at ``flush``, or once ``REPORT_EVERY`` s have passed
    since the last write. So epochs longer than that are each written at once,
    and a running trial's curve is at most that late in ``lrtune show``.
    """
    values = run.state.curves[CURVE_KEYS[run.cfg.metric]]
    heard = {int(epoch): float(value) for epoch, value in zip(run.state.curves["epoch"], values) if epoch > files.reported}
    files.reported = run.state.epoch
    backend = resilient(getattr(trial, "storage", None))
    if backend is None:
        for epoch, value in heard.items():
            trial.report(value, epoch)
        return
    trial._cached_frozen_trial.intermediate_values.update(heard)  # what trial.should_prune() reads
    files.unwritten.update(heard)
    now = time.monotonic()
    if files.unwritten and (flush or now - files.written_at >= REPORT_EVERY):
        backend.set_trial_intermediate_values(trial._trial_id, files.unwritten)
        files.unwritten, files.written_at = {}, now


def remove_files(study_dir: Path, remote: RemoteCheckpoints | None, trial: optuna.Trial, *, keep_best: bool = False) -> None:
    """The ended trial's ``last.pt`` (here and uploaded), and its ``best.pt`` unless kept."""
    checkpoints.remove(study_dir, trial.number, keep_best=keep_best)
    if remote is not None:
        remote.discard_trial(trial)


def take_checkpoint(
    study_dir: Path, remote: RemoteCheckpoints | None, trial: optuna.Trial, retry_of: int, folder: Path
) -> bool:
    """Put trial ``retry_of``'s ``last.pt`` in ``folder`` (the retry's): from this machine, else from the upload.

    False when there is none; when the upload cannot be read, ``resume_failed`` says why.
    """
    if checkpoints.adopt(study_dir, retry_of, trial.number):
        if remote is not None:
            remote.take_over(trial, retry_of)
        return True
    if remote is None:
        return False
    why = remote.fetch(trial, retry_of, folder / checkpoints.LAST)
    if why is not None:
        trial.set_user_attr("resume_failed", why)
    return why is None


def _prunes(trial: optuna.Trial) -> bool:
    """False when the study's pruner never prunes (which spares asking it every epoch), and for an LR-free
    baseline, which runs whole to be compared."""
    if trial.user_attrs.get("lr_free"):
        return False
    study = getattr(trial, "study", None)
    return study is None or not isinstance(study.pruner, optuna.pruners.NopPruner)


def _may_beat_study(trial: optuna.Trial, value: float) -> bool:
    """False when a complete trial of the study already has at least ``value``."""
    study = getattr(trial, "study", None)
    if study is None:
        return True
    try:
        return value > study.best_value
    except ValueError:  # no complete trial yet
        return True

