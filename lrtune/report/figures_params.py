"""Figures about the tuned parameters: LR against macro-F1, the effective-LR grid, the LR per step,
the parameter importances and the parallel coordinates.

Each ``draw_*`` function takes :class:`ReportData` and returns a plotly figure, or None when
there is nothing to draw. Plotly is imported only when a figure is drawn.
"""

from __future__ import annotations

import math
from typing import Any

from lrtune.report.compute import ReportData, TrialSummary
from lrtune.report.values import is_positive_number
from lrtune.report.plotting import (
    LOSS_SYMBOLS,
    STATE_COLORS,
    hover_params,
    label,
    layout,
    log_axis,
    plot_text,
    scheduler_colors,
)


def draw_lr(data: ReportData) -> Any:
    m = data.metric_label
    points = [t for t in data.trials if is_positive_number(t.params.get("lr"))]
    completed = [t for t in points if t.state == "COMPLETE" and t.value is not None]
    if not completed:
        return None
    import plotly.graph_objects as go

    fig = go.Figure()
    colors = scheduler_colors(data.trials)
    groups: dict[tuple[str, str], list[TrialSummary]] = {}
    for t in completed:
        groups.setdefault((label(t.params.get("scheduler")), label(t.params.get("loss"))), []).append(t)
    for (scheduler, loss), group in sorted(groups.items()):
        fig.add_trace(_completed_lr_points(group, scheduler, loss, colors.get(scheduler, "#444"), m))
    pruned = [t for t in points if t.state == "PRUNED" and t.value is not None]
    if pruned:
        fig.add_trace(_pruned_lr_points(pruned, m))
    failed = [t for t in points if t.state == "FAIL"]
    if failed:
        fig.add_trace(_failed_lr_points(failed))
    return layout(
        fig,
        xaxis_title="learning rate",
        yaxis_title=f"validation {m}",
        xaxis=log_axis([t.params["lr"] for t in points]),
    )


def _completed_lr_points(group: list[TrialSummary], scheduler: str, loss: str, color: str, m: str) -> Any:
    import plotly.graph_objects as go

    return go.Scatter(
        x=[t.params["lr"] for t in group],
        y=[t.value for t in group],
        customdata=[t.number for t in group],
        text=[hover_params(t) for t in group],
        mode="markers",
        name=f"{plot_text(scheduler)} · {plot_text(loss)}",
        marker={
            "color": color,
            "symbol": LOSS_SYMBOLS.get(loss, "cross"),
            "size": 9,
            "opacity": 0.8,
            "line": {"width": 0.5, "color": "#fff"},
        },
        hovertemplate=f"trial #%{{customdata}}<br>lr %{{x:.2e}}<br>{m} %{{y:.4f}}<br>%{{text}}<extra></extra>",
    )


def _pruned_lr_points(pruned: list[TrialSummary], m: str) -> Any:
    import plotly.graph_objects as go

    return go.Scatter(
        x=[t.params["lr"] for t in pruned],
        y=[t.value for t in pruned],
        customdata=[t.number for t in pruned],
        mode="markers",
        name="pruned (last value)",
        marker={"color": "#bbb", "symbol": "x-thin", "size": 7, "line": {"width": 1.5, "color": "#999"}},
        hovertemplate=f"pruned trial #%{{customdata}}<br>lr %{{x:.2e}}<br>last {m} %{{y:.4f}}<extra></extra>",
    )


def _failed_lr_points(failed: list[TrialSummary]) -> Any:
    """Failed trials have no value; they sit at 0 so their LRs still show."""
    import plotly.graph_objects as go

    return go.Scatter(
        x=[t.params["lr"] for t in failed],
        y=[0.0] * len(failed),
        customdata=[t.number for t in failed],
        text=[plot_text(t.reason or "failed") for t in failed],
        mode="markers",
        name="failed (at 0)",
        marker={"color": STATE_COLORS["FAIL"], "symbol": "x", "size": 8},
        hovertemplate="failed trial #%{customdata}<br>lr %{x:.2e}<br>%{text}<extra></extra>",
    )


def draw_effective_lr(data: ReportData) -> Any:
    m = data.metric_label
    grid = data.lr_grid
    if grid is None:
        return None
    import plotly.graph_objects as go

    hover = [
        [
            f"{n} trial{'s' if n != 1 else ''}, best #{grid.best_trial[r][c]}" if n else "no trials"
            for c, n in enumerate(row)
        ]
        for r, row in enumerate(grid.count)
    ]
    fig = go.Figure(
        go.Heatmap(
            z=grid.best,
            x=grid.lr_bins,
            y=grid.accum_labels,
            text=hover,
            texttemplate="%{z:.3f}",
            colorscale="Viridis",
            reversescale=not data.maximize,
            colorbar={"title": {"text": f"best {m}"}},
            hoverongaps=False,
            hovertemplate=f"lr %{{x}}<br>accum %{{y}}<br>best {m} %{{z:.4f}}<br>%{{text}}<extra></extra>",
        )
    )
    return layout(
        fig,
        xaxis_title="learning rate (half-decade bins)",
        yaxis_title="accumulation steps (effective batch)",
        xaxis={"type": "category"},
        yaxis={"type": "category"},
        height=max(300, 120 + 60 * len(grid.accum)),
    )


