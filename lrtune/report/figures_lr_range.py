"""The LR range test figure: loss against LR with the suggestions marked, beside the trials' macro-F1 against LR.

:func:`lr_range_figure` draws it from :class:`LRRangeData`; the report shows it
for a study that ran the test, and ``lrtune lr-find --plot`` shows it alone.
Plotly is imported only when it is drawn.
"""

from __future__ import annotations

from typing import Any

from lrtune.formatting import format_value
from lrtune.report.compute import ReportData
from lrtune.report.lr_range import RULE_LABELS, LRRangeData
from lrtune.report.plotting import layout, log_axis, plot_text

RULE_COLORS = {"steepest": "#d62728", "valley": "#2ca02c", "min/10": "#9467bd"}


def draw_lr_range(data: ReportData) -> Any:
    return lr_range_figure(data.lr_range, metric=data.metric_label) if data.lr_range is not None else None


def lr_range_figure(curve: LRRangeData, *, metric: str = "macro-F1") -> Any:
    """One panel (loss vs LR) without trials, two side by side with them (their final ``metric``), sharing the LR
    axis."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    with_trials = bool(curve.trial_lrs)
    titles = ("range test: training loss", f"trials: final {metric}") if with_trials else None
    fig = make_subplots(rows=1, cols=2 if with_trials else 1, shared_xaxes=True, horizontal_spacing=0.1,
                        subplot_titles=titles)
    fig.add_trace(go.Scatter(x=curve.lrs, y=curve.losses, mode="markers", name="loss per step",
                             marker={"color": "#aaa", "size": 4}), row=1, col=1)
    fig.add_trace(go.Scatter(x=curve.lrs, y=curve.smoothed, mode="lines", name="smoothed loss",
                             line={"color": "#1f77b4", "width": 2}), row=1, col=1)
    if with_trials:
        fig.add_trace(go.Scatter(
            x=curve.trial_lrs, y=curve.trial_values, mode="markers", name="completed trials",
            marker={"color": "#ff7f0e", "size": 7}, customdata=curve.trial_numbers,
            hovertemplate="trial %{customdata}<br>lr %{x:.3g}<br>" + metric + " %{y:.4f}<extra></extra>",
        ), row=1, col=2)
    for col in range(1, 3 if with_trials else 2):
        _mark_suggestions(fig, curve, col)
    if curve.bounds is not None and with_trials:
        fig.add_vrect(x0=curve.bounds[0], x1=curve.bounds[1], fillcolor="#ff7f0e", opacity=0.08, line_width=0,
                      row=1, col=2)
    title = f"suggested LR {format_value(curve.suggestion)}: {curve.rule}" if curve.suggestion else curve.rule
    title = plot_text(f"{title} ({curve.setup})" if curve.setup else title)
    layout(fig, title={"text": title, "font": {"size": 13}}, margin={"l": 70, "r": 30, "t": 80, "b": 60})
    fig.update_xaxes(title_text="learning rate", **log_axis(curve.lrs + curve.trial_lrs + list(curve.suggestions.values())))
    fig.update_yaxes(title_text="training loss", row=1, col=1)
    if with_trials:
        fig.update_yaxes(title_text=f"validation {metric}", row=1, col=2)
    return fig


def _mark_suggestions(fig: Any, curve: LRRangeData, col: int) -> None:
    """A vertical line per rule, named in the legend; the chosen one solid and thick, the others dashed."""
    import plotly.graph_objects as go

    for rule, lr in curve.suggestions.items():
        chosen = curve.suggestion is not None and abs(lr - curve.suggestion) <= 1e-9 * lr
        line = {"color": RULE_COLORS.get(rule, "#444"), "dash": "solid" if chosen else "dash",
                "width": 3 if chosen else 1.5}
        fig.add_vline(x=lr, line=line, row=1, col=col)
        if col == 1:
            name = f"{RULE_LABELS.get(rule, rule)}: {format_value(lr)}" + (" (suggested)" if chosen else "")
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", line=line, name=name), row=1, col=1)
