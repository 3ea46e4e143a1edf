import optuna
import pytest

from lrtune.report import compute_report, draw_report
from report_cases import params, without_bundle
from studies import BASELINE, make_study


def test_counts_best_and_gain_over_baseline(storage_url):
    study = optuna.load_study(study_name="mixed", storage=storage_url)
    data = compute_report(study, storage_label="label")

    assert data.counts == {"COMPLETE": 4, "PRUNED": 1, "FAIL": 1, "RUNNING": 1, "WAITING": 0}
    assert data.best.number == 1 and data.best.value == pytest.approx(0.80)
    assert data.baseline.number == 0
    assert data.gain == pytest.approx(0.10)
    assert [t.number for t in data.top] == [1, 5, 3, 0]


def test_history_keeps_the_best_completed_value_so_far(storage_url):
    study = optuna.load_study(study_name="mixed", storage=storage_url)
    data = compute_report(study, storage_label="label")

    assert data.history_best == pytest.approx({0: 0.70, 1: 0.80, 2: 0.80, 3: 0.80, 4: 0.80, 5: 0.80, 6: 0.80})


def test_best_trial_scores_use_the_dataset_class_names():
    classes = ["cat", "dog", "bird"]
    study = make_study(None, "pets", [{"value": 0.9}], classes=classes)
    scores = compute_report(study, storage_label="x").class_scores

    assert scores.classes == classes
    assert len(scores.confusion) == 3 and all(len(row) == 3 for row in scores.confusion)
    assert sum(map(sum, scores.confusion)) == sum(scores.support)


def test_effective_lr_grid_bins_by_half_decade_and_accum(storage_url):
    study = optuna.load_study(study_name="mixed", storage=storage_url)
    grid = compute_report(study, storage_label="x").lr_grid

    assert grid.accum == [1, 2, 4, 8]
    assert grid.accum_labels[1] == "2 (batch 64)"
    assert sum(map(sum, grid.count)) == 4
    row, col = grid.accum.index(2), grid.lr_bins.index("1e-3–3e-3")
    assert grid.best[row][col] == pytest.approx(0.80) and grid.best_trial[row][col] == 1


def test_baseline_found_by_params_when_not_marked():
    study = make_study(None, "old", [{"params": dict(BASELINE), "value": 0.5, "bare": True}, {"value": 0.6}])
    data = compute_report(study, storage_label="x")

    assert data.baseline.number == 0
    assert data.gain == pytest.approx(0.1)


def test_trials_without_any_attributes_still_report():
    specs = [{"params": params(10 ** -(i + 1)), "value": 0.1 * (i + 1), "bare": True} for i in range(5)]
    study = make_study(None, "bare", specs)
    data = compute_report(study, storage_label="x")
    text = without_bundle(draw_report(data))

    assert data.best.number == 4 and data.class_scores is None
    assert "stored no per-class scores" in text
    assert [len(t.epochs) for t in data.trials] == [10] * 5
