"""What every report figure shares: colours, the plot template and layout, axes and label text."""

from __future__ import annotations

import html
import math
from typing import Any

from lrtune.formatting import format_value
from lrtune.report.compute import ReportData, TrialSummary

TUNED_PARAMS = ("lr", "scheduler", "loss", "accum")
SCHEDULER_COLORS = {"step": "#1f77b4", "cosine": "#ff7f0e", "plateau": "#2ca02c"}
EXTRA_COLORS = ("#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
STATE_COLORS = {
    "COMPLETE": "#2ca02c",
    "PRUNED": "#7f7f7f",
    "FAIL": "#d62728",
    "RUNNING": "#1f77b4",
    "WAITING": "#bcbd22",
}
LOSS_SYMBOLS = {"ce": "circle", "focal": "square", "label_smoothing": "diamond", "f1": "triangle-up"}
CURVE_DASH = {"complete": "solid", "running": "dot", "stopped": "dash"}
PLOT_CONFIG = {"displaylogo": False, "responsive": True}
# A small stand-in for plotly's "plotly_white": the full template is copied into every figure and is slow.
AXIS_STYLE = {"gridcolor": "#ebebeb", "zerolinecolor": "#d0d0d0", "linecolor": "#bbb", "automargin": True}
PLOT_TEMPLATE = {
    "layout": {
        "paper_bgcolor": "white",
        "plot_bgcolor": "white",
        "font": {"color": "#2a3f5f"},
        "colorway": ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"],
        "xaxis": AXIS_STYLE,
        "yaxis": AXIS_STYLE,
        "hoverlabel": {"align": "left"},
    }
}


def layout(fig: Any, *, xaxis_title: str = "", yaxis_title: str = "", **options: Any) -> Any:
    """Apply the report's template, size and axis titles to ``fig``; ``options`` go to ``update_layout``."""
    xaxis = {"title": {"text": xaxis_title}, **options.pop("xaxis", {})}
    yaxis = {"title": {"text": yaxis_title}, **options.pop("yaxis", {})}
    fig.update_layout(
        template=PLOT_TEMPLATE,
        height=options.pop("height", 440),
        margin=options.pop("margin", {"l": 70, "r": 30, "t": 40, "b": 60}),
        legend={"font": {"size": 11}},
        xaxis=xaxis,
        yaxis=yaxis,
        **options,
    )
    return fig


def log_axis(values: list[float]) -> dict[str, Any]:
    """A log axis with one labelled tick per decade, spanning at least one whole decade."""
    logs = [math.log10(v) for v in values if v > 0]
    low, high = math.floor(min(logs)), math.ceil(max(logs))
    if low == high:
        low, high = low - 1, high + 1
    return {"type": "log", "dtick": 1, "exponentformat": "power", "range": [low - 0.05, high + 0.05]}


def trial_axis(data: ReportData) -> dict[str, Any]:
    """A tick for every trial number while there are few trials."""
    return {"dtick": 1} if data.trials and data.trials[-1].number < 20 else {}


def scheduler_colors(trials: list[TrialSummary]) -> dict[str, str]:
    """The same colour for a scheduler in every figure; unknown schedulers get the spare colours."""
    colors = dict(SCHEDULER_COLORS)
    extra = iter(EXTRA_COLORS * 10)
    for t in trials:
        name = label(t.params.get("scheduler"))
        if name not in colors:
            colors[name] = next(extra, "#444")
    return colors


def hover_params(t: TrialSummary) -> str:
    """The tuned parameters other than the LR, for a point's hover text."""
    shown = [f"{k}={format_value(t.params[k])}" for k in TUNED_PARAMS if k in t.params and k != "lr"]
    return plot_text(", ".join(shown))


def plot_text(text: str) -> str:
    """Text for a plotly label: plotly reads a few HTML tags in labels, so user text is escaped."""
    return html.escape(str(text), quote=False).replace("\n", "<br>")


def label(value: Any) -> str:
    """A parameter value as a legend or axis label; ``?`` for a trial that lacks it."""
    return "?" if value is None else str(value)
