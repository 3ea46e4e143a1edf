"""Validation metrics from scikit-learn: every metric a search can optimize, per-class scores, the confusion matrix.

Macro-F1, accuracy, balanced accuracy and weighted F1 come from one
``precision_recall_fscore_support`` call; ROC-AUC (macro, one-vs-rest) from
the class probabilities. ``bootstrap_scores`` resamples any of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from lrtune.config import METRICS
from lrtune.errors import ConfigError


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
    balanced_accuracy: float = 0.0
    weighted_f1: float = 0.0
    roc_auc: float | None = None  # None without probabilities, or when no class has both positives and negatives
    auc_left_out: list[int] = field(default_factory=list)  # classes without a positive (or a negative) image
    probs: np.ndarray | None = None  # (N, classes) softmax probabilities, when computed

    def scores(self) -> dict[str, float | None]:
        """Every metric, in ``METRICS`` order."""
        return {name: getattr(self, name) for name in METRICS}

    def value(self, metric: str) -> float:
        """The value of ``metric`` (NaN when it has none)."""
        value = self.scores()[metric]
        return float("nan") if value is None else float(value)

    def confusion(self) -> list[list[int]]:
        """The confusion matrix (rows: true class, columns: predicted)."""
        return confusion(self.targets, self.preds, len(self.support))

    def summary(self, epoch: int) -> dict:
        """JSON-safe record of this evaluation, for trial attributes.

        Without the confusion matrix: a trial keeps that only for its best
        epoch, computed once with ``confusion`` when the trial ends.
        """
        record = {"epoch": epoch, "loss": self.loss, **self.scores(), "precision": self.precision,
                  "recall": self.recall, "f1": self.f1, "support": self.support}
        if self.auc_left_out:
            record["roc_auc_left_out"] = self.auc_left_out
        return record


def confusion(targets: np.ndarray | list[int], preds: np.ndarray | list[int], n_classes: int) -> list[list[int]]:
    """The confusion matrix (rows: true class, columns: predicted), from scikit-learn."""
    return confusion_matrix(targets, preds, labels=list(range(n_classes))).tolist()


def metrics(
    targets: np.ndarray, preds: np.ndarray, n_classes: int, loss: float = float("nan"), probs: np.ndarray | None = None
) -> Evaluation:
    """Every metric and the per-class scores, from scikit-learn; ROC-AUC when ``probs`` are given."""
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, preds, labels=list(range(n_classes)), zero_division=0
    )
    present = support > 0
    auc, left_out = roc_auc_ovr(targets, probs, n_classes) if probs is not None else (None, [])
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
        balanced_accuracy=float(np.mean(recall[present])) if present.any() else 0.0,
        weighted_f1=float(np.sum(f1 * support) / support.sum()) if support.sum() else 0.0,
        roc_auc=auc,
        auc_left_out=left_out,
        probs=probs,
    )


def roc_auc_ovr(targets: np.ndarray, probs: np.ndarray, n_classes: int) -> tuple[float | None, list[int]]:
    """Macro one-vs-rest ROC-AUC (scikit-learn's, by ranks in one pass), and the classes left out of the mean:
    those with no positive or no negative."""
    targets = np.asarray(targets)
    counts = np.bincount(targets, minlength=n_classes)
    left_out = [k for k in range(n_classes) if counts[k] in (0, len(targets))]
    value = float(_auc_rows(targets[None, :], probs[None, :, :], n_classes)[0]) if len(left_out) < n_classes else None
    return value, left_out


def metric_rows(
    metric: str, targets: np.ndarray, preds: np.ndarray, n_classes: int, probs: np.ndarray | None = None
) -> np.ndarray:
    """``metric`` of each row of (R, N) ``targets`` and ``preds`` (and (R, N, classes) ``probs`` for ROC-AUC),
    as ``metrics`` computes it."""
    if metric == "roc_auc":
        if probs is None:
            raise ConfigError("ROC-AUC needs the class probabilities")
        return _auc_rows(targets, probs, n_classes)
    rows = np.arange(targets.shape[0])[:, None]
    flat = (rows * n_classes * n_classes + targets * n_classes + preds).ravel()
    counts = np.bincount(flat, minlength=targets.shape[0] * n_classes * n_classes)
    matrix = counts.reshape(targets.shape[0], n_classes, n_classes)
    tp = np.diagonal(matrix, axis1=1, axis2=2).astype(np.float64)
    support = matrix.sum(axis=2)
    if metric == "accuracy":
        return tp.sum(axis=1) / targets.shape[1]
    if metric == "balanced_accuracy":
        recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
        return recall.sum(axis=1) / np.maximum((support > 0).sum(axis=1), 1)
    denominator = support + matrix.sum(axis=1)  # (tp + fn) + (tp + fp)
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    if metric == "weighted_f1":
        return (f1 * support).sum(axis=1) / targets.shape[1]
    return f1.mean(axis=1)


def _auc_rows(targets: np.ndarray, probs: np.ndarray, n_classes: int) -> np.ndarray:
    """Macro one-vs-rest ROC-AUC of each row, by ranks (ties share theirs), classes without both sides left out."""
    sums = np.zeros(targets.shape[0])
    counted = np.zeros(targets.shape[0])
    for k in range(n_classes):
        positive = targets == k
        n_pos = positive.sum(axis=1)
        n_neg = targets.shape[1] - n_pos
        ranks = rankdata(probs[:, :, k], axis=1)
        both = (n_pos > 0) & (n_neg > 0)
        auc = np.divide((ranks * positive).sum(axis=1) - n_pos * (n_pos + 1) / 2, n_pos * n_neg,
                        out=np.zeros(targets.shape[0]), where=both)
        sums += auc
        counted += both
    return np.divide(sums, counted, out=np.full(targets.shape[0], np.nan), where=counted > 0)


def bootstrap_scores(
    metric: str,
    targets: np.ndarray,
    preds: dict[str, np.ndarray],
    n_classes: int,
    *,
    probs: dict[str, np.ndarray] | None = None,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """``metric`` of each named prediction on ``resamples`` bootstrap resamples of the images.

    Every prediction is scored on the same resamples, so differences between
    them are paired. ROC-AUC takes the named ``probs``.
    """
    targets = np.asarray(targets, np.int64)
    preds = {name: np.asarray(p, np.int64) for name, p in preds.items()}
    rng = np.random.default_rng(seed)
    scores: dict[str, list[np.ndarray]] = {name: [] for name in preds}
    width = len(targets) * (n_classes if metric == "roc_auc" else 1)
    block = max(1, min(resamples, 2_000_000 // max(width, 1)))  # bounded memory on large test splits
    for start in range(0, resamples, block):
        picks = rng.integers(0, len(targets), size=(min(block, resamples - start), len(targets)))
        for name, p in preds.items():
            chosen = probs[name][picks] if metric == "roc_auc" and probs is not None else None
            scores[name].append(metric_rows(metric, targets[picks], p[picks], n_classes, chosen))
    return {name: np.concatenate(parts) for name, parts in scores.items()}
