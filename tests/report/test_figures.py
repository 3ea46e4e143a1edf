from lrtune.report import compute_report, draw_report
from lrtune.report.figures import ALWAYS_SHOWN
from studies import BASELINE, make_study


def test_every_figure_has_its_div_and_a_plot(mixed_report):
    for name in ALWAYS_SHOWN:
        assert f'<div class="figure" id="fig-{name}">' in mixed_report
        assert f'id="plot-{name}"' in mixed_report
    assert '<div class="figure" id="fig-top-trials">' in mixed_report
    assert '<table id="top-trials">' in mixed_report
    assert "Nothing to show" not in mixed_report


def test_single_trial_draws_its_own_figures():
    study = make_study(None, "one", [{"params": dict(BASELINE), "value": 0.5, "baseline": True}])
    text = draw_report(compute_report(study, storage_label="x"), plotlyjs="cdn")

    for name in ("history", "curves", "lr", "effective-lr", "lr-steps", "per-class", "confusion", "timeline"):
        assert f'id="plot-{name}"' in text
    assert "the baseline is the best trial" in text
