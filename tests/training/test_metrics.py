import json

import numpy as np
import pytest

from lrtune.config import METRICS
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
    from lrtune.training.metrics import metric_rows

    rng = np.random.default_rng(3)
    targets = rng.integers(0, 5, size=(4, 60))
    preds = np.where(rng.random((4, 60)) < 0.6, targets, rng.integers(0, 5, size=(4, 60)))
    expected = [metrics(t, p, 7).macro_f1 for t, p in zip(targets, preds)]
    np.testing.assert_allclose(metric_rows("macro_f1", targets, preds, 7), expected)


def test_bootstrap_scores_every_prediction_on_the_same_resamples():
    from lrtune.training.metrics import bootstrap_scores

    rng = np.random.default_rng(0)
    targets = rng.integers(0, 4, 200)
    good = np.where(rng.random(200) < 0.9, targets, (targets + 1) % 4)
    samples = bootstrap_scores("macro_f1", targets, {"good": good, "same": good.copy()}, 4, resamples=300, seed=1)
    assert samples["good"].shape == (300,)
    np.testing.assert_array_equal(samples["good"], samples["same"])  # paired: equal predictions, equal scores
    low, high = np.percentile(samples["good"], [2.5, 97.5])
    assert low < metrics(targets, good, 4).macro_f1 < high


def fixed_predictions(n_classes=4, n=240, seed=5):
    """Labels, noisy probabilities and their argmax: a fixed set every metric is checked on."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, n_classes, n)
    logits = rng.normal(size=(n, n_classes)) + 2.0 * np.eye(n_classes)[targets] * rng.random((n, 1))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return targets, probs, probs.argmax(axis=1)


def test_every_metric_agrees_with_scikit_learn_on_a_fixed_set_of_predictions():
    from sklearn import metrics as sk

    targets, probs, preds = fixed_predictions()
    ev = metrics(targets, preds, 4, probs=probs)
    assert ev.macro_f1 == pytest.approx(sk.f1_score(targets, preds, average="macro"))
    assert ev.accuracy == pytest.approx(sk.accuracy_score(targets, preds))
    assert ev.balanced_accuracy == pytest.approx(sk.balanced_accuracy_score(targets, preds))
    assert ev.weighted_f1 == pytest.approx(sk.f1_score(targets, preds, average="weighted"))
    assert ev.roc_auc == pytest.approx(sk.roc_auc_score(targets, probs, multi_class="ovr", average="macro"))
    assert ev.auc_left_out == [] and list(ev.scores()) == list(METRICS)
    json.dumps(ev.summary(1))


def test_roc_auc_leaves_out_a_class_without_positives_and_says_so():
    from sklearn import metrics as sk

    targets, probs, preds = fixed_predictions()
    present = targets != 2
    ev = metrics(targets[present], preds[present], 4, probs=probs[present])
    assert ev.auc_left_out == [2] and ev.summary(1)["roc_auc_left_out"] == [2]
    expected = np.mean([sk.roc_auc_score(targets[present] == k, probs[present][:, k]) for k in (0, 1, 3)])
    assert ev.roc_auc == pytest.approx(expected)
    assert metrics(targets, preds, 4).roc_auc is None  # no probabilities, no ROC-AUC
    assert np.isnan(metrics(targets, preds, 4).value("roc_auc"))


@pytest.mark.parametrize("metric", list(METRICS))
def test_each_metric_of_many_rows_agrees_with_the_metric_of_each_row(metric):
    from lrtune.training.metrics import metric_rows

    targets, probs, preds = fixed_predictions(n_classes=5, n=300, seed=9)
    rows = np.arange(300).reshape(3, 100)
    expected = [metrics(targets[r], preds[r], 5, probs=probs[r]).value(metric) for r in rows]
    np.testing.assert_allclose(metric_rows(metric, targets[rows], preds[rows], 5, probs[rows]), expected)


def test_the_bootstrap_of_any_metric_brackets_its_value():
    from lrtune.training.metrics import bootstrap_scores

    targets, probs, preds = fixed_predictions()
    for metric in METRICS:
        samples = bootstrap_scores(metric, targets, {"a": preds}, 4, probs={"a": probs}, resamples=200, seed=2)
        low, high = np.percentile(samples["a"], [2.5, 97.5])
        assert low < metrics(targets, preds, 4, probs=probs).value(metric) < high, metric
