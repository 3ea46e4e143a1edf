"""``--fuse K``: a worker trains K trials side by side as one fused model.

Each of K threads runs trials as a worker does (``driver.optimize``: Optuna
asks, the objective trains, reports, prunes and checkpoints, Optuna tells);
their runs meet in one ``FusedGroup``, which trains one pass of every run
at a time on the same batches. A trial that ends frees its thread, which asks
for the next one at once. The median pruner judges a trial against the
group's running trials numbered before it too (``samplers.MedianPruner``), as a
solo search would have finished them first. Nothing else differs from a solo
trial: each trial has its own parameters, seed, checkpoints and retry, and its
``fused_group`` attribute names the group it trained in.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any, Callable

import optuna

from lrtune.config import Config
from lrtune.progress import ProgressSink
from lrtune.storage import count_finished
from lrtune.training.threads import ThreadGuard
from lrtune.tuner.samplers import MedianPruner

AUTO_COUNTS = (1, 2, 4, 8)  # --fuse auto measures these, in order
AUTO_GAIN = 1.10  # and stops growing K when the next count is not at least this much faster


def fused_trials(cfg: Config) -> int:
    """The most trials this process may run at once with ``cfg.fuse``."""
    return max(AUTO_COUNTS) if cfg.fuse == 0 else cfg.fuse


def resolve_fuse(cfg: Config, objective: Any, study: optuna.Study, say: Callable[[str], None]) -> int:
    """How many trials this worker trains side by side: ``cfg.fuse`` or auto's pick, at most the trials left,
    and 1 when the model or the options cannot fuse; said in one line whenever it is not 1."""
    from lrtune.training.fused import check_fusion, probe_fused, splits
    from lrtune.training.run import Hyperparams, TrainingRun
    from lrtune.tuner.space import baseline_params

    if cfg.fuse == 1:
        return 1
    params = Hyperparams.from_dict(baseline_params(cfg))

    def runs(k: int) -> list[TrainingRun]:
        return [TrainingRun(cfg, params, data=objective.data, amp=objective.amp, seed=cfg.seed + i) for i in range(k)]

    flag = "--fuse auto" if cfg.fuse == 0 else f"--fuse {cfg.fuse}"
    sample = runs(2)
    reason = check_fusion(sample)
    if reason is not None:
        say(f"{flag}: trials run one at a time: {reason}")
        return 1
    guard = objective.threads
    chosen = guard is not None and not guard.fixed  # --threads auto on the CPU: chosen again for fused passes
    split = chosen and splits(sample[0], guard)
    k, why = cfg.fuse, ""
    if cfg.fuse == 0:
        def prepare(count: int) -> None:  # each count measured at the threads it would train on
            guard.apply(guard.threads if count == 1 else guard.budget if split else fused_count(guard))

        k, why = auto_fuse(probe_fused(runs, AUTO_COUNTS, free_bytes=_free(objective),
                                       prepare=prepare if chosen else None,
                                       parts=(lambda count: min(count, guard.budget)) if split else None))
    left = max(1, cfg.trials - count_finished(study))
    if k > left:
        why = f"{why}; " if why else ""
        why += f"{left} trial{'s' if left > 1 else ''} left to run"
        k = left
    what = f"{k} trials side by side in one fused step" if k > 1 else "1, trials run one at a time"
    say(f"{flag}: {what}" + (f" ({why})" if why else ""))
    if chosen:
        objective.threads = fused_threads(guard, k, say, split=split)
    return k


def fused_threads(guard: ThreadGuard, k: int, say: Callable[[str], None], *, split: bool = False) -> ThreadGuard:
    """The threads of ``k`` fused trials when ``--threads`` is auto on the CPU; one trial (``k`` = 1) keeps
    ``guard``'s count. Passes that ``split`` use every core the process may use, in parts of one thread each
    (as many as the guard's threads, at most ``k``); passes that do not train on one thread fewer (at least
    one), as the group's trials report, checkpoint and sample on the others."""
    if k == 1:
        guard.start()
        return guard
    split = split and guard.budget > 1
    threads = guard.budget if split else fused_count(guard)
    if split:
        parts = min(k, threads)
        say(f"threads: {threads} for {k} fused trials: {parts} parts, each on its own thread at one torch thread")
    else:
        say(f"threads: {threads} for {k} fused trials (of {guard.budget}: the trials report, checkpoint and sample "
            "beside the passes)")
    fused = ThreadGuard(threads, say=say, budget=guard.budget, clock=guard.clock, apply=guard.apply)
    fused.start()
    return fused


