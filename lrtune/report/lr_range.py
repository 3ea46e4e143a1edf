"""The stored LR range test of a study, as plain data for its figure; nothing here draws or needs plotly.

The record is the study's ``lr_range`` user attribute (written by
``lrtune search --lr-range auto``) or ``RangeTestResult.to_dict()`` from
``lrtune lr-find``: the swept LRs, raw and smoothed losses, each rule's LR,
the chosen one and its rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lrtune.report.values import finite_float, is_positive_number

RULE_LABELS = {"steepest": "steepest descent", "valley": "valley", "min/10": "minimum / 10"}


@dataclass
class LRRangeData:
    """A range test's curve and suggestions, and the trials' final macro-F1 against their LR."""

    lrs: list[float]
    losses: list[float | None]
    smoothed: list[float | None]
    suggestions: dict[str, float]  # rule -> LR, for the rules that gave one
    suggestion: float | None
    rule: str
    setup: str  # the loss, accumulation and batch the test ran with
    bounds: tuple[float, float] | None  # the narrowed LR range of the search, if any
    trial_lrs: list[float] = field(default_factory=list)
    trial_values: list[float] = field(default_factory=list)
    trial_numbers: list[int] = field(default_factory=list)


def lr_range_data(record: Any, trials: list[Any] | None = None) -> LRRangeData | None:
    """``record`` as plain data (None when it holds no usable curve); ``trials``: completed ``TrialSummary``s."""
    if not isinstance(record, dict):
        return None
    lrs, losses, smoothed = (record.get(k) if isinstance(record.get(k), list) else [] for k in
                             ("lrs", "losses", "smoothed"))
    n = min(len(lrs), len(losses), len(smoothed))
    keep = [i for i in range(n) if is_positive_number(lrs[i])]
    if not keep:
        return None
    raw = record.get("suggestions") if isinstance(record.get("suggestions"), dict) else {}
    suggestions = {str(k): float(v) for k, v in raw.items() if is_positive_number(v)}
    bounds = record.get("bounds")
    points = [t for t in trials or [] if is_positive_number(t.params.get("lr")) and finite_float(t.value) is not None]
    return LRRangeData(
        lrs=[float(lrs[i]) for i in keep],
        losses=[finite_float(losses[i]) for i in keep],
        smoothed=[finite_float(smoothed[i]) for i in keep],
        suggestions=suggestions,
        suggestion=float(record["suggestion"]) if is_positive_number(record.get("suggestion")) else None,
        rule=str(record.get("rule", "")),
        setup=_setup_text(record.get("setup")),
        bounds=(float(bounds[0]), float(bounds[1]))
        if isinstance(bounds, list) and len(bounds) == 2 and all(map(is_positive_number, bounds))
        else None,
        trial_lrs=[float(t.params["lr"]) for t in points],
        trial_values=[float(t.value) for t in points],
        trial_numbers=[int(t.number) for t in points],
    )


def lr_range_skipped(record: Any) -> str:
    """Why the search skipped its range test ("" when it ran one, or none was asked for)."""
    return str(record.get("skipped") or "") if isinstance(record, dict) else ""


def _setup_text(setup: Any) -> str:
    if not isinstance(setup, dict):
        return ""
    return ", ".join(f"{k} {setup[k]}" for k in ("loss", "accum", "batch_size") if k in setup).replace("_", " ")
