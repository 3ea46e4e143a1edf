"""Progress: what a long operation tells, and the console sink that shows it on stderr.

Library calls print nothing unless given a sink. ``ConsoleProgress`` is the
one the CLI uses: a live line on a terminal, one line per trial otherwise.
"""

from __future__ import annotations

import sys
from typing import Any, Protocol, TextIO

from lrtune.formatting import format_metric, format_value


class ProgressSink(Protocol):
    """Anything with these methods can follow a search, a training run or a prediction."""

    def message(self, text: str) -> None: ...

    def start(self, *, total: int, finished: int, pruned: int, best: float | None) -> None: ...

    def count(self, what: str, done: int, total: int) -> None: ...

    def epoch(self, trial: int, epoch: int, epochs: int, value: float) -> None: ...

    def trial_done(
        self, number: int, state: str, value: float | None, params: dict[str, Any], reason: str
    ) -> None: ...


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

    def epoch(self, trial: int, epoch: int, epochs: int, value: float) -> None:
        if self.verbosity >= 2 or self.live:
            self._write(
                f"trial {trial} epoch {epoch}/{epochs} {self.metric} {value:.4f} | {self._status()}",
                transient=self.live,
            )

    def trial_done(self, number: int, state: str, value: float | None, params: dict[str, Any], reason: str) -> None:
        """One line per finished trial; ``state`` is Optuna's state name (COMPLETE, PRUNED, FAIL)."""
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