def draw_lr_steps(data: ReportData) -> Any:
    if not data.lr_steps:
        return None
    import plotly.graph_objects as go

    fig = go.Figure()
    for rank, run in enumerate(data.lr_steps, 1):
        value = f" ({run.value:.4f})" if run.value is not None else ""
        fig.add_trace(
            go.Scatter(
                x=run.steps,
                y=run.lrs,
                mode="lines",
                name=f"#{rank}: trial {run.number}{value}",
                hovertemplate=f"trial #{run.number}<br>step %{{x}}<br>lr %{{y:.3e}}<extra></extra>",
            )
        )
    return layout(
        fig,
        xaxis_title="optimizer step",
        yaxis_title="learning rate",
        yaxis=log_axis([lr for run in data.lr_steps for lr in run.lrs]),
    )


def draw_importance(data: ReportData) -> Any:
    if not data.importances:
        return None
    import plotly.graph_objects as go

    items = sorted(data.importances.items(), key=lambda kv: kv[1])
    fig = go.Figure(
        go.Bar(
            x=[v for _, v in items],
            y=[plot_text(k) for k, _ in items],
            orientation="h",
            marker={"color": "#1f77b4"},
            texttemplate="%{x:.2f}",
            textposition="outside",
            hovertemplate="%{y}: %{x:.3f}<extra></extra>",
        )
    )
    return layout(
        fig,
        xaxis_title="importance (PED-ANOVA, sums to 1)",
        yaxis={"type": "category", "ticksuffix": "  "},
        height=max(260, 90 + 32 * len(items)),
        showlegend=False,
    )


def draw_parallel(data: ReportData) -> Any:
    m = data.metric_label
    completed = [t for t in data.completed if is_positive_number(t.params.get("lr"))]
    if not completed:
        return None
    import plotly.graph_objects as go

    dimensions = [_lr_dimension(completed)]
    dimensions += [_choice_dimension(completed, name) for name in ("scheduler", "loss", "accum")]
    values = [t.value for t in completed]
    dimensions.append({"label": m, "values": values})
    fig = go.Figure(
        go.Parcoords(
            dimensions=dimensions,
            line={
                "color": values,
                "colorscale": "Viridis",
                "reversescale": not data.maximize,
                "showscale": True,
                "colorbar": {"title": {"text": m}},
            },
        )
    )
    return layout(fig, margin={"l": 60, "r": 40, "t": 50, "b": 30})


def _lr_dimension(completed: list[TrialSummary]) -> dict[str, Any]:
    """The LR axis: log10 values with a tick per decade."""
    log_lrs = [math.log10(t.params["lr"]) for t in completed]
    decades = list(range(math.floor(min(log_lrs)), math.ceil(max(log_lrs)) + 1))
    return {
        "label": "lr",
        "values": log_lrs,
        "tickvals": decades,
        "ticktext": [f"1e{d}" for d in decades],
        "range": [decades[0], decades[-1]] if len(decades) > 1 else [decades[0] - 1, decades[0] + 1],
    }


def _choice_dimension(completed: list[TrialSummary], name: str) -> dict[str, Any]:
    """A categorical axis: one tick per level, numbers in numeric order before names."""
    raw = [t.params.get(name) for t in completed]
    levels = sorted({label(v) for v in raw}, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
    index = {level: i for i, level in enumerate(levels)}
    return {
        "label": name,
        "values": [index[label(v)] for v in raw],
        "tickvals": list(range(len(levels))),
        "ticktext": [plot_text(level) for level in levels],
        "range": [-0.25, len(levels) - 0.75] if len(levels) > 1 else [-1, 1],
    }


def draw_lr_by_depth(data: ReportData) -> Any:
    """The best trial's LR per layer group, from the first layers to the head (a fine-tune only)."""
    best = data.best
    if best is None or len(best.lr_scales) < 2 or not isinstance(best.params.get("lr"), (int, float)):
        return None
    import plotly.graph_objects as go

    lr = float(best.params["lr"])
    names = [f"layers {i}" for i in range(len(best.lr_scales) - 1)] + ["head"]
    lrs = [lr * scale for scale in best.lr_scales]
    fig = go.Figure(go.Bar(x=names, y=lrs, hovertemplate="%{x}<br>lr %{y:.3e}<extra></extra>"))
    return layout(fig, xaxis_title=f"trial {best.number}'s layer groups, from the input to the head",
                  yaxis_title="learning rate", yaxis=log_axis(lrs))