def fused_count(guard: ThreadGuard) -> int:
    """The threads a fused pass trains on: one fewer than ``guard``'s budget, at least one."""
    return max(1, guard.budget - 1)


def _free(objective: Any) -> int | None:
    from lrtune.training import memory

    return memory.free_bytes(objective.device)


def auto_fuse(measured: dict[int, tuple[float, int | None]]) -> tuple[int, str]:
    """``--fuse auto``'s pick from the probe's images/s (and what stopped it) at each count: grow K to the next
    count at least ``AUTO_GAIN`` times as fast as the current pick, while there is one (a count between that
    gains less is passed over, not an end: on the CPU two plain parts can outrun two fused pairs)."""
    counts = sorted(measured)
    pick = counts[0]
    for k in counts[1:]:
        if measured[k][0] >= AUTO_GAIN * measured[pick][0]:
            pick = k
    shown = ", ".join(f"{measured[k][0]:,.0f} at {k}" for k in counts)
    stopped = [k for k in AUTO_COUNTS if k not in measured]
    note = f"; {stopped[0]} would not fit the free memory" if stopped and stopped[0] > counts[-1] else ""
    return pick, f"images/s: {shown}; each step up must gain {AUTO_GAIN - 1:.0%}{note}"


class _Tickets:
    """Whether a fused worker's thread may start a trial: within the budget and the timeout."""

    def __init__(self, study: optuna.Study, cfg: Config, halted: Callable[[], bool]) -> None:
        self.study, self.trials, self.halted = study, cfg.trials, halted
        self.lock = threading.Lock()
        self.running = 0
        self.deadline = time.monotonic() + cfg.timeout if cfg.timeout else None

    def take(self) -> bool:
        """True when a trial may start (it counts as running here until ``done``); False: no more trials."""
        with self.lock:
            if self.halted() or (self.deadline is not None and time.monotonic() >= self.deadline):
                return False
            if count_finished(self.study) + self.running >= self.trials:
                return False
            self.running += 1
            return True

    def done(self) -> None:
        with self.lock:
            self.running -= 1


def optimize_fused(
    study: optuna.Study, objective: Any, cfg: Config, k: int, *, stop: Callable[[], bool],
    progress: ProgressSink | None, worker: int = 0,
) -> None:
    """Run trials in ``k`` threads whose runs train together, until the study holds ``cfg.trials`` finished ones
    (counting the trials running here), the timeout passes or a stop. A thread's error stops the others at
    their next batch (their trials are queued to continue, as on Ctrl-C) and is raised here."""
    from lrtune.training.fused import FusedGroup
    from lrtune.training.loop import Interrupted
    from lrtune.tuner.driver import optimize

    errors: list[BaseException] = []

    def halted() -> bool:
        return stop() or bool(errors)

    group = FusedGroup(name=f"{socket.gethostname()}:{os.getpid()}:{worker}", seed=cfg.seed * 1000 + worker, size=k,
                       threads=objective.threads, should_stop=halted)
    # From its ticket until its parameters are drawn a thread holds the group's turn (the objective ends it),
    # taken in order once every trial of the last pass is judged and told: the same search draws the same trials.
    objective.group, objective.turn = group, group.turns
    tickets = _Tickets(study, cfg, halted)

    def work(index: int) -> None:
        with group.thread(index):
            while True:
                objective.turn.begin(index)  # the objective ends the turn once the trial's parameters are drawn
                if not tickets.take():  # taken in turn: every trial that ended before has been told
                    objective.turn.end()
                    return
                try:
                    optimize(study, objective, cfg, stop=halted, progress=progress, n_trials=1)
                except Interrupted:
                    return
                except BaseException as exc:  # the first error stops every thread, and the search reports it
                    errors.append(exc)
                    return
                finally:
                    objective.turn.end()
                    tickets.done()
                    if isinstance(study.pruner, MedianPruner):  # the trial is told: it counts as complete, or not
                        study.pruner.reread()

    threads = [threading.Thread(target=work, args=(i,), name=f"lrtune-fused-{i}", daemon=True) for i in range(k)]
    try:
        for thread in threads:
            thread.start()
        group.serve()  # the passes train on this thread, as a solo search's epochs do
        for thread in threads:
            thread.join()
    finally:
        objective.group = objective.turn = None
    if errors:
        raise errors[0]
    if stop():
        raise Interrupted
