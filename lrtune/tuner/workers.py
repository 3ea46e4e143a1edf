"""Local worker processes sharing one study, and the GPUs: round-robin, several to a GPU when there are more workers."""

from __future__ import annotations

import math
import multiprocessing
import os
import queue
import sys
from typing import Any

from lrtune import config as config_mod
from lrtune.config import Config
from lrtune.errors import SIGNAL_EXIT, LRTuneError, StudyError, first_line
from lrtune.tuner.interrupt import CatchSignals
from lrtune.training import memory

AUTO_MAX = 8  # --workers auto: at most this many trials share one GPU
STEP_TARGET_S = 0.05  # and about this much GPU work per step in flight: shorter steps wait on kernel launches
MEMORY_USE = 0.9  # of the free memory, the rest left to the allocator's slack


def _worker_main(cfg_values: dict, name: str, index: int, verbosity: int, device: str, errors: Any) -> None:
    """One worker process: its own objective on the shared study.

    Its errors go back to the parent on ``errors``; its progress goes to stderr
    when ``verbosity`` says so.
    """
    cfg = config_mod.from_dict({**cfg_values, "device": device})
    import optuna

    from lrtune.progress import ConsoleProgress
    from lrtune.tuner import recovery, samplers
    from lrtune.tuner.driver import quiet_optuna, run_trials
    from lrtune.tuner.fusion import fused_trials
    from lrtune.tuner.tracking import attach as attach_tracking
    from lrtune.tuner.trial import Objective, use_threads
    from lrtune.storage import count_finished, open_storage, storage_url, study_dir
    from lrtune.training.loop import Interrupted

    progress = ConsoleProgress(cfg.trials, verbosity=verbosity, prefix=f"[worker {index}] ",
                               metric=config_mod.metric_label(cfg.metric))
    progress.position = index  # on a terminal, each worker's bar on a line of its own
    with quiet_optuna(), CatchSignals() as signals:
        try:
            # No sink while the data loads: the parent process showed that already.
            objective = Objective(cfg, study_dir=study_dir(cfg.studies_dir, name), stop=signals.flag, progress=None)
            objective.progress = progress
            use_threads(objective, workers=cfg.workers, say=progress.message,  # the workers share the cores
                        probe=cfg.fuse == 1)
            storage = open_storage(storage_url(cfg), heartbeat=recovery.heartbeat(cfg),
                                   retry_for=cfg.storage_retry, trials=fused_trials(cfg), say=progress.message)
            study = optuna.load_study(study_name=name, storage=storage)
            samplers.attach(study, cfg, worker=index)
            tracking = attach_tracking(objective, study, cfg, progress.message)
            if count_finished(study) < cfg.trials:
                run_trials(study, objective, cfg, stop=signals.flag, progress=progress, say=progress.message,
                           worker=index)
            for line in tracking.summary() if tracking is not None else []:
                progress.message(line)
        except Interrupted:
            pass
        except LRTuneError as exc:
            errors.put((index, str(exc)))
            sys.exit(1)
        except Exception as exc:
            errors.put((index, f"unexpected {type(exc).__name__}: {first_line(exc)}"))
            sys.exit(1)
        if signals.flag.signum is not None:
            sys.exit(SIGNAL_EXIT.get(signals.flag.signum, 1))


def worker_devices(device: str, workers: int, n_gpus: int) -> list[str]:
    """The device of each local worker.

    With ``auto`` or ``cuda`` and several GPUs visible, workers go round the
    GPUs, so more workers than GPUs share them (two to four small-model trials
    fill a GPU that one cannot); with one GPU every worker shares it.
    """
    if device in ("auto", "cuda") and n_gpus > 1:
        return [f"cuda:{index % n_gpus}" for index in range(workers)]
    return [device] * workers


def auto_workers(*, device_type: str, free_bytes: int | None, peak_bytes: int, step_s: float,
                 n_gpus: int = 1) -> tuple[int, str]:
    """``--workers auto``: how many trials to run at once, and why, from a probe of one trial's step.

    Off CUDA, one. On CUDA, per GPU, as many as its free memory holds at the
    probe's peak plus the waiting margin, and no more than it takes to keep
    ``STEP_TARGET_S`` of work per step in flight (a launch-bound model gains
    from several trials; one that fills the GPU alone does not), at most ``AUTO_MAX``.
    """
    if device_type != "cuda" or free_bytes is None:
        return 1, "one worker: several trials share only a CUDA device"
    need = max(1, int(peak_bytes * memory.MEMORY_MARGIN))
    by_memory = max(1, int(free_bytes * MEMORY_USE // need))
    by_speed = max(1, math.ceil(STEP_TARGET_S / max(step_s, 1e-6)))
    per_gpu = min(by_memory, by_speed, AUTO_MAX)
    reason = (f"a step takes {step_s * 1000:.1f} ms and {peak_bytes / 2**30:.2f} GiB at its peak, with "
              f"{free_bytes / 2**30:.1f} GiB free: {by_speed} for the speed, {by_memory} for the memory, "
              f"at most {AUTO_MAX}, per GPU")
    return per_gpu * max(1, n_gpus), reason


# What every worker imports: a fork server imports it once, and each worker starts as a fork of it.
PRELOAD = ["torch", "lrtune.tuner.trial", "lrtune.tuner.driver", "lrtune.progress"]


def _context() -> Any:
    """Workers are forked from a server process that imported torch and the training code once.

    It imports nothing else and touches no GPU, so its forks are as clean as
    spawned processes, without each importing torch, timm and albumentations
    again (seconds of CPU each). Where there is no fork server, workers are spawned.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def run_workers(cfg: Config, name: str, verbosity: int, signals: CatchSignals) -> None:
    """Run ``cfg.workers`` processes on the study; signals caught here are passed on to each.

    Raises ``StudyError`` with the first worker's error when one fails.
    """
    import torch

    n_gpus = torch.cuda.device_count() if cfg.device in ("auto", "cuda") else 0
    ctx = _context()
    errors = ctx.Queue()
    procs = []
    values = config_mod.to_dict(cfg)
    for index, device in enumerate(worker_devices(cfg.device, cfg.workers, n_gpus)):
        proc = ctx.Process(target=_worker_main, args=(values, name, index, verbosity, device, errors), daemon=False)
        proc.start()
        procs.append(proc)

    def forward(signum: int) -> None:
        for proc in procs:
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signum)

    signals.on_signal = forward
    for proc in procs:
        proc.join()
    if signals.flag.signum is not None:
        return
    messages = []
    while True:
        try:
            messages.append(errors.get(timeout=0.1))
        except queue.Empty:
            break
    if messages:
        index, text = sorted(messages)[0]
        raise StudyError(f"worker {index}: {text}")
    failed = [(i, p.exitcode) for i, p in enumerate(procs) if p.exitcode]
    if failed:
        raise StudyError(f"worker {failed[0][0]} exited with code {failed[0][1]}")
