"""The report's figures, in page order (:data:`FIGURES`), and the ones about trials and the best trial.

Each ``draw_*`` function takes :class:`ReportData` and returns a plotly figure, or None when
there is nothing to draw. Plotly is imported only when a figure is drawn.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from lrtune.formatting import format_duration
from lrtune.report.compute import STATES, TOP_LR_TRIALS, ReportData, TrialSummary
from lrtune.report.figures_lr_range import draw_lr_range
from lrtune.report.figures_params import (
    draw_effective_lr,
    draw_importance,
    draw_lr,
    draw_lr_by_depth,
    draw_lr_steps,
    draw_parallel,
)
from lrtune.report.plotting import (
    CURVE_DASH,
    STATE_COLORS,
    hover_params,
    label,
    layout,
    plot_text,
    scheduler_colors,
    trial_axis,
)


def draw_history(data: ReportData) -> Any:
    m = data.metric_label
    valued = [t for t in data.trials if t.value is not None]
    if not valued:
        return None
    import plotly.graph_objects as go

    fig = go.Figure()
    for state, name, symbol in (("COMPLETE", "completed trial", "circle"), ("PRUNED", "pruned (last value)", "x")):
        group = [t for t in valued if t.state == state]
        if group:
            fig.add_trace(
                go.Scatter(
                    x=[t.number for t in group],
                    y=[t.value for t in group],
                    mode="markers",
                    name=name,
                    marker={"color": STATE_COLORS[state], "symbol": symbol, "size": 7, "opacity": 0.75},
                    text=[hover_params(t) for t in group],
                    hovertemplate=f"trial #%{{x}}<br>{m} %{{y:.4f}}<br>%{{text}}<extra></extra>",
                )
            )
    if data.baseline:
        fig.add_trace(
            go.Scatter(
                x=[data.baseline.number],
                y=[data.baseline.value],
                mode="markers",
                name="baseline",
                marker={"color": "#000", "symbol": "star", "size": 13},
                hovertemplate=f"baseline trial #%{{x}}<br>{m} %{{y:.4f}}<extra></extra>",
            )
        )
    if data.history_best:
        numbers = sorted(data.history_best)
        fig.add_trace(
            go.Scatter(
                x=numbers,
                y=[data.history_best[n] for n in numbers],
                mode="lines",
                name="best so far",
                line={"color": "#d62728", "width": 2, "shape": "hv"},
                hovertemplate="after trial #%{x}: best %{y:.4f}<extra></extra>",
            )
        )
    return layout(fig, xaxis_title="trial", yaxis_title=f"validation {m}", xaxis=trial_axis(data))


def draw_curves(data: ReportData) -> Any:
    m = data.metric_label
    trials = [t for t in data.trials if t.epochs]
    if not trials:
        return None
    import plotly.graph_objects as go

    fig = go.Figure()
    colors = scheduler_colors(data.trials)
    groups: dict[tuple[str, str], list[TrialSummary]] = {}
    for t in trials:
        groups.setdefault((label(t.params.get("scheduler")), _curve_kind(t)), []).append(t)
    for (scheduler, kind), group in sorted(groups.items()):
        color = colors.get(scheduler, "#444")
        fig.add_trace(_curve_lines(group, scheduler, kind, color, m))
        if kind == "stopped":
            fig.add_trace(_curve_ends(group, scheduler, color, m))
    if data.best and data.best.epochs:
        fig.add_trace(
            go.Scatter(
                x=data.best.epochs,
                y=data.best.values,
                mode="lines+markers",
                name=f"best trial #{data.best.number}",
                line={"color": "#000", "width": 3},
                hovertemplate=f"best trial<br>epoch %{{x}}<br>{m} %{{y:.4f}}<extra></extra>",
            )
        )
    few_epochs = max(e for t in trials for e in t.epochs) <= 20
    return layout(fig, xaxis_title="epoch", yaxis_title=f"validation {m}", xaxis={"dtick": 1} if few_epochs else {})


def _curve_kind(t: TrialSummary) -> str:
    if t.state in ("PRUNED", "FAIL"):
        return "stopped"
    return "running" if t.state == "RUNNING" else "complete"


def _curve_lines(group: list[TrialSummary], scheduler: str, kind: str, color: str, m: str) -> Any:
    """One trace for many curves: the gaps (None) between trials keep them apart."""
    import plotly.graph_objects as go

    xs: list[Any] = []
    ys: list[Any] = []
    numbers: list[Any] = []
    for t in group:
        xs += t.epochs + [None]
        ys += t.values + [None]
        numbers += [t.number] * len(t.epochs) + [None]
    return go.Scatter(
        x=xs,
        y=ys,
        customdata=numbers,
        mode="lines",
        name=f"{plot_text(scheduler)} ({kind})",
        legendgroup=scheduler,
        line={"color": color, "width": 1.3, "dash": CURVE_DASH[kind]},
        opacity=0.55 if kind == "complete" else 0.75,
        connectgaps=False,
        hovertemplate=f"trial #%{{customdata}}<br>epoch %{{x}}<br>{m} %{{y:.4f}}<extra></extra>",
    )


def _curve_ends(group: list[TrialSummary], scheduler: str, color: str, m: str) -> Any:
    """An × where each pruned or failed trial stopped, with its reason on hover."""
    import plotly.graph_objects as go

    ends = [(t.epochs[-1], t.values[-1], t) for t in group if t.values[-1] is not None]
    return go.Scatter(
        x=[e[0] for e in ends],
        y=[e[1] for e in ends],
        text=[plot_text(f"#{e[2].number}: {e[2].reason or e[2].state.lower()}") for e in ends],
        mode="markers",
        showlegend=False,
        legendgroup=scheduler,
        marker={"color": color, "symbol": "x", "size": 8},
        hovertemplate=f"%{{text}}<br>epoch %{{x}}<br>{m} %{{y:.4f}}<extra></extra>",
    )


def draw_per_class(data: ReportData) -> Any:
    scores = data.class_scores
    if scores is None:
        return None
    import plotly.graph_objects as go

    support = [s if s is not None else "?" for s in scores.support]
    classes = [f"{plot_text(c)}<br>n={n}" for c, n in zip(scores.classes, support)]
    fig = go.Figure()
    for name, values, color in (
        ("precision", scores.precision, "#1f77b4"),
        ("recall", scores.recall, "#ff7f0e"),
        ("F1", scores.f1, "#2ca02c"),
    ):
        fig.add_trace(
            go.Bar(
                x=classes,
                y=values,
                name=name,
                marker={"color": color},
                customdata=support,
                hovertemplate=f"class %{{x}}<br>{name} %{{y:.3f}}<br>support %{{customdata}}<extra></extra>",
            )
        )
    title = f"trial #{data.best.number}" if data.best else ""
    if scores.epoch:
        title += f", epoch {scores.epoch}"
    if scores.accuracy is not None:
        title += f", accuracy {scores.accuracy:.3f}"
    fig.update_layout(barmode="group")
    return layout(
        fig,
        xaxis_title="class",
        yaxis_title="score",
        xaxis={"type": "category"},
        yaxis={"range": [0, 1.05]},
        title_text=plot_text(title),
    )


def draw_confusion(data: ReportData) -> Any:
    scores = data.class_scores
    if scores is None or not scores.confusion:
        return None
    import plotly.graph_objects as go

    classes = [plot_text(c) for c in scores.classes]
    totals = [sum(row) for row in scores.confusion]
    share = [[c / total if total else 0.0 for c in row] for row, total in zip(scores.confusion, totals)]
    n = len(classes)
    fig = go.Figure(
        go.Heatmap(
            z=share,
            x=classes,
            y=classes,
            text=[[str(c) if c else "" for c in row] for row in scores.confusion],
            customdata=scores.confusion,
            texttemplate="%{text}" if n <= 25 else None,
            colorscale="Blues",
            zmin=0,
            zmax=1,
            colorbar={"title": {"text": "share of true class"}},
            hovertemplate="true %{y}<br>predicted %{x}<br>%{customdata} images (%{z:.1%} of the class)<extra></extra>",
        )
    )
    side = min(900, max(380, 180 + 34 * n))
    return layout(
        fig,
        xaxis_title="predicted class",
        yaxis_title="true class",
        xaxis={"type": "category", "side": "bottom"},
        yaxis={"type": "category", "autorange": "reversed"},
        height=side,
        width=side + 120,
        autosize=False,
    )


def draw_timeline(data: ReportData) -> Any:
    started = [t for t in data.trials if t.start is not None]
    if not started:
        return None
    import plotly.graph_objects as go

    fig = go.Figure()
    for state in STATES:
        group = [t for t in started if t.state == state]
        if not group:
            continue
        ends = [t.complete or data.generated for t in group]
        fig.add_trace(
            go.Bar(
                base=[t.start.isoformat() for t in group],
                x=[max(0.0, (end - t.start).total_seconds() * 1000) for t, end in zip(group, ends)],
                y=[t.number for t in group],
                orientation="h",
                name=state.lower(),
                marker={"color": STATE_COLORS[state]},
                text=[plot_text(_timeline_hover(t)) for t in group],
                textposition="none",
                hovertemplate="%{text}<extra></extra>",
            )
        )
    height = max(320, min(1000, 140 + 3 * len(started)))
    return layout(
        fig,
        xaxis_title="time",
        yaxis_title="trial",
        xaxis={"type": "date"},
        yaxis={"autorange": "reversed", **trial_axis(data)},
        height=height,
        barmode="overlay",
        bargap=0.15,
    )


def _timeline_hover(t: TrialSummary) -> str:
    parts = [f"trial #{t.number}: {t.state.lower()}"]
    if t.start:
        parts.append(f"start {t.start.isoformat(sep=' ', timespec='seconds')}")
    if t.run_seconds is not None:
        parts.append(f"duration {format_duration(t.run_seconds)}")
    if t.reason:
        parts.append(t.reason)
    return "\n".join(parts)


class Figure(NamedTuple):
    """One figure section of the page: ``name`` is its id, ``draw`` returns its plot or None; a section with
    ``applies`` is on the page only for the studies it says yes to."""

    name: str
    title: str
    caption: str
    draw: Callable[[ReportData], Any]
    applies: Callable[[ReportData], bool] | None = None


FIGURES = [
    Figure(
        "history",
        "Optimization history",
        "Every trial's validation macro-F1 and the best completed value so far.",
        draw_history,
    ),
    Figure(
        "curves",
        "Learning curves",
        "Validation macro-F1 per epoch for every trial, coloured by LR scheduler.",
        draw_curves,
    ),
    Figure(
        "lr",
        "Learning rate vs macro-F1",
        "Final macro-F1 of completed trials against their learning rate; colour is the scheduler, symbol the loss.",
        draw_lr,
    ),
    Figure(
        "lr-range",
        "LR range test",
        "The range test's training loss against the LR it swept, with each rule's suggestion marked (the chosen "
        "one solid), beside the completed trials' final macro-F1 against their LR: did the test predict the good LRs? "
        "The shaded band is the LR range the search sampled from.",
        draw_lr_range,
    ),
    Figure(
        "effective-lr",
        "Effective learning rate",
        "Best macro-F1 for each learning-rate bin and number of gradient accumulation steps; "
        "accumulation multiplies the batch, so the best LR moves with it.",
        draw_effective_lr,
    ),
    Figure(
        "lr-steps",
        "Learning rate per optimizer step",
        f"The learning rate each of the top {TOP_LR_TRIALS} trials actually used, step by step.",
        draw_lr_steps,
    ),
    Figure(
        "importance",
        "Hyperparameter importance",
        "How much each parameter explains macro-F1 (Optuna's get_param_importances).",
        draw_importance,
    ),
    Figure(
        "parallel",
        "Parallel coordinates",
        "Each line is a completed trial; drag along an axis to filter.",
        draw_parallel,
    ),
    Figure(
        "lr-by-depth",
        "Best trial: LR by depth",
        "A fine-tune's LR per layer group: the body's share of the head's LR, at the start of the schedule.",
        draw_lr_by_depth,
        lambda data: any(t.lr_scales for t in data.trials),
    ),
    Figure(
        "per-class",
        "Best trial: per-class scores",
        "Precision, recall and F1 of each class at the best trial's best epoch.",
        draw_per_class,
    ),
    Figure(
        "confusion",
        "Best trial: confusion matrix",
        "Rows are true classes, columns predictions; colour is the share of the true class.",
        draw_confusion,
    ),
    Figure("timeline", "Timeline", "When each trial ran, coloured by its state.", draw_timeline),
]
FIGURE_NAMES = tuple(figure.name for figure in FIGURES)
ALWAYS_SHOWN = tuple(figure.name for figure in FIGURES if figure.applies is None)  # on every study's page


def report_figures(data: ReportData) -> dict[str, Any]:
    """Every figure of the report that has something to show, by name, titled as the page titles it."""
    figures = {}
    for figure in FIGURES:
        plot = figure.draw(data)
        if plot is not None:
            plot.update_layout(title={"text": figure.title.replace("macro-F1", data.metric_label)})
            figures[figure.name] = plot
    return figures
