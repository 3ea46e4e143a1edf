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
