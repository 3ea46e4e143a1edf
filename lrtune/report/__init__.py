"""``lrtune report``: one self-contained HTML page about a study.

The report is built in two steps, like Optuna's visualizations: :func:`compute_report`
turns a study into plain data (:class:`ReportData`), and :func:`draw_report` turns that
data into HTML with plotly figures; :func:`write_report` does both and writes the file.
The study is only read, so a report can be made while a search is still writing to it.
"""

from lrtune.report.compute import ReportData, compute_report
from lrtune.report.figures import FIGURE_NAMES, report_figures
from lrtune.report.page import PLOTLYJS_MODES, REPORT_NAME, draw_report, write_lr_range_plot, write_report

__all__ = [
    "FIGURE_NAMES",
    "PLOTLYJS_MODES",
    "REPORT_NAME",
    "ReportData",
    "compute_report",
    "draw_report",
    "report_figures",
    "write_lr_range_plot",
    "write_report",
]
