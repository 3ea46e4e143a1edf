import json

import numpy as np
import pytest

from lrtune.training.metrics import confusion, metrics


def test_metrics_per_class_and_confusion():
    y = np.array([0, 0, 1, 1, 2])
    p = np.array([0, 1, 1, 1, 0])
    ev = metrics(y, p, 3)
    assert ev.accuracy == pytest.approx(0.6)
    assert ev.recall == pytest.approx([0.5, 1.0, 0.0])
    assert ev.precision == pytest.approx([0.5, 2 / 3, 0.0], abs=1e-6)
    assert ev.support == [2, 2, 1]
    assert confusion(ev.targets, ev.preds, 3) == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    summary = ev.summary(4)
    assert summary["epoch"] == 4 and summary["macro_f1"] == pytest.approx(ev.macro_f1)
    json.dumps(summary)


def test_macro_f1_of_many_rows_agrees_with_scikit_learn():
    from lrtune.training.metrics import macro_f1_rows

    rng = np.random.default_rng(3)
    targets = rng.integers(0, 5, size=(4, 60))
    preds = np.where(rng.random((4, 60)) < 0.6, targets, rng.integers(0, 5, size=(4, 60)))
    expected = [metrics(t, p, 7).macro_f1 for t, p in zip(targets, preds)]
    np.testing.assert_allclose(macro_f1_rows(targets, preds, 7), expected)


def test_bootstrap_scores_every_prediction_on_the_same_resamples():
    from lrtune.training.metrics import bootstrap_macro_f1

    rng = np.random.default_rng(0)
    targets = rng.integers(0, 4, 200)
    good = np.where(rng.random(200) < 0.9, targets, (targets + 1) % 4)
    samples = bootstrap_macro_f1(targets, {"good": good, "same": good.copy()}, 4, resamples=300, seed=1)
    assert samples["good"].shape == (300,)
    np.testing.assert_array_equal(samples["good"], samples["same"])  # paired: equal predictions, equal scores
    low, high = np.percentile(samples["good"], [2.5, 97.5])
    assert low < metrics(targets, good, 4).macro_f1 < high
