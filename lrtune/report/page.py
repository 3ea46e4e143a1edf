"""The report page: :func:`draw_report` turns :class:`ReportData` into one self-contained HTML
page, and :func:`write_report` computes, draws and writes it for a study.

Every text that comes from the study (names, params, reasons) is escaped; plotly.js is included once.
"""

from __future__ import annotations

import base64
import hashlib
import html
import os
import tempfile
from pathlib import Path
from typing import Any

import optuna

from lrtune.errors import ConfigError, OutputError, RangeTestError
from lrtune.formatting import format_duration, format_metric, format_scores, format_value
from lrtune.report.compute import TOP_TRIALS, ReportData, compute_report
from lrtune.report.figures import FIGURES
from lrtune.report.plotting import PLOT_CONFIG
from lrtune.storage import study_dir

PLOTLYJS_MODES = ("inline", "cdn")
REPORT_NAME = "report.html"
TOP_COLUMNS = ("Rank", "Trial", "Macro-F1", "LR (head)", "Scheduler", "Loss", "Accum", "Eff. batch", "Best epoch", "Duration")

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


# --------------------------------------------------------------------------- writing the file


def write_report(
    study: optuna.Study,
    *,
    out: str | Path | None = None,
    studies_dir: str | Path = "studies",
    plotlyjs: str = "inline",
    storage_label: str = "",
) -> Path:
    """Write the report of ``study`` and return its path.

    ``out`` defaults to ``<studies_dir>/<study>/report.html`` (folder created); when ``out``
    is given its folder must exist. ``storage_label`` (the masked storage URL) is shown in the header.
    """
    _check_plotlyjs(plotlyjs)
    if out:
        path = Path(out)
        _check_output_folder(path.parent)
    else:
        path = study_dir(studies_dir, study.study_name) / REPORT_NAME
        _make_output_folder(path.parent)
    if path.is_dir():
        raise OutputError(f"--out {path} is a folder; give a file name")
    data = compute_report(study, storage_label=storage_label)
    _write_atomically(path, draw_report(data, plotlyjs=plotlyjs))
    return path


def write_lr_range_plot(record: dict[str, Any], *, out: str | Path, plotlyjs: str = "inline") -> Path:
    """Write the LR range test figure of ``record`` (``RangeTestResult.to_dict()``) alone on a page."""
    from lrtune.report.figures_lr_range import lr_range_figure
    from lrtune.report.lr_range import lr_range_data

    _check_plotlyjs(plotlyjs)
    path = Path(out)
    _check_output_folder(path.parent)
    if path.is_dir():
        raise OutputError(f"--plot {path} is a folder; give a file name")
    curve = lr_range_data(record)
    if curve is None:
        raise RangeTestError("the LR range test recorded no curve to plot")
    title = "lrtune LR range test"
    page = "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            f'<head>\n<meta charset="utf-8">\n<title>{title}</title>\n<style>{STYLE}</style>',
            _plotlyjs_script(plotlyjs),
            "</head>\n<body>\n<main>",
            f"<h1>{title}</h1>",
            f'<div class="figure" id="fig-lr-range">{_figure_html(lr_range_figure(curve), "lr-range")}</div>',
            "</main>\n</body>\n</html>\n",
        ]
    )
    _write_atomically(path, page)
    return path


def _check_plotlyjs(mode: str) -> None:
    if mode not in PLOTLYJS_MODES:
        raise ConfigError(f"unknown --plotlyjs {mode!r} (valid: {', '.join(PLOTLYJS_MODES)})")


def _check_output_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise OutputError(f"output folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {folder} is not writable")


def _make_output_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {folder}: {exc.strerror or exc}") from None
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
        raise OutputError(f"cannot write report {path}: {exc.strerror or exc}") from None
    finally:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)


# --------------------------------------------------------------------------- the page


def draw_report(data: ReportData, *, plotlyjs: str = "inline") -> str:
    """The report page: a header, then one section per figure; plotly.js is included once."""
    _check_plotlyjs(plotlyjs)
    name = html.escape(data.study_name)
    sections = [_draw_summary(data)]
    for figure in FIGURES:
        if figure.applies is not None and not figure.applies(data):
            continue
        plot = figure.draw(data)
        body = _figure_html(plot, figure.name) if plot is not None else ""
        # Titles and captions speak of macro-F1, the default; a study that optimizes another metric names it.
        title, caption = (text.replace("macro-F1", data.metric_label) for text in (figure.title, figure.caption))
        sections.append(_section(data, figure.name, title, caption, body))
    top_caption = f"Completed trials with the best {data.metric_label}."
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


# --------------------------------------------------------------------------- summary and tables


