"""Validation metrics from scikit-learn: macro-F1, accuracy, per-class scores, the confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support


@dataclass
class Evaluation:
    loss: float
    macro_f1: float
    accuracy: float
    precision: list[float]
    recall: list[float]
    f1: list[float]
    support: list[int]
    targets: np.ndarray
    preds: np.ndarray

    def summary(self, epoch: int) -> dict:
        """JSON-safe record of this evaluation, for trial attributes.

        Without the confusion matrix: a trial keeps that only for its best
        epoch, computed once with ``confusion`` when the trial ends.
        """
        return {
            "epoch": epoch,
            "loss": self.loss,
            "macro_f1": self.macro_f1,
            "accuracy": self.accuracy,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "support": self.support,
        }


def confusion(targets: np.ndarray | list[int], preds: np.ndarray | list[int], n_classes: int) -> list[list[int]]:
    """The confusion matrix (rows: true class, columns: predicted), from scikit-learn."""
    return confusion_matrix(targets, preds, labels=list(range(n_classes))).tolist()


def metrics(targets: np.ndarray, preds: np.ndarray, n_classes: int, loss: float = float("nan")) -> Evaluation:
    """Macro-F1, accuracy and per-class scores, from scikit-learn."""
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, preds, labels=list(range(n_classes)), zero_division=0
    )
    return Evaluation(
        loss=loss,
        macro_f1=float(np.mean(f1)),
        accuracy=float(np.mean(targets == preds)) if len(targets) else 0.0,
        precision=[round(float(v), 6) for v in precision],
        recall=[round(float(v), 6) for v in recall],
        f1=[round(float(v), 6) for v in f1],
        support=[int(v) for v in support],
        targets=targets,
        preds=preds,
    )
