"""Scores of a labelled prediction: a text table for the terminal, and an HTML page with the confusion matrix."""

from __future__ import annotations

import html
from pathlib import Path

from lrtune.deploy.files import write_atomically
from lrtune.deploy.predict import Predictions
from lrtune.formatting import format_metric, format_scores, table
from lrtune.training.metrics import Evaluation, confusion


def scores_text(ev: Evaluation, classes: list[str], metric: str = "macro_f1") -> str:
    """Every metric (``metric`` first), then precision, recall, F1 and support per class."""
    rows = [
        [name, format_metric(p), format_metric(r), format_metric(f), str(s)]
        for name, p, r, f, s in zip(classes, ev.precision, ev.recall, ev.f1, ev.support)
    ]
    head = f"{format_scores(ev.scores(), metric)} on {len(ev.targets)} images"
    lines = [head, *auc_note(ev, classes), table(rows, ["class", "precision", "recall", "F1", "support"])]
    return "\n".join(lines)


def auc_note(ev: Evaluation, classes: list[str]) -> list[str]:
    """Which classes ROC-AUC leaves out, and why; none when it leaves none out."""
    if not ev.auc_left_out or ev.probs is None:
        return []
    names = ", ".join(classes[k] for k in ev.auc_left_out)
    return [f"ROC-AUC leaves out {names}: no image of it, or only images of it, among these"]


def evaluation_page(pred: Predictions, ev: Evaluation, *, title: str) -> str:
    """One self-contained page: the scores, the per-class table and the confusion matrix."""
    classes = pred.classes
    matrix = confusion(ev.targets, ev.preds, len(classes))
    peak = max(max(row) for row in matrix) or 1
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in classes)
    body = []
    for name, row in zip(classes, matrix):
        cells = "".join(
            f'<td class="num" style="background: rgba(31, 78, 153, {0.85 * n / peak:.3f});'
            f'color: {"#fff" if n / peak > 0.5 else "#222"}">{n}</td>'
            for n in row
        )
        body.append(f"<tr><th>{esc(name)}</th>{cells}</tr>")
    per_class = "".join(
        f"<tr><td>{esc(c)}</td><td class='num'>{format_metric(p)}</td><td class='num'>{format_metric(r)}</td>"
        f"<td class='num'>{format_metric(f)}</td><td class='num'>{s}</td></tr>"
        for c, p, r, f, s in zip(classes, ev.precision, ev.recall, ev.f1, ev.support)
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; color: #222; margin: 2rem; }}
table {{ border-collapse: collapse; margin: 0.5rem 0 1.5rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.25rem 0.6rem; }}
th {{ background: #f2f2f2; }} td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
</style></head><body>
<h1>{esc(title)}</h1>
<p>{esc(format_scores(ev.scores(), pred.metric))}
on {len(ev.targets)} images{f", {len(pred.skipped)} skipped" if pred.skipped else ""}.{esc(" ".join(auc_note(ev, classes)))}</p>
<h2>Per class</h2>
<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>{per_class}</table>
<h2>Confusion matrix</h2>
<p>Rows: true class; columns: predicted class.</p>
<table id="confusion"><tr><th></th>{head}</tr>{"".join(body)}</table>
</body></html>
"""


def write_evaluation_page(pred: Predictions, ev: Evaluation, path: Path, *, title: str) -> None:
    write_atomically(path, evaluation_page(pred, ev, title=title))
