"""Progress: what a long operation tells, and the console sink that shows it on stderr.

Library calls print nothing unless given a sink. ``ConsoleProgress`` is the
one the CLI uses: a live line on a terminal, one line per trial otherwise.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Protocol, TextIO

from lrtune.formatting import format_duration, format_metric, format_value

SLOW_EPOCH_S = 3.0  # an epoch running this long gets a progress bar (a plain line in a log)
PLAIN_EVERY_S = 30.0  # at most one plain progress line this often where the stream is no terminal


class ProgressSink(Protocol):
    """Anything with these methods can follow a search, a training run or a prediction."""

    def message(self, text: str) -> None: ...

    def start(self, *, total: int, finished: int, pruned: int, best: float | None) -> None: ...

    def count(self, what: str, done: int, total: int) -> None: ...

    def epoch(self, trial: int, epoch: int, epochs: int, value: float) -> None: ...

    def trial_done(
        self, number: int, state: str, value: float | None, params: dict[str, Any], reason: str
    ) -> None: ...

    # Optional: ``batch(trial, epoch, epochs, done, total, images)`` after each micro-batch of a trial's epoch.


class ConsoleProgress:
    """Trial k/N, epoch, current best and pruned count, on stderr.

    ``verbosity`` 0 is quiet, 1 prints finished trials (and a live epoch line on
    a terminal), 2 also prints every epoch as its own line. ``metric`` names
    the values (``macro-F1``, ``balanced accuracy``, ...).
    """

    def __init__(self, total: int = 0, *, verbosity: int = 1, stream: TextIO | None = None, prefix: str = "",
                 metric: str = "macro-F1") -> None:
        self.total = total
        self.metric = metric
        self.verbosity = verbosity
        self.stream = stream or sys.stderr
        self.prefix = prefix
        self.live = self.stream.isatty() and verbosity == 1
        self.best: float | None = None
        self.finished = 0
        self.pruned = 0
        self._dirty = False
        self.position = 0  # this sink's line among several processes' bars (a local worker's index)
        self._epoch: EpochClock | None = None

    def start(self, *, total: int, finished: int, pruned: int, best: float | None) -> None:
        """Counts a resumed study already holds."""
        self.total, self.finished, self.pruned, self.best = total, finished, pruned, best

    def _status(self) -> str:
        best = format_metric(self.best)
        return f"{self.finished}/{self.total} finished, best {self.metric} {best}, {self.pruned} pruned"

    def _write(self, text: str, *, transient: bool = False) -> None:
        if self.live:
            self.stream.write("\r\033[K" + self.prefix + text + ("" if transient else "\n"))
            self._dirty = transient
        else:
            self.stream.write(self.prefix + text + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        if self.verbosity > 0:
            if self._dirty:
                self.stream.write("\r\033[K")
                self._dirty = False
            self.stream.write(self.prefix + text + "\n")
            self.stream.flush()

    def count(self, what: str, done: int, total: int) -> None:
        """A counter, shown only on a terminal and at most a hundred times."""
        if self.verbosity == 0 or not self.stream.isatty() or (done % max(1, total // 100) and done != total):
            return
        self.stream.write(f"\r{self.prefix}{what}: {done}/{total}" + ("\n" if done == total else ""))
        self.stream.flush()

    def batch(self, trial: int, epoch: int, epochs: int, done: int, total: int, images: int) -> None:
        """Inside a long epoch: batch i/n, images/s, the epoch's, the trial's and the study's time left, as a
        bar (tqdm) on a terminal or in a notebook, or a plain line at most every ``PLAIN_EVERY_S`` in a log."""
        if self.verbosity == 0:
            return
        clock = self._epoch
        if clock is None or clock.key != (trial, epoch):
            self._close_bar()
            clock = self._epoch = EpochClock((trial, epoch), time.monotonic(), done, images)
        elapsed = time.monotonic() - clock.started  # since the first batch this sink heard of
        if elapsed < SLOW_EPOCH_S or done >= total or done <= clock.done:
            return
        per_batch = elapsed / (done - clock.done)
        epoch_s, left = per_batch * total, per_batch * (total - done)
        trial_left = left + (epochs - epoch) * epoch_s
        queued = max(0, self.total - self.finished - 1)
        text = (f"{(images - clock.images) / elapsed:,.1f} images/s, epoch {format_duration(left)} left, trial "
                f"{format_duration(trial_left)}, study about {format_duration(trial_left + queued * epochs * epoch_s)} "
                "if none is pruned")
        if self.live or _in_notebook():
            if clock.bar is None:
                clock.bar = _bar(total, f"{self.prefix}trial {trial} epoch {epoch}/{epochs}", self.stream, self.position)
            clock.bar.n = done
            clock.bar.set_postfix_str(text, refresh=False)
            clock.bar.refresh()
        elif time.monotonic() - clock.said >= PLAIN_EVERY_S or clock.said == 0:
            clock.said = time.monotonic()
            self.stream.write(f"{self.prefix}trial {trial} epoch {epoch}/{epochs}: batch {done}/{total}, {text}\n")
            self.stream.flush()

    def _close_bar(self) -> None:
        if self._epoch is not None and self._epoch.bar is not None:
            self._epoch.bar.close()
        self._epoch = None

    def epoch(self, trial: int, epoch: int, epochs: int, value: float) -> None:
        self._close_bar()
        if self.verbosity >= 2 or self.live:
            self._write(
                f"trial {trial} epoch {epoch}/{epochs} {self.metric} {value:.4f} | {self._status()}",
                transient=self.live,
            )

    def trial_done(self, number: int, state: str, value: float | None, params: dict[str, Any], reason: str) -> None:
        """One line per finished trial; ``state`` is Optuna's state name (COMPLETE, PRUNED, FAIL)."""
        self._close_bar()
        if state in ("COMPLETE", "PRUNED"):
            self.finished += 1
        if state == "PRUNED":
            self.pruned += 1
        if state == "COMPLETE" and value is not None:
            self.best = value if self.best is None else max(self.best, value)
        if self.verbosity == 0:
            return
        if "lr" in params:
            what = (f"lr {format_value(params['lr'])} {params.get('scheduler', '')} {params.get('loss', '')} "
                    f"accum {params.get('accum', '')}")
        else:
            what = f"{params.get('optimizer', '')}, LR-free"
        shown = f" {self.metric} {value:.4f}" if value is not None else ""
        note = f" ({reason})" if reason and state != "COMPLETE" else ""
        self._write(f"trial {number} {state.lower()}{shown} [{what}]{note} | {self._status()}")


class EpochClock:
    """When a sink first heard of an epoch (after its batch ``done``, ``images`` in), its bar, and when its last
    plain line was written."""

    def __init__(self, key: tuple[int, int], started: float, done: int, images: int) -> None:
        self.key, self.started, self.done, self.images = key, started, done, images
        self.said, self.bar = 0.0, None


def _in_notebook() -> bool:
    """True inside a Jupyter kernel (IPython's shell there is a ``ZMQInteractiveShell``), where tqdm draws a bar
    that works there; not merely where IPython was imported."""
    get_ipython = getattr(sys.modules.get("IPython"), "get_ipython", None)
    shell = get_ipython() if callable(get_ipython) else None
    return type(shell).__name__ == "ZMQInteractiveShell"


def _bar(total: int, desc: str, stream: TextIO, position: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="batch", file=stream, position=position, leave=False, dynamic_ncols=True)
