import pytest

from lrtune.report import compute_report, draw_report
from lrtune.report.figures import ALWAYS_SHOWN
from report_cases import FAIL, PRUNED, RUNNING, WAITING
from studies import BASELINE, make_study

THIN = {
    "no trials": ([], "The study has no trials yet."),
    "only running": ([{"state": RUNNING}, {"state": WAITING}], "No trial has completed yet"),
    "only pruned": ([{"state": PRUNED}, {"state": PRUNED}], "All 2 finished trials were pruned"),
    "only failed": ([{"state": FAIL, "stop_epoch": 0}, {"state": FAIL, "stop_epoch": 2}], "No trial has completed yet"),
    "single trial": ([{"params": dict(BASELINE), "value": 0.5, "baseline": True}], "Only one trial has completed"),
}


@pytest.mark.parametrize("case", THIN)
def test_thin_studies_give_a_report_with_a_note(case):
    specs, summary_note = THIN[case]
    text = draw_report(compute_report(make_study(None, "thin", specs), storage_label="x"), plotlyjs="cdn")

    assert f'<p class="note">{summary_note}' in text
    for name in (*ALWAYS_SHOWN, "top-trials"):
        assert f'id="fig-{name}"' in text
    assert "Nothing to show" not in text
    assert "Parameter importances need at least 4 completed trials" in text
