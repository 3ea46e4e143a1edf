"""How many CPU threads a run's steps use, chosen for the machine as it is. Knows nothing of Optuna.

torch runs each operation on one thread per core by default, and every
operation waits at a barrier for the slowest of them: when another process
takes one of those cores, the step collapses (tens of times slower on two
cores). So the count comes from the cores this process may use now (its CPU
affinity and its cgroup's CPU quota, not ``os.cpu_count()``), shared with the
other local workers and the loader processes, and from a short measurement
at the candidate counts; ``ThreadGuard`` lowers it when an epoch falls far
below its own best, and tries the higher count again later.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

TIE = 0.05  # a count within this share of the fastest counts as fast: the fewest such threads win
FALL = 0.4  # an epoch under this share of the best at its thread count is a collapse
RECOVER = 1.05  # a higher count is kept again when it beats the lower one's best by this much
RETRY_S = 60.0  # after a fall, the higher count is tried again after this long, then twice as long each time
CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup and its parents, in cores; None when there is none.

    Both hierarchies: v2's ``cpu.max`` (``max 100000`` or ``50000 100000``) and
    v1's ``cpu.cfs_quota_us`` over ``cpu.cfs_period_us`` (``-1``: none).
    """
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    folders: list[Path] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        controllers, path = parts[1], parts[2].lstrip("/")
        if controllers == "":
            folders.append(root / path)
        elif "cpu" in controllers.split(","):
            folders += [root / controllers / path, root / "cpu" / path, root / "cpu,cpuacct" / path]
    quotas = [q for folder in folders for q in _quotas_up(folder, root)]
    return min(quotas) if quotas else None


def _quotas_up(folder: Path, root: Path) -> Iterator[float]:
    """The quotas of ``folder`` and each parent up to ``root``: a container sees its own cgroup as the root."""
    while True:
        quota = _read_quota(folder)
        if quota is not None:
            yield quota
        if folder == root or root not in folder.parents:
            return
        folder = folder.parent


