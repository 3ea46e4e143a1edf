import json

from lrtune.report import compute_report, draw_report, write_lr_range_plot
from lrtune.report.lr_range import lr_range_data
from studies import BASELINE, lr_range_record, make_study


def test_the_stored_range_test_is_drawn_beside_the_trials_lr_and_macro_f1():
    study = make_study(None, "with-test", 12)
    data = compute_report(study, storage_label="x")
    curve = data.lr_range

    assert curve is not None and curve.suggestion == 4e-3
    assert set(curve.suggestions) == {"steepest", "valley", "min/10"}
    assert curve.bounds == (4e-4, 4e-2)
    completed = [t for t in data.completed if t.value is not None]
    assert sorted(curve.trial_numbers) == sorted(t.number for t in completed)
    text = draw_report(data, plotlyjs="cdn")
    assert 'id="plot-lr-range"' in text
    assert "suggested LR 0.004: steepest" in text and "completed trials" in text


def test_a_study_without_a_range_test_says_how_to_run_one():
    study = make_study(None, "without-test", [{"params": dict(BASELINE), "value": 0.5, "baseline": True}])
    study.set_user_attr("lr_range", None)
    data = compute_report(study, storage_label="x")
    assert data.lr_range is None
    text = draw_report(data, plotlyjs="cdn")
    assert 'id="fig-lr-range"' in text and 'id="plot-lr-range"' not in text
    assert "lrtune search --lr-range auto" in text


def test_a_test_without_suggestion_is_drawn_with_the_reason():
    record = {**lr_range_record(), "suggestion": None, "rule": "no suggestion: the loss is too noisy"}
    study = make_study(None, "noisy", 3)
    study.set_user_attr("lr_range", record)
    text = draw_report(compute_report(study, storage_label="x"), plotlyjs="cdn")
    assert 'id="plot-lr-range"' in text
    assert "The range test suggested no LR: no suggestion: the loss is too noisy." in text


def test_damaged_records_draw_nothing_instead_of_failing():
    assert lr_range_data({"lrs": "x"}) is None
    assert lr_range_data({"lrs": [0, -1], "losses": [1, 2], "smoothed": [1, 2]}) is None
    curve = lr_range_data({**lr_range_record(), "suggestions": {"steepest": None, "valley": "x"}, "bounds": [1]})
    assert curve.suggestions == {} and curve.bounds is None


def test_lr_find_plot_is_the_same_figure_alone(tmp_path):
    record = json.loads(json.dumps(lr_range_record()))
    path = write_lr_range_plot(record, out=tmp_path / "lr.html", plotlyjs="cdn")
    text = path.read_text()
    assert 'id="plot-lr-range"' in text and "smoothed loss" in text
    assert "completed trials" not in text
