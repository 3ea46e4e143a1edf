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


def macro_f1_rows(targets: np.ndarray, preds: np.ndarray, n_classes: int) -> np.ndarray:
    """Macro-F1 of each row of (R, N) ``targets`` and ``preds``, as ``metrics`` computes it (zero_division=0)."""
    rows = np.arange(targets.shape[0])[:, None]
    flat = (rows * n_classes * n_classes + targets * n_classes + preds).ravel()
    counts = np.bincount(flat, minlength=targets.shape[0] * n_classes * n_classes)
    matrix = counts.reshape(targets.shape[0], n_classes, n_classes)
    tp = np.diagonal(matrix, axis1=1, axis2=2).astype(np.float64)
    denominator = matrix.sum(axis=2) + matrix.sum(axis=1)  # (tp + fn) + (tp + fp)
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return f1.mean(axis=1)


def bootstrap_macro_f1(
    targets: np.ndarray, preds: dict[str, np.ndarray], n_classes: int, *, resamples: int = 2000, seed: int = 0
) -> dict[str, np.ndarray]:
    """Macro-F1 of each named prediction on ``resamples`` bootstrap resamples of the images.

    Every prediction is scored on the same resamples, so differences between
    them are paired.
    """
    targets = np.asarray(targets, np.int64)
    preds = {name: np.asarray(p, np.int64) for name, p in preds.items()}
    rng = np.random.default_rng(seed)
    scores: dict[str, list[np.ndarray]] = {name: [] for name in preds}
    block = max(1, min(resamples, 2_000_000 // max(len(targets), 1)))  # bounded memory on large test splits
    for start in range(0, resamples, block):
        picks = rng.integers(0, len(targets), size=(min(block, resamples - start), len(targets)))
        for name, p in preds.items():
            scores[name].append(macro_f1_rows(targets[picks], p[picks], n_classes))
    return {name: np.concatenate(parts) for name, parts in scores.items()}
