"""The notes shown above a section when the study has little or nothing to show there yet."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lrtune.report.compute import ReportData

NO_COMPLETE = "No trial has completed yet."


def add_notes(data: ReportData) -> None:
    """Add to ``data.notes`` the notes of the summary and of each figure, keyed by their names."""
    _summary_notes(data)
    _trial_notes(data)
    _best_trial_notes(data)


def _note(data: ReportData, name: str, text: str) -> None:
    data.notes.setdefault(name, []).append(text)


def _summary_notes(data: ReportData) -> None:
    n_complete = len(data.completed)
    if not data.trials:
        _note(data, "summary", "The study has no trials yet.")
    elif n_complete == 0:
        finished = data.counts["PRUNED"] + data.counts["FAIL"]
        if finished and data.counts["PRUNED"] == finished:
            _note(data, "summary", f"All {finished} finished trials were pruned; no trial has completed yet.")
        else:
            _note(data, "summary", "No trial has completed yet, so there is no best trial.")
    elif n_complete == 1:
        _note(data, "summary", "Only one trial has completed; the comparisons below need more.")
    if data.best and data.baseline is None:
        _note(data, "summary", "There is no completed baseline trial to compare the best trial with.")


def _trial_notes(data: ReportData) -> None:
    """Notes of the figures about all trials: history, curves, LR figures, timeline, top trials."""
    n_complete = len(data.completed)
    if not any(t.value is not None for t in data.trials):
        _note(data, "history", "No trial has reported a value yet.")
    elif n_complete == 0:
        _note(data, "history", "No trial has completed; the points are the last values of pruned trials.")
    if not any(t.epochs for t in data.trials):
        _note(data, "curves", "No trial has finished an epoch yet.")
    elif data.counts["PRUNED"] or data.counts["FAIL"]:
        _note(data, "curves", "Dashed lines ending in × are trials that were pruned or failed before the last epoch.")
    if n_complete == 0:
        for name in ("lr", "effective-lr", "parallel"):
            _note(data, name, NO_COMPLETE)
    if not data.lr_steps:
        _note(data, "lr-steps", NO_COMPLETE if n_complete == 0 else "The top trials stored no per-step learning rates.")
    if data.lr_range_skipped:
        _note(data, "lr-range", f"The LR range test was skipped: {data.lr_range_skipped}.")
    elif data.lr_range is None:
        _note(data, "lr-range", "This study ran no LR range test (`--lr-range off`): `lrtune search --lr-range auto` "
              "(the default) runs one before a new study's first trial, `lrtune lr-find` runs one alone.")
    elif data.lr_range.suggestion is None:
        _note(data, "lr-range", f"The range test suggested no LR: {data.lr_range.rule}.")
    if not any(t.start for t in data.trials):
        _note(data, "timeline", "No trial has started yet.")
    if n_complete == 0:
        _note(data, "top-trials", NO_COMPLETE)


def _best_trial_notes(data: ReportData) -> None:
    if data.best is None:
        _note(data, "per-class", NO_COMPLETE)
        _note(data, "confusion", NO_COMPLETE)
    elif data.class_scores is None:
        _note(data, "per-class", f"The best trial (#{data.best.number}) stored no per-class scores.")
        _note(data, "confusion", f"The best trial (#{data.best.number}) stored no confusion matrix.")
    elif not data.class_scores.confusion:
        _note(data, "confusion", f"The best trial (#{data.best.number}) stored no confusion matrix.")