def _read_quota(folder: Path) -> float | None:
    try:
        text = (folder / "cpu.max").read_text().split()
        if len(text) == 2 and text[0] != "max":
            return int(text[0]) / int(text[1])
    except (OSError, ValueError, ZeroDivisionError):
        pass
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def available_cores() -> tuple[int, str]:
    """The cores this process may use (at least one), and how that was found."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 1
    quota = cgroup_quota()
    if quota is None:
        return affinity, f"{affinity} cores available"
    cores = max(1, min(affinity, math.floor(quota + 1e-6)))
    return cores, f"{cores} cores available (affinity {affinity}, CPU quota {quota:g})"


def thread_budget(cores: int, *, workers: int, loader_workers: int) -> int:
    """The threads one trial process may use: its share of the cores, less one for each loader process."""
    return max(1, cores // max(1, workers) - loader_workers)


def candidates(budget: int) -> list[int]:
    """The counts worth measuring, most first: the budget, then halves down to one."""
    counts, n = [], budget
    while n >= 1:
        counts.append(n)
        n //= 2
    return counts if counts[-1] == 1 else [*counts, 1]


def pick(rates: dict[int, float]) -> int:
    """The fewest threads within ``TIE`` of the fastest: fewer threads lose less to a busy core."""
    best = max(rates.values())
    return min(n for n, rate in rates.items() if rate >= (1 - TIE) * best)


@dataclass
class ThreadChoice:
    threads: int
    reason: str
    measured: dict[int, float] = field(default_factory=dict)  # images/s at each count measured
    budget: int = 0  # the most threads the process may use (its share of the cores), 0 when asked for a count


def choose_threads(
    requested: int,
    *,
    workers: int,
    loader_workers: int,
    device_type: str,
    measure: Callable[[list[int]], dict[int, float]] | None = None,
    cores: tuple[int, str] | None = None,
) -> ThreadChoice:
    """The thread count of a trial process: ``requested`` when set (> 0), else auto.

    Auto: the process's share of the available cores (``thread_budget``); on
    the CPU with more than one candidate, ``measure(candidates)`` (images/s
    at each count) decides among them. A GPU's step needs no CPU threads of
    its own, so there the budget stands, for the host side and the loading.
    """
    if requested > 0:
        return ThreadChoice(requested, "as asked (--threads)")
    count, where = cores or available_cores()
    share = [f"{workers} local workers"] if workers > 1 else []
    share += [f"{loader_workers} loader processes each"] if loader_workers else []
    budget = thread_budget(count, workers=workers, loader_workers=loader_workers)
    why = where + (f", shared by {' and '.join(share)}" if share else "")
    options = candidates(budget)
    if device_type != "cpu" or measure is None or len(options) == 1:
        return ThreadChoice(budget, why, budget=budget)
    rates = measure(options)
    threads = pick(rates)
    shown = ", ".join(f"{rates[n]:,.0f} at {n}" for n in sorted(rates, reverse=True))
    return ThreadChoice(threads, f"{why}; measured images/s: {shown}", rates, budget)


def apply_threads(threads: int) -> None:
    """Set the intra-op threads of torch (and OpenCV's, which albumentations uses) in this process."""
    torch.set_num_threads(threads)
    with contextlib.suppress(ImportError):
        import cv2

        cv2.setNumThreads(threads)


@contextlib.contextmanager
def kept_threads() -> Iterator[None]:
    """Within, anything may change the thread counts; afterwards they are what they were."""
    threads = torch.get_num_threads()
    try:
        import cv2

        cv2_threads: int | None = cv2.getNumThreads()
    except ImportError:
        cv2_threads = None
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if cv2_threads is not None:
            import cv2

            cv2.setNumThreads(cv2_threads)


class ThreadGuard:
    """Keeps a run's steps from collapsing when other processes take its cores.

    ``observe`` is told each epoch's training images and seconds (and, for a
    fused pass, its slots: rates compare only at the same count of them). An epoch
    under ``FALL`` times the best seen at its thread count halves the count
    from the next epoch on (said once, through ``say``). After ``RETRY_S``
    the higher count gets one epoch again: kept when it beats the lower
    count's best by ``RECOVER``, else the wait doubles. ``fixed`` guards
    nothing: the user chose the count. ``budget`` is the most threads the
    count was chosen from.
    """

    def __init__(self, threads: int, *, say: Callable[[str], None] | None = None, fixed: bool = False,
                 clock: Callable[[], float] = time.monotonic, apply: Callable[[int], None] = apply_threads,
                 budget: int = 0) -> None:
        self.threads = self.ceiling = threads
        self.budget = budget or threads
        self.say, self.fixed, self.clock, self.apply = say, fixed, clock, apply
        self.best: dict[tuple[int, int], float] = {}  # (threads, slots) -> the best images/s seen
        self.falls = 0
        self.trying: int | None = None  # the lower count a retry of a higher one goes back to
        self.retry_at, self.wait = math.inf, RETRY_S

    def start(self) -> None:
        """Put this process at the guard's count (a run starts here)."""
        self.apply(self.threads)

    def observe(self, images: int, seconds: float, *, slots: int = 1) -> None:
        if self.fixed or images <= 0 or seconds <= 0:
            return
        rate, counted = images / seconds, (self.threads, slots)
        if self.trying is not None:
            self._settle(rate, slots)
        elif rate < FALL * self.best.get(counted, 0.0) and self.threads > 1:
            self._fall(rate, slots)
            return
        elif self.threads < self.ceiling and self.clock() >= self.retry_at:
            self.trying = self.threads
            self._set(min(self.ceiling, self.threads * 2))
        self.best[counted] = max(self.best.get(counted, 0.0), rate)

    def _fall(self, rate: float, slots: int) -> None:
        lower = max(1, self.threads // 2)
        if not self.falls and self.say is not None:
            self.say(f"training fell to {rate:,.0f} images/s from {self.best[self.threads, slots]:,.0f} at "
                     f"{self.threads} threads: another process is using the cores; {lower} thread"
                     f"{'s' if lower > 1 else ''} from the next epoch")
        self.falls += 1
        for key in [key for key in self.best if key[0] == self.threads]:  # the machine changed: its old bests
            del self.best[key]
        self._set(lower)
        self.retry_at = self.clock() + self.wait

    def _settle(self, rate: float, slots: int) -> None:
        lower, self.trying = self.trying, None
        if rate >= RECOVER * self.best.get((lower, slots), 0.0):
            self.wait = RETRY_S
            self.retry_at = self.clock() + self.wait if self.threads < self.ceiling else math.inf
            return
        self.wait *= 2
        self.retry_at = self.clock() + self.wait
        self._set(lower)

    def _set(self, threads: int) -> None:
        self.threads = threads
        self.apply(threads)
