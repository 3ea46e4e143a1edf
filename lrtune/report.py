"""``lrtune report``: one self-contained HTML page about a study.

The report is built in two steps, like Optuna's visualizations:
:func:`compute_report` turns a study into plain data (:class:`ReportData`), and
:func:`draw_report` turns that data into HTML with plotly figures. The study is
only read, so a report can be made while a search is still writing to it.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import html
import math
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from lrtune.errors import LRTuneError
from lrtune.study import latest_study_name, load_study, mask_url, open_storage, study_dir

PLOTLYJS_MODES = ("inline", "cdn")
REPORT_NAME = "report.html"
MIN_TRIALS_FOR_IMPORTANCE = 4
ROUGH_IMPORTANCE_BELOW = 20
TOP_TRIALS = 10
TOP_LR_TRIALS = 5
STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
TUNED_PARAMS = ("lr", "scheduler", "loss", "accum")
# Config fields that say how the best trial was trained, shown beside its params.
TRAINING_CONFIG = (
    "data",
    "model",
    "pretrained",
    "epochs",
    "batch_size",
    "optimizer",
    "weight_decay",
    "momentum",
    "warmup_epochs",
    "image_size",
    "balance",
    "amp",
    "seed",
)


# --------------------------------------------------------------------------- data


@dataclass
class TrialSummary:
    """What the report needs from one trial; any attribute may be missing."""

    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    start: datetime.datetime | None
    complete: datetime.datetime | None
    epochs: list[int]
    val_f1: list[float | None]
    effective_batch: int | None
    best_epoch: int | None
    reason: str
    baseline: bool
    retry_of: int | None


@dataclass
class ClassScores:
    """The best trial's per-class scores at its best epoch."""

    classes: list[str]
    precision: list[float | None]
    recall: list[float | None]
    f1: list[float | None]
    support: list[int | None]
    confusion: list[list[int]]
    accuracy: float | None
    epoch: int | None


@dataclass
class LRGrid:
    """Best value per (log-LR bin, accumulation steps) cell; ``None`` where no trial fell."""

    lr_bins: list[str]
    accum: list[int]
    accum_labels: list[str]
    best: list[list[float | None]]
    best_trial: list[list[int | None]]
    count: list[list[int]]


@dataclass
class LRSteps:
    number: int
    value: float | None
    steps: list[float]
    lrs: list[float]


@dataclass
class ReportData:
    """Everything the report shows; ``notes`` maps a figure name to the notes shown above it."""

    study_name: str
    storage: str
    maximize: bool
    generated: datetime.datetime
    dataset: dict[str, Any]
    config: dict[str, Any]
    training: dict[str, Any]
    fingerprint: str
    counts: dict[str, int]
    trials: list[TrialSummary]
    best: TrialSummary | None
    baseline: TrialSummary | None
    gain: float | None
    history_best: dict[int, float]
    top: list[TrialSummary]
    lr_grid: LRGrid | None
    lr_steps: list[LRSteps]
    importances: dict[str, float]
    class_scores: ClassScores | None
    stopped: list[dict[str, Any]]
    notes: dict[str, list[str]] = field(default_factory=dict)

    @property
    def completed(self) -> list[TrialSummary]:
        return [t for t in self.trials if t.state == "COMPLETE"]


# --------------------------------------------------------------------------- the command


def run_report(
    storage_url: str,
    study_name: str | None,
    out: str | None,
    *,
    studies_dir: str = "studies",
    plotlyjs: str = "inline",
) -> Path:
    """Write the report of ``study_name`` (default: the most recently updated study) and return its path.

    ``out`` defaults to ``<studies_dir>/<study>/report.html``; its folder must
    already exist when ``out`` is given.
    """
    if plotlyjs not in PLOTLYJS_MODES:
        raise LRTuneError(f"unknown --plotlyjs {plotlyjs!r} (valid: {', '.join(PLOTLYJS_MODES)})")
    storage = _open_existing_storage(storage_url)
    study_name = study_name or latest_study_name(storage)
    if study_name is None:
        raise LRTuneError(f"no studies in {mask_url(storage_url)}")
    study = load_study(storage, study_name)
    if out:
        path = Path(out)
        _check_output_folder(path.parent)
    else:
        path = study_dir(studies_dir, study.study_name) / REPORT_NAME
        _make_output_folder(path.parent)
    if path.is_dir():
        raise LRTuneError(f"--out {path} is a folder; give a file name")
    data = compute_report(study, storage_label=mask_url(storage_url))
    _write_atomically(path, draw_report(data, plotlyjs=plotlyjs))
    return path


def _open_existing_storage(url: str) -> optuna.storages.BaseStorage:
    # open_storage creates a missing SQLite file; a report must not.
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:" and not path.startswith("file:") and not Path(path).is_file():
            raise LRTuneError(f"cannot open storage {mask_url(url)}: no such file {path}")
    return open_storage(url)