def _draw_summary(data: ReportData) -> str:
    e = html.escape
    rows: list[tuple[str, str]] = [("Study", e(data.study_name)), ("Storage", e(data.storage))]
    dataset = _dataset_text(data)
    if dataset:
        rows.append(("Dataset", dataset))
    if data.config.get("model"):
        rows.append(("Model", e(str(data.config["model"]))))
    if data.config.get("epochs"):
        rows.append(("Epochs per trial", e(str(data.config["epochs"]))))
    counts = ", ".join(
        f'<span class="state-{s}">{n} {s.lower()}</span>' for s, n in data.counts.items() if n
    )
    rows.append(("Trials", f"{len(data.trials)} ({counts})" if data.trials else "0"))
    metric = f"Best {data.metric_label}"
    if data.best:
        rows.append((metric, f"{format_metric(data.best.value)} (trial #{data.best.number})"))
        if data.best_scores:
            rows.append(("Its validation scores", e(format_scores(data.best_scores, data.metric))))
    else:
        rows.append((metric, "none yet"))
    gain = _gain_text(data)
    if gain:
        rows.append(("Gain over baseline", gain))
    if data.test_split:
        rows.append(("Test split", "<br>".join(e(line) for line in data.test_split)))
    if data.confirmed:
        rows.append(("Confirmed ranking", f'<pre class="confirmed">{e(chr(10).join(data.confirmed))}</pre>'))
    if data.against_lr_free:
        rows.append(("Against LR-free", e(data.against_lr_free[0])))
    if data.fingerprint:
        rows.append(("Config fingerprint", f"<code>{e(data.fingerprint)}</code>"))
    summary = "\n".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    notes = "".join(f'<p class="note">{e(text)}</p>' for text in data.notes.get("summary", []))
    return (
        f'<section id="summary">\n<dl class="summary">\n{summary}\n</dl>\n{notes}\n'
        f"{_best_config(data)}\n</section>"
    )


def _dataset_text(data: ReportData) -> str:
    """``digits-lt, 10 classes, 584 train / 144 validation images, 16 px`` as HTML; empty when unknown."""
    e = html.escape
    dataset = data.data_summary
    name = dataset.get("name") or data.config.get("data")
    if not name:
        return ""
    parts = [e(str(name))]
    classes = dataset.get("classes") if isinstance(dataset.get("classes"), list) else []
    if classes:
        parts.append(f"{len(classes)} classes")
    if dataset.get("n_train") is not None:
        n_train, n_val = e(str(dataset.get("n_train"))), e(str(dataset.get("n_val", "?")))
        parts.append(f"{n_train} train / {n_val} validation images")
    if dataset.get("image_size"):
        parts.append(f"{e(str(dataset['image_size']))} px")
    return ", ".join(parts)


def _gain_text(data: ReportData) -> str:
    """``+0.1000, +14.3% (baseline trial #0: 0.7000)``; empty without a baseline."""
    if data.gain is None or data.baseline is None:
        return ""
    baseline = data.baseline
    sign = "+" if data.gain >= 0 else "−"
    relative = f", {sign}{abs(data.gain) / baseline.value:.1%}" if baseline.value else ""
    same = " (the baseline is the best trial)" if data.best and data.best.number == baseline.number else ""
    return (
        f"{sign}{format_metric(abs(data.gain))}{relative} (baseline trial #{baseline.number}: "
        f"{format_metric(baseline.value)}){same}"
    )


def _best_config(data: ReportData) -> str:
    parts = []
    if data.best:
        best = data.best
        params = _rows(best.params.items())
        if best.effective_batch:
            params += f"<tr><th>effective batch</th><td>{best.effective_batch}</td></tr>"
        if best.best_epoch:
            params += f"<tr><th>best epoch</th><td>{best.best_epoch}</td></tr>"
        training = _rows(data.training.items())
        parts.append(f"<h2>Best trial: #{best.number}</h2>")
        parts.append('<div class="columns" id="best-config">')
        parts.append(f'<table class="params"><caption>Tuned parameters</caption>{params}</table>')
        if training:
            parts.append(f'<table class="training"><caption>Training configuration</caption>{training}</table>')
        parts.append("</div>")
    if data.config:
        rows = _rows(sorted(data.config.items()))
        parts.append(f"<details><summary>Full study configuration</summary><table>{rows}</table></details>")
    return "\n".join(parts)


def _rows(items: Any) -> str:
    """Table rows of ``name | value``, both escaped."""
    return "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(format_value(v))}</td></tr>" for k, v in items)


def _top_table(data: ReportData) -> str:
    if not data.top:
        return ""
    e = html.escape
    header = "<tr>" + "".join(f"<th>{c}</th>" for c in TOP_COLUMNS) + "</tr>"
    rows = []
    for rank, t in enumerate(data.top, 1):
        marker = " (baseline)" if t.baseline else f" (retry of #{t.retry_of})" if t.retry_of is not None else ""
        duration = format_duration(t.run_seconds) if t.run_seconds is not None else ""
        rows.append(
            "<tr>"
            f'<td class="num">{rank}</td><td class="num">#{t.number}{marker}</td>'
            f'<td class="num">{format_metric(t.value)}</td>'
            f'<td class="num">{e(format_value(t.params.get("lr", "")))}{_body(t)}</td>'
            f'<td>{e(format_value(t.params.get("scheduler", "")))}</td>'
            f'<td>{e(format_value(t.params.get("loss", "")))}</td>'
            f'<td class="num">{e(format_value(t.params.get("accum", "")))}</td>'
            f'<td class="num">{t.effective_batch or ""}</td>'
            f'<td class="num">{t.best_epoch or ""}</td>'
            f'<td class="num">{duration}</td>'
            "</tr>"
        )
    return f'<table id="top-trials">{header}{"".join(rows)}</table>'


def _body(t: Any) -> str:
    """A fine-tune's body LR under the head's, in the LR cell."""
    return f"<br>body {html.escape(t.body_lr)}" if t.body_lr else ""


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
