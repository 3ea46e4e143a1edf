"""Progress of a search on stderr: a live line on a terminal, one line per trial otherwise."""

from __future__ import annotations

import sys
from typing import TextIO

import optuna
from optuna.trial import FrozenTrial, TrialState


class Progress:
    """Trial k/N, epoch, current best and pruned count.

    ``verbosity`` 0 is quiet, 1 prints finished trials (and a live epoch line on
    a terminal), 2 also prints every epoch as its own line.
    """

    def __init__(self, total: int, *, verbosity: int = 1, stream: TextIO | None = None, prefix: str = "") -> None:
        self.total = total
        self.verbosity = verbosity
        self.stream = stream or sys.stderr
        self.prefix = prefix
        self.live = self.stream.isatty() and verbosity == 1
        self.best: float | None = None
        self.finished = 0
        self.pruned = 0
        self._dirty = False

    def start(self, study: optuna.Study) -> None:
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        self.finished = len(trials)
        self.pruned = sum(t.state == TrialState.PRUNED for t in trials)
        values = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
        self.best = max(values) if values else None

    def _status(self) -> str:
        best = f"{self.best:.4f}" if self.best is not None else "-"
        return f"{self.finished}/{self.total} finished, best macro-F1 {best}, {self.pruned} pruned"

    def _write(self, text: str, *, transient: bool = False) -> None:
        if self.live:
            self.stream.write("\r\033[K" + self.prefix + text + ("" if transient else "\n"))
            self._dirty = transient
        else:
            self.stream.write(self.prefix + text + "\n")
        self.stream.flush()

    def epoch(self, trial: int, epoch: int, epochs: int, macro_f1: float) -> None:
        if self.verbosity >= 2 or self.live:
            self._write(
                f"trial {trial} epoch {epoch}/{epochs} macro-F1 {macro_f1:.4f} | {self._status()}",
                transient=self.live,
            )

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Study callback: one line per finished trial."""
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
            self.finished += 1
        if trial.state == TrialState.PRUNED:
            self.pruned += 1
        if trial.state == TrialState.COMPLETE and trial.value is not None:
            self.best = trial.value if self.best is None else max(self.best, trial.value)
        if self.verbosity == 0:
            return
        params = trial.params
        lr = f"lr {params['lr']:.3g} " if "lr" in params else ""
        what = f"{lr}{params.get('scheduler', '')} {params.get('loss', '')} accum {params.get('accum', '')}".strip()
        value = f" macro-F1 {trial.value:.4f}" if trial.value is not None else ""
        reason = trial.user_attrs.get("reason") or ""
        note = f" ({reason})" if reason and trial.state != TrialState.COMPLETE else ""
        self._write(f"trial {trial.number} {trial.state.name.lower()}{value} [{what}]{note} | {self._status()}")

    def message(self, text: str) -> None:
        if self.verbosity > 0:
            if self._dirty:
                self.stream.write("\r\033[K")
                self._dirty = False
            self.stream.write(self.prefix + text + "\n")
            self.stream.flush()