def _check_output_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise LRTuneError(f"output folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise LRTuneError(f"output folder {folder} is not writable")


def _make_output_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LRTuneError(f"cannot create output folder {folder}: {exc.strerror or exc}") from None
    _check_output_folder(folder)


def _write_atomically(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path``, then rename, so readers never see half a report."""
    tmp_name = None
    try:
        with tempfile.NamedTemporaryFile(
            "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
        ) as tmp:
            tmp_name = tmp.name
            tmp.write(text)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
        tmp_name = None
    except OSError as exc:
        raise LRTuneError(f"cannot write report {path}: {exc.strerror or exc}") from None
    finally:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)


# --------------------------------------------------------------------------- compute


def compute_report(study: optuna.Study, *, storage_label: str) -> ReportData:
    """Everything the report shows, as plain data; plotly is not needed here."""
    maximize = study.direction == StudyDirection.MAXIMIZE
    frozen = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    trials = [summarize_trial(t) for t in frozen]
    attrs = study.user_attrs
    dataset = attrs.get("dataset") if isinstance(attrs.get("dataset"), dict) else {}
    config = dict(attrs["config"]) if isinstance(attrs.get("config"), dict) else {}
    if isinstance(config.get("storage"), str):
        config["storage"] = mask_url(config["storage"])

    completed = [t for t in trials if t.state == "COMPLETE" and t.value is not None]
    ranked = sorted(completed, key=lambda t: -t.value if maximize else t.value)
    best = ranked[0] if ranked else None
    baseline = find_baseline(trials, attrs.get("baseline"))
    gain = best.value - baseline.value if best and baseline and baseline.value is not None else None
    by_number = {t.number: t for t in frozen}
    best_frozen = by_number.get(best.number) if best else None

    data = ReportData(
        study_name=study.study_name,
        storage=storage_label,
        maximize=maximize,
        generated=datetime.datetime.now().replace(microsecond=0),
        dataset=dataset,
        config=config,
        training=training_config(config, dataset),
        fingerprint=str(attrs.get("fingerprint", "")),
        counts={state: sum(t.state == state for t in trials) for state in STATES},
        trials=trials,
        best=best,
        baseline=baseline,
        gain=gain,
        history_best=best_so_far(trials, maximize),
        top=ranked[:TOP_TRIALS],
        lr_grid=lr_grid(completed, config, maximize),
        lr_steps=[steps for t in ranked[:TOP_LR_TRIALS] if (steps := lr_steps_of(by_number[t.number]))],
        importances={},
        class_scores=class_scores(best_frozen, dataset) if best_frozen else None,
        stopped=stopped_reasons(trials),
    )
    data.importances = _importances(study, len(completed), data.notes)
    _add_notes(data)
    return data


def training_config(config: dict[str, Any], dataset: dict[str, Any]) -> dict[str, Any]:
    """The config fields that say how every trial was trained; ``image_size`` 0 means the dataset's size."""
    training = {k: config[k] for k in TRAINING_CONFIG if k in config}
    if not training.get("image_size") and dataset.get("image_size"):
        training["image_size"] = dataset["image_size"]
    if training.get("optimizer") != "sgd":
        training.pop("momentum", None)
    return training


def summarize_trial(trial: FrozenTrial) -> TrialSummary:
    attrs = trial.user_attrs
    curves = attrs.get("curves") if isinstance(attrs.get("curves"), dict) else {}
    epochs, val_f1 = _curve(curves)
    if not epochs and trial.intermediate_values:
        epochs = sorted(trial.intermediate_values)
        val_f1 = [_finite(trial.intermediate_values[e]) for e in epochs]
    best = attrs.get("best") if isinstance(attrs.get("best"), dict) else {}
    value = _finite(trial.value) if trial.state in (TrialState.COMPLETE, TrialState.PRUNED) else None
    return TrialSummary(
        number=trial.number,
        state=trial.state.name,
        value=value,
        params=dict(trial.params),
        start=trial.datetime_start,
        complete=trial.datetime_complete,
        epochs=epochs,
        val_f1=val_f1,
        effective_batch=_int_or_none(attrs.get("effective_batch")),
        best_epoch=_int_or_none(best.get("epoch")),
        reason=str(attrs.get("reason", "")),
        baseline=attrs.get("baseline") is True,
        retry_of=_int_or_none(attrs.get("retry_of")),
    )


def find_baseline(trials: list[TrialSummary], baseline_params: Any) -> TrialSummary | None:
    """The completed baseline trial: the one marked ``baseline``, else one with the baseline's params."""
    completed = [t for t in trials if t.state == "COMPLETE" and t.value is not None]
    marked = [t for t in completed if t.baseline]
    if marked:
        return marked[0]
    if isinstance(baseline_params, dict) and baseline_params:
        return next((t for t in completed if t.params == baseline_params), None)
    return None


def best_so_far(trials: list[TrialSummary], maximize: bool) -> dict[int, float]:
    """Trial number -> the best completed value up to and including that trial."""
    out: dict[int, float] = {}
    best: float | None = None
    for t in trials:
        if t.state == "COMPLETE" and t.value is not None:
            if best is None or (t.value > best if maximize else t.value < best):
                best = t.value
        if best is not None:
            out[t.number] = best
    return out


def lr_grid(completed: list[TrialSummary], config: dict[str, Any], maximize: bool) -> LRGrid | None:
    """Bin completed trials by half a decade of LR and by accumulation steps."""
    points = [
        (math.log10(t.params["lr"]), t.params["accum"], t)
        for t in completed
        if _positive_number(t.params.get("lr")) and isinstance(t.params.get("accum"), int)
    ]
    if not points:
        return None
    low = math.floor(min(p[0] for p in points) * 2) / 2
    high = max(math.ceil(max(p[0] for p in points) * 2) / 2, low + 0.5)
    n_bins = round((high - low) * 2)
    edges = [low + i / 2 for i in range(n_bins + 1)]
    accum = sorted({p[1] for p in points})
    batch_size = _int_or_none(config.get("batch_size"))
    batches = {p[1]: p[2].effective_batch for p in points if p[2].effective_batch}
    labels = []
    for a in accum:
        batch = batches.get(a) or (batch_size * a if batch_size else None)
        labels.append(f"{a} (batch {batch})" if batch else str(a))
    best: list[list[float | None]] = [[None] * n_bins for _ in accum]
    best_trial: list[list[int | None]] = [[None] * n_bins for _ in accum]
    count = [[0] * n_bins for _ in accum]
    for log_lr, a, t in points:
        row, col = accum.index(a), min(int((log_lr - low) * 2), n_bins - 1)
        count[row][col] += 1
        current = best[row][col]
        if current is None or (t.value > current if maximize else t.value < current):
            best[row][col] = t.value
            best_trial[row][col] = t.number
    bins = [f"{_sci(10 ** a)}–{_sci(10 ** b)}" for a, b in zip(edges, edges[1:])]
    return LRGrid(lr_bins=bins, accum=accum, accum_labels=labels, best=best, best_trial=best_trial, count=count)


def lr_steps_of(trial: FrozenTrial) -> LRSteps | None:
    raw = trial.user_attrs.get("lr_steps")
    if not isinstance(raw, list):
        return None
    pairs = [p for p in raw if isinstance(p, (list, tuple)) and len(p) == 2 and _positive_number(p[1])]
    if not pairs:
        return None
    return LRSteps(
        number=trial.number,
        value=_finite(trial.value),
        steps=[float(p[0]) for p in pairs],
        lrs=[float(p[1]) for p in pairs],
    )


def class_scores(trial: FrozenTrial, dataset: dict[str, Any]) -> ClassScores | None:
    best = trial.user_attrs.get("best")
    if not isinstance(best, dict):
        return None
    lists = {
        key: best.get(key) if isinstance(best.get(key), list) else []
        for key in ("precision", "recall", "f1", "support")
    }
    confusion = best.get("confusion") if isinstance(best.get("confusion"), list) else []
    n = max([len(v) for v in lists.values()] + [len(confusion)])
    if n == 0:
        return None
    names = dataset.get("classes") if isinstance(dataset.get("classes"), list) else []
    classes = [str(names[i]) if i < len(names) else str(i) for i in range(n)]
    matrix = [[_int_or_none(c) or 0 for c in row] if isinstance(row, list) else [] for row in confusion]
    matrix = [(row + [0] * n)[:n] for row in matrix] if len(matrix) == n else []

    def pad(values: list[Any], convert: Callable[[Any], Any]) -> list[Any]:
        return [convert(values[i]) if i < len(values) else None for i in range(n)]

    return ClassScores(
        classes=classes,
        precision=pad(lists["precision"], _finite),
        recall=pad(lists["recall"], _finite),
        f1=pad(lists["f1"], _finite),
        support=pad(lists["support"], _int_or_none),
        confusion=matrix,
        accuracy=_finite(best.get("accuracy")),
        epoch=_int_or_none(best.get("epoch")),
    )


def stopped_reasons(trials: list[TrialSummary]) -> list[dict[str, Any]]:
    """Pruned and failed trials grouped by state and reason, most common first."""
    groups: dict[tuple[str, str], list[int]] = {}
    for t in trials:
        if t.state in ("PRUNED", "FAIL"):
            groups.setdefault((t.state, t.reason or "no reason stored"), []).append(t.number)
    rows = [{"state": s, "reason": r, "count": len(n), "trials": n} for (s, r), n in groups.items()]
    return sorted(rows, key=lambda row: (-row["count"], row["state"], row["reason"]))


def _importances(study: optuna.Study, n_completed: int, notes: dict[str, list[str]]) -> dict[str, float]:
    if n_completed < MIN_TRIALS_FOR_IMPORTANCE:
        notes.setdefault("importance", []).append(
            f"Parameter importances need at least {MIN_TRIALS_FOR_IMPORTANCE} completed trials; "
            f"this study has {n_completed}."
        )
        return {}
    try:
        with warnings.catch_warnings():
            # Optuna warns about small samples; the note below says it once.
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError) as exc:
        notes.setdefault("importance", []).append(f"Parameter importances could not be computed: {exc}")
        return {}
    if n_completed < ROUGH_IMPORTANCE_BELOW:
        notes.setdefault("importance", []).append(
            f"Based on only {n_completed} completed trials, so the importances are rough."
        )
    return {name: float(v) for name, v in importances.items()}


def _add_notes(data: ReportData) -> None:
    def note(name: str, text: str) -> None:
        data.notes.setdefault(name, []).append(text)

    n_trials = len(data.trials)
    n_complete = len(data.completed)
    if n_trials == 0:
        note("summary", "The study has no trials yet.")
    elif n_complete == 0:
        finished = data.counts["PRUNED"] + data.counts["FAIL"]
        if finished and data.counts["PRUNED"] == finished:
            note("summary", f"All {finished} finished trials were pruned; no trial has completed yet.")
        else:
            note("summary", "No trial has completed yet, so there is no best trial.")
    elif n_complete == 1:
        note("summary", "Only one trial has completed; the comparisons below need more.")
    if data.best and data.baseline is None:
        note("summary", "There is no completed baseline trial to compare the best trial with.")
    no_complete = "No trial has completed yet."
    if not any(t.value is not None for t in data.trials):
        note("history", "No trial has reported a value yet.")
    elif n_complete == 0:
        note("history", "No trial has completed; the points are the last values of pruned trials.")
    if not any(t.epochs for t in data.trials):
        note("curves", "No trial has finished an epoch yet.")
    elif data.counts["PRUNED"] or data.counts["FAIL"]:
        note("curves", "Dashed lines ending in × are trials that were pruned or failed before the last epoch.")
    if n_complete == 0:
        for name in ("lr", "effective-lr", "parallel"):
            note(name, no_complete)
    if not data.lr_steps:
        note("lr-steps", no_complete if n_complete == 0 else "The top trials stored no per-step learning rates.")
    if data.best is None:
        note("per-class", no_complete)
        note("confusion", no_complete)
    elif data.class_scores is None:
        note("per-class", f"The best trial (#{data.best.number}) stored no per-class scores.")
        note("confusion", f"The best trial (#{data.best.number}) stored no confusion matrix.")
    elif not data.class_scores.confusion:
        note("confusion", f"The best trial (#{data.best.number}) stored no confusion matrix.")
    if not any(t.start for t in data.trials):
        note("timeline", "No trial has started yet.")
    if n_complete == 0:
        note("top-trials", no_complete)


def _curve(curves: dict[str, Any]) -> tuple[list[int], list[float | None]]:
    values = curves.get("val_f1")
    if not isinstance(values, list) or not values:
        return [], []
    epochs = curves.get("epoch")
    if not isinstance(epochs, list) or len(epochs) != len(values):
        epochs = list(range(1, len(values) + 1))
    return [_int_or_none(e) or i + 1 for i, e in enumerate(epochs)], [_finite(v) for v in values]


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _positive_number(value: Any) -> bool:
    number = _finite(value)
    return number is not None and number > 0


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _sci(x: float) -> str:
    mantissa, exponent = f"{x:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


# --------------------------------------------------------------------------- draw

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

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: #222; background: #fafafa; margin: 0; line-height: 1.45; }
main { max-width: 1100px; margin: 0 auto; padding: 1.5rem 2rem 3rem; background: #fff; }
h1 { font-size: 1.6rem; margin: 0 0 0.25rem; overflow-wrap: anywhere; }
h2 { font-size: 1.2rem; margin: 2rem 0 0.4rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
p.generated { color: #666; margin: 0 0 1rem; font-size: 0.9rem; }
p.caption { color: #555; margin: 0.2rem 0 0.4rem; font-size: 0.92rem; }
p.note { background: #fff8e1; border-left: 4px solid #f0b429; padding: 0.45rem 0.8rem; margin: 0.5rem 0; }
dl.summary { display: grid; grid-template-columns: max-content 1fr; gap: 0.3rem 1.2rem; margin: 0; }
dl.summary dt { font-weight: 600; color: #444; }
dl.summary dd { margin: 0; overflow-wrap: anywhere; }
table { border-collapse: collapse; margin: 0.5rem 0; font-size: 0.92rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.columns { display: flex; flex-wrap: wrap; gap: 1rem 2.5rem; align-items: flex-start; }
details { margin: 0.6rem 0; }
summary { cursor: pointer; color: #1f4e99; }
.figure { margin: 0.5rem 0 1rem; }
.state-COMPLETE { color: #1b7a1b; } .state-FAIL { color: #b71c1c; } .state-PRUNED { color: #666; }
"""


def draw_report(data: ReportData, *, plotlyjs: str = "inline") -> str:
    """The report page: a header, then one section per figure; plotly.js is included once."""
    if plotlyjs not in PLOTLYJS_MODES:
        raise LRTuneError(f"unknown --plotlyjs {plotlyjs!r} (valid: {', '.join(PLOTLYJS_MODES)})")
    name = html.escape(data.study_name)
    sections = [_draw_summary(data)]
    for figure in FIGURES:
        plot = figure.draw(data)
        body = _figure_html(plot, figure.name) if plot is not None else ""
        sections.append(_section(data, figure.name, figure.title, figure.caption, body))
    top_caption = "Completed trials with the best macro-F1."
    sections.append(_section(data, "top-trials", f"Top {TOP_TRIALS} trials", top_caption, _top_table(data)))
    sections.append(_stopped_table(data))
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>lrtune report: {name}</title>",
            f"<style>{STYLE}</style>",
            _plotlyjs_script(plotlyjs),
            "</head>",
            "<body>",
            "<main>",
            f'<h1>lrtune report: <span class="study-name">{name}</span></h1>',
            f'<p class="generated">Generated {data.generated.isoformat(sep=" ")}</p>',
            *sections,
            "</main>",
            "</body>",
            "</html>",
            "",
        ]
    )


def _plotlyjs_script(mode: str) -> str:
    from plotly.offline import get_plotlyjs, get_plotlyjs_version

    config = "<script>window.PlotlyConfig = {MathJaxConfig: 'local'};</script>"
    bundle = get_plotlyjs()
    if mode == "cdn":
        digest = base64.b64encode(hashlib.sha384(bundle.encode("utf-8")).digest()).decode()
        url = f"https://cdn.plot.ly/plotly-{get_plotlyjs_version()}.min.js"
        tag = f'<script charset="utf-8" src="{url}" integrity="sha384-{digest}" crossorigin="anonymous"></script>'
        return f"{config}\n{tag}"
    return f'{config}\n<script charset="utf-8">{bundle}</script>'


def _figure_html(figure: Any, name: str) -> str:
    import plotly.io as pio

    # plotly writes its JSON with "<", ">" and "/" as \\u escapes, so no string in it can close the script.
    return pio.to_html(
        figure, full_html=False, include_plotlyjs=False, div_id=f"plot-{name}", config=PLOT_CONFIG
    )


def _section(data: ReportData, name: str, title: str, caption: str, body: str) -> str:
    texts = data.notes.get(name) or ([] if body else ["Nothing to show for this study yet."])
    notes = "".join(f'<p class="note">{html.escape(text)}</p>' for text in texts)
    return (
        f"<section>\n<h2>{html.escape(title)}</h2>\n"
        f'<div class="figure" id="fig-{name}">\n<p class="caption">{html.escape(caption)}</p>\n'
        f"{notes}\n{body}\n</div>\n</section>"
    )


def _draw_summary(data: ReportData) -> str:
    e = html.escape
    dataset = data.dataset
    classes = dataset.get("classes") if isinstance(dataset.get("classes"), list) else []
    rows: list[tuple[str, str]] = [("Study", e(data.study_name)), ("Storage", e(data.storage))]
    data_name = dataset.get("name") or data.config.get("data")
    if data_name:
        parts = [e(str(data_name))]
        if classes:
            parts.append(f"{len(classes)} classes")
        if dataset.get("n_train") is not None:
            n_train, n_val = e(str(dataset.get("n_train"))), e(str(dataset.get("n_val", "?")))
            parts.append(f"{n_train} train / {n_val} validation images")
        if dataset.get("image_size"):
            parts.append(f"{e(str(dataset['image_size']))} px")
        rows.append(("Dataset", ", ".join(parts)))
    if data.config.get("model"):
        rows.append(("Model", e(str(data.config["model"]))))
    if data.config.get("epochs"):
        rows.append(("Epochs per trial", e(str(data.config["epochs"]))))
    counts = ", ".join(
        f'<span class="state-{s}">{n} {s.lower()}</span>' for s, n in data.counts.items() if n
    )
    rows.append(("Trials", f"{len(data.trials)} ({counts})" if data.trials else "0"))
    metric = "Best macro-F1"
    if data.best:
        rows.append((metric, f"{data.best.value:.4f} (trial #{data.best.number})"))
    else:
        rows.append((metric, "none yet"))
    if data.gain is not None and data.baseline is not None:
        sign = "+" if data.gain >= 0 else "−"
        relative = f", {sign}{abs(data.gain) / data.baseline.value:.1%}" if data.baseline.value else ""
        same = " (the baseline is the best trial)" if data.best and data.best.number == data.baseline.number else ""
        rows.append(
            (
                "Gain over baseline",
                f"{sign}{abs(data.gain):.4f}{relative} (baseline trial #{data.baseline.number}: "
                f"{data.baseline.value:.4f}){same}",
            )
        )
    if data.fingerprint:
        rows.append(("Config fingerprint", f"<code>{e(data.fingerprint)}</code>"))
    summary = "\n".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    notes = "".join(f'<p class="note">{e(text)}</p>' for text in data.notes.get("summary", []))
    return (
        f'<section id="summary">\n<dl class="summary">\n{summary}\n</dl>\n{notes}\n'
        f"{_best_config(data)}\n</section>"
    )


def _best_config(data: ReportData) -> str:
    e = html.escape
    parts = []
    if data.best:
        best = data.best
        params = "".join(f"<tr><th>{e(k)}</th><td>{e(_fmt(v))}</td></tr>" for k, v in best.params.items())
        if best.effective_batch:
            params += f"<tr><th>effective batch</th><td>{best.effective_batch}</td></tr>"
        if best.best_epoch:
            params += f"<tr><th>best epoch</th><td>{best.best_epoch}</td></tr>"
        training = "".join(
            f"<tr><th>{e(k)}</th><td>{e(_fmt(v))}</td></tr>" for k, v in data.training.items()
        )
        parts.append(f"<h2>Best trial: #{best.number}</h2>")
        parts.append('<div class="columns" id="best-config">')
        parts.append(f'<table class="params"><caption>Tuned parameters</caption>{params}</table>')
        if training:
            parts.append(f'<table class="training"><caption>Training configuration</caption>{training}</table>')
        parts.append("</div>")
    if data.config:
        rows = "".join(f"<tr><th>{e(k)}</th><td>{e(_fmt(v))}</td></tr>" for k, v in sorted(data.config.items()))
        parts.append(f"<details><summary>Full study configuration</summary><table>{rows}</table></details>")
    return "\n".join(parts)


def _top_table(data: ReportData) -> str:
    if not data.top:
        return ""
    e = html.escape
    columns = ("Rank", "Trial", "Macro-F1", "LR", "Scheduler", "Loss", "Accum", "Eff. batch", "Best epoch", "Duration")
    header = "<tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>"
    rows = []
    for rank, t in enumerate(data.top, 1):
        marker = " (baseline)" if t.baseline else f" (retry of #{t.retry_of})" if t.retry_of is not None else ""
        rows.append(
            "<tr>"
            f'<td class="num">{rank}</td><td class="num">#{t.number}{marker}</td>'
            f'<td class="num">{t.value:.4f}</td>'
            f'<td class="num">{e(_fmt(t.params.get("lr", "")))}</td>'
            f'<td>{e(_fmt(t.params.get("scheduler", "")))}</td>'
            f'<td>{e(_fmt(t.params.get("loss", "")))}</td>'
            f'<td class="num">{e(_fmt(t.params.get("accum", "")))}</td>'
            f'<td class="num">{t.effective_batch or ""}</td>'
            f'<td class="num">{t.best_epoch or ""}</td>'
            f'<td class="num">{_duration(t)}</td>'
            "</tr>"
        )
    return f'<table id="top-trials">{header}{"".join(rows)}</table>'


def _stopped_table(data: ReportData) -> str:
    if not data.stopped:
        return ""
    e = html.escape
    rows = []
    for row in data.stopped[:TOP_TRIALS]:
        numbers = ", ".join(f"#{n}" for n in row["trials"][:8]) + (" …" if len(row["trials"]) > 8 else "")
        rows.append(
            f'<tr><td class="state-{row["state"]}">{row["state"].lower()}</td><td>{e(row["reason"])}</td>'
            f'<td class="num">{row["count"]}</td><td>{numbers}</td></tr>'
        )
    more = len(data.stopped) - TOP_TRIALS
    tail = f'<p class="caption">…and {more} other reasons.</p>' if more > 0 else ""
    return (
        '<section id="stopped">\n<h2>Why trials stopped early</h2>\n'
        "<table><tr><th>State</th><th>Reason</th><th>Trials</th><th>Which</th></tr>"
        f'{"".join(rows)}</table>{tail}\n</section>'
    )


def _draw_history(data: ReportData) -> Any:
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
                    text=[_hover_params(t) for t in group],
                    hovertemplate="trial #%{x}<br>macro-F1 %{y:.4f}<br>%{text}<extra></extra>",
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
                hovertemplate="baseline trial #%{x}<br>macro-F1 %{y:.4f}<extra></extra>",
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
    return _layout(fig, xaxis_title="trial", yaxis_title="validation macro-F1", xaxis=_trial_axis(data))


def _draw_curves(data: ReportData) -> Any:
    trials = [t for t in data.trials if t.epochs]
    if not trials:
        return None
    import plotly.graph_objects as go

    fig = go.Figure()
    colors = _scheduler_colors(data.trials)
    groups: dict[tuple[str, str], list[TrialSummary]] = {}
    for t in trials:
        groups.setdefault((_label(t.params.get("scheduler")), _curve_kind(t)), []).append(t)
    for (scheduler, kind), group in sorted(groups.items()):
        xs: list[Any] = []
        ys: list[Any] = []
        numbers: list[Any] = []
        for t in group:
            xs += t.epochs + [None]
            ys += t.val_f1 + [None]
            numbers += [t.number] * len(t.epochs) + [None]
        color = colors.get(scheduler, "#444")
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                customdata=numbers,
                mode="lines",
                name=f"{_plot_text(scheduler)} ({kind})",
                legendgroup=scheduler,
                line={"color": color, "width": 1.3, "dash": CURVE_DASH[kind]},
                opacity=0.55 if kind == "complete" else 0.75,
                connectgaps=False,
                hovertemplate="trial #%{customdata}<br>epoch %{x}<br>macro-F1 %{y:.4f}<extra></extra>",
            )
        )
        if kind == "stopped":
            ends = [(t.epochs[-1], t.val_f1[-1], t) for t in group if t.val_f1[-1] is not None]
            fig.add_trace(
                go.Scatter(
                    x=[e[0] for e in ends],
                    y=[e[1] for e in ends],
                    text=[_plot_text(f"#{e[2].number}: {e[2].reason or e[2].state.lower()}") for e in ends],
                    mode="markers",
                    showlegend=False,
                    legendgroup=scheduler,
                    marker={"color": color, "symbol": "x", "size": 8},
                    hovertemplate="%{text}<br>epoch %{x}<br>macro-F1 %{y:.4f}<extra></extra>",
                )
            )
    if data.best and data.best.epochs:
        fig.add_trace(
            go.Scatter(
                x=data.best.epochs,
                y=data.best.val_f1,
                mode="lines+markers",
                name=f"best trial #{data.best.number}",
                line={"color": "#000", "width": 3},
                hovertemplate="best trial<br>epoch %{x}<br>macro-F1 %{y:.4f}<extra></extra>",
            )
        )
    few_epochs = max(e for t in trials for e in t.epochs) <= 20
    return _layout(fig, xaxis_title="epoch", yaxis_title="validation macro-F1", xaxis={"dtick": 1} if few_epochs else {})


def _curve_kind(t: TrialSummary) -> str:
    if t.state in ("PRUNED", "FAIL"):
        return "stopped"
    return "running" if t.state == "RUNNING" else "complete"


def _draw_lr(data: ReportData) -> Any:
    points = [t for t in data.trials if _positive_number(t.params.get("lr"))]
    completed = [t for t in points if t.state == "COMPLETE" and t.value is not None]
    if not completed:
        return None
    import plotly.graph_objects as go

    fig = go.Figure()
    colors = _scheduler_colors(data.trials)
    groups: dict[tuple[str, str], list[TrialSummary]] = {}
    for t in completed:
        groups.setdefault((_label(t.params.get("scheduler")), _label(t.params.get("loss"))), []).append(t)
    for (scheduler, loss), group in sorted(groups.items()):
        fig.add_trace(
            go.Scatter(
                x=[t.params["lr"] for t in group],
                y=[t.value for t in group],
                customdata=[t.number for t in group],
                text=[_hover_params(t) for t in group],
                mode="markers",
                name=f"{_plot_text(scheduler)} · {_plot_text(loss)}",
                marker={
                    "color": colors.get(scheduler, "#444"),
                    "symbol": LOSS_SYMBOLS.get(loss, "cross"),
                    "size": 9,
                    "opacity": 0.8,
                    "line": {"width": 0.5, "color": "#fff"},
                },
                hovertemplate="trial #%{customdata}<br>lr %{x:.2e}<br>macro-F1 %{y:.4f}<br>%{text}<extra></extra>",
            )
        )
    pruned = [t for t in points if t.state == "PRUNED" and t.value is not None]
    if pruned:
        fig.add_trace(
            go.Scatter(
                x=[t.params["lr"] for t in pruned],
                y=[t.value for t in pruned],
                customdata=[t.number for t in pruned],
                mode="markers",
                name="pruned (last value)",
                marker={"color": "#bbb", "symbol": "x-thin", "size": 7, "line": {"width": 1.5, "color": "#999"}},
                hovertemplate="pruned trial #%{customdata}<br>lr %{x:.2e}<br>last macro-F1 %{y:.4f}<extra></extra>",
            )
        )
    failed = [t for t in points if t.state == "FAIL"]
    if failed:
        fig.add_trace(
            go.Scatter(
                x=[t.params["lr"] for t in failed],
                y=[0.0] * len(failed),
                customdata=[t.number for t in failed],
                text=[_plot_text(t.reason or "failed") for t in failed],
                mode="markers",
                name="failed (at 0)",
                marker={"color": STATE_COLORS["FAIL"], "symbol": "x", "size": 8},
                hovertemplate="failed trial #%{customdata}<br>lr %{x:.2e}<br>%{text}<extra></extra>",
            )
        )
    return _layout(
        fig,
        xaxis_title="learning rate",
        yaxis_title="validation macro-F1",
        xaxis=_log_axis([t.params["lr"] for t in points]),
    )


def _draw_effective_lr(data: ReportData) -> Any:
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
            colorbar={"title": {"text": "best macro-F1"}},
            hoverongaps=False,
            hovertemplate="lr %{x}<br>accum %{y}<br>best macro-F1 %{z:.4f}<br>%{text}<extra></extra>",
        )
    )
    return _layout(
        fig,
        xaxis_title="learning rate (half-decade bins)",
        yaxis_title="accumulation steps (effective batch)",
        xaxis={"type": "category"},
        yaxis={"type": "category"},
        height=max(300, 120 + 60 * len(grid.accum)),
    )


def _draw_lr_steps(data: ReportData) -> Any:
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
    return _layout(
        fig,
        xaxis_title="optimizer step",
        yaxis_title="learning rate",
        yaxis=_log_axis([lr for run in data.lr_steps for lr in run.lrs]),
    )


def _draw_importance(data: ReportData) -> Any:
    if not data.importances:
        return None
    import plotly.graph_objects as go

    items = sorted(data.importances.items(), key=lambda kv: kv[1])
    fig = go.Figure(
        go.Bar(
            x=[v for _, v in items],
            y=[_plot_text(k) for k, _ in items],
            orientation="h",
            marker={"color": "#1f77b4"},
            texttemplate="%{x:.2f}",
            textposition="outside",
            hovertemplate="%{y}: %{x:.3f}<extra></extra>",
        )
    )
    return _layout(
        fig,
        xaxis_title="importance (PED-ANOVA, sums to 1)",
        yaxis={"type": "category", "ticksuffix": "  "},
        height=max(260, 90 + 32 * len(items)),
        showlegend=False,
    )


def _draw_parallel(data: ReportData) -> Any:
    completed = [t for t in data.completed if _positive_number(t.params.get("lr"))]
    if not completed:
        return None
    import plotly.graph_objects as go

    dimensions: list[dict[str, Any]] = []
    log_lrs = [math.log10(t.params["lr"]) for t in completed]
    decades = list(range(math.floor(min(log_lrs)), math.ceil(max(log_lrs)) + 1))
    dimensions.append(
        {
            "label": "lr",
            "values": log_lrs,
            "tickvals": decades,
            "ticktext": [f"1e{d}" for d in decades],
            "range": [decades[0], decades[-1]] if len(decades) > 1 else [decades[0] - 1, decades[0] + 1],
        }
    )
    for name in ("scheduler", "loss", "accum"):
        raw = [t.params.get(name) for t in completed]
        levels = sorted({_label(v) for v in raw}, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
        index = {level: i for i, level in enumerate(levels)}
        dimensions.append(
            {
                "label": name,
                "values": [index[_label(v)] for v in raw],
                "tickvals": list(range(len(levels))),
                "ticktext": [_plot_text(level) for level in levels],
                "range": [-0.25, len(levels) - 0.75] if len(levels) > 1 else [-1, 1],
            }
        )
    values = [t.value for t in completed]
    dimensions.append({"label": "macro-F1", "values": values})
    fig = go.Figure(
        go.Parcoords(
            dimensions=dimensions,
            line={
                "color": values,
                "colorscale": "Viridis",
                "reversescale": not data.maximize,
                "showscale": True,
                "colorbar": {"title": {"text": "macro-F1"}},
            },
        )
    )
    return _layout(fig, margin={"l": 60, "r": 40, "t": 50, "b": 30})


def _draw_per_class(data: ReportData) -> Any:
    scores = data.class_scores
    if scores is None:
        return None
    import plotly.graph_objects as go

    support = [s if s is not None else "?" for s in scores.support]
    classes = [f"{_plot_text(c)}<br>n={n}" for c, n in zip(scores.classes, support)]
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
    return _layout(
        fig,
        xaxis_title="class",
        yaxis_title="score",
        xaxis={"type": "category"},
        yaxis={"range": [0, 1.05]},
        title_text=_plot_text(title),
    )


def _draw_confusion(data: ReportData) -> Any:
    scores = data.class_scores
    if scores is None or not scores.confusion:
        return None
    import plotly.graph_objects as go

    classes = [_plot_text(c) for c in scores.classes]
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
    return _layout(
        fig,
        xaxis_title="predicted class",
        yaxis_title="true class",
        xaxis={"type": "category", "side": "bottom"},
        yaxis={"type": "category", "autorange": "reversed"},
        height=side,
        width=side + 120,
        autosize=False,
    )


def _draw_timeline(data: ReportData) -> Any:
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
                text=[_plot_text(_timeline_hover(t)) for t in group],
                textposition="none",
                hovertemplate="%{text}<extra></extra>",
            )
        )
    height = max(320, min(1000, 140 + 3 * len(started)))
    return _layout(
        fig,
        xaxis_title="time",
        yaxis_title="trial",
        xaxis={"type": "date"},
        yaxis={"autorange": "reversed", **_trial_axis(data)},
        height=height,
        barmode="overlay",
        bargap=0.15,
    )


def _timeline_hover(t: TrialSummary) -> str:
    parts = [f"trial #{t.number}: {t.state.lower()}"]
    if t.start:
        parts.append(f"start {t.start.isoformat(sep=' ', timespec='seconds')}")
    duration = _duration(t)
    if duration:
        parts.append(f"duration {duration}")
    if t.reason:
        parts.append(t.reason)
    return "\n".join(parts)


class Figure(NamedTuple):
    name: str
    title: str
    caption: str
    draw: Callable[[ReportData], Any]


FIGURES = [
    Figure(
        "history",
        "Optimization history",
        "Every trial's validation macro-F1 and the best completed value so far.",
        _draw_history,
    ),
    Figure(
        "curves",
        "Learning curves",
        "Validation macro-F1 per epoch for every trial, coloured by LR scheduler.",
        _draw_curves,
    ),
    Figure(
        "lr",
        "Learning rate vs macro-F1",
        "Final macro-F1 of completed trials against their learning rate; colour is the scheduler, symbol the loss.",
        _draw_lr,
    ),
    Figure(
        "effective-lr",
        "Effective learning rate",
        "Best macro-F1 for each learning-rate bin and number of gradient accumulation steps; "
        "accumulation multiplies the batch, so the best LR moves with it.",
        _draw_effective_lr,
    ),
    Figure(
        "lr-steps",
        "Learning rate per optimizer step",
        f"The learning rate each of the top {TOP_LR_TRIALS} trials actually used, step by step.",
        _draw_lr_steps,
    ),
    Figure(
        "importance",
        "Hyperparameter importance",
        "How much each parameter explains macro-F1 (Optuna's get_param_importances).",
        _draw_importance,
    ),
    Figure(
        "parallel",
        "Parallel coordinates",
        "Each line is a completed trial; drag along an axis to filter.",
        _draw_parallel,
    ),
    Figure(
        "per-class",
        "Best trial: per-class scores",
        "Precision, recall and F1 of each class at the best trial's best epoch.",
        _draw_per_class,
    ),
    Figure(
        "confusion",
        "Best trial: confusion matrix",
        "Rows are true classes, columns predictions; colour is the share of the true class.",
        _draw_confusion,
    ),
    Figure("timeline", "Timeline", "When each trial ran, coloured by its state.", _draw_timeline),
]
FIGURE_NAMES = tuple(figure.name for figure in FIGURES)


def _layout(fig: Any, *, xaxis_title: str = "", yaxis_title: str = "", **layout: Any) -> Any:
    xaxis = {"title": {"text": xaxis_title}, **layout.pop("xaxis", {})}
    yaxis = {"title": {"text": yaxis_title}, **layout.pop("yaxis", {})}
    fig.update_layout(
        template=PLOT_TEMPLATE,
        height=layout.pop("height", 440),
        margin=layout.pop("margin", {"l": 70, "r": 30, "t": 40, "b": 60}),
        legend={"font": {"size": 11}},
        xaxis=xaxis,
        yaxis=yaxis,
        **layout,
    )
    return fig


def _log_axis(values: list[float]) -> dict[str, Any]:
    """A log axis with one labelled tick per decade, spanning at least one whole decade."""
    logs = [math.log10(v) for v in values if v > 0]
    low, high = math.floor(min(logs)), math.ceil(max(logs))
    if low == high:
        low, high = low - 1, high + 1
    return {"type": "log", "dtick": 1, "exponentformat": "power", "range": [low - 0.05, high + 0.05]}


def _trial_axis(data: ReportData) -> dict[str, Any]:
    return {"dtick": 1} if data.trials and data.trials[-1].number < 20 else {}


def _scheduler_colors(trials: list[TrialSummary]) -> dict[str, str]:
    colors = dict(SCHEDULER_COLORS)
    extra = iter(EXTRA_COLORS * 10)
    for t in trials:
        name = _label(t.params.get("scheduler"))
        if name not in colors:
            colors[name] = next(extra, "#444")
    return colors


def _hover_params(t: TrialSummary) -> str:
    shown = [f"{k}={_fmt(t.params[k])}" for k in TUNED_PARAMS if k in t.params and k != "lr"]
    return _plot_text(", ".join(shown))


def _plot_text(text: str) -> str:
    """Text for a plotly label: plotly reads a few HTML tags in labels, so user text is escaped."""
    return html.escape(str(text), quote=False).replace("\n", "<br>")


def _label(value: Any) -> str:
    return "?" if value is None else str(value)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _duration(t: TrialSummary) -> str:
    if t.start is None or t.complete is None:
        return ""
    seconds = int((t.complete - t.start).total_seconds())
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
