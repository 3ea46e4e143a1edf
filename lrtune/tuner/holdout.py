"""The honest gain: the best trial and the baseline scored on a test split that no trial saw.

With ``--test-fraction``, a search holds out a test split (stratified, and
grouped like validation). When the search ends, the best complete trial's and
the baseline's kept weights (``best.pt``) classify it. Both get every metric,
and a bootstrap 95% interval of the study's metric; the gain gets a paired one: the gain
holds when its whole interval lies above zero. The record is stored on the
study (``test_split``) for ``show`` and the report, and made again only when
the best trial changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from lrtune.config import Config
from lrtune.errors import first_line
from lrtune.storage import best_first

if TYPE_CHECKING:  # torch comes in only when there is something to score
    from lrtune.training.loop import AmpPolicy
    from lrtune.training.metrics import Evaluation
    from lrtune.training.run import TrainingData

ATTR = "test_split"
RESAMPLES = 2000
WIDE = 0.1  # an interval wider than this gets a note instead of false precision


def scored_trials(study: optuna.Study) -> tuple[FrozenTrial | None, FrozenTrial | None]:
    """(the best complete trial, the complete baseline trial), either None when there is none."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    ranked = best_first(complete)
    baseline = next((t for t in complete if t.user_attrs.get("baseline")), None)
    return (ranked[0] if ranked else None), baseline


def is_current(study: optuna.Study, cfg: Config) -> bool:
    """True when the study needs no new test score: no test split, nothing complete, or the stored one fits."""
    if not cfg.test_fraction:
        return True
    best, baseline = scored_trials(study)
    if best is None:
        return True
    stored = study.user_attrs.get(ATTR)
    return isinstance(stored, dict) and stored.get("trials") == _numbers(best, baseline)


def score_test_split(study: optuna.Study, cfg: Config, *, data: TrainingData, amp: AmpPolicy, folder: Path) -> dict | None:
    """Score the best trial and the baseline on ``data.test_idx``, store the record on the study, return it."""
    if not len(data.test_idx) or is_current(study, cfg):
        return study.user_attrs.get(ATTR) if len(data.test_idx) else None
    from lrtune.training import checkpoints

    best, baseline = scored_trials(study)
    assert best is not None
    targets = data.imageset.labels[data.test_idx]
    preds, probs, missing = {}, {}, []
    for role, trial in (("best", best), ("baseline", baseline)):
        if trial is None:
            continue
        path = checkpoints.trial_dir(folder, trial.number) / checkpoints.BEST
        try:
            ev = predict_test(path, cfg, data, amp)
            preds[role], probs[role] = ev.preds, ev.probs
        except (OSError, RuntimeError, KeyError) as exc:
            missing.append(f"trial {trial.number} ({role}): no usable weights ({first_line(exc)})")
    record = test_record(targets, preds, data.n_classes, trials=_numbers(best, baseline), seed=cfg.seed,
                         metric=cfg.metric, probs=probs)
    record["missing"] = missing
    study.set_user_attr(ATTR, record)
    return record


def _numbers(best: FrozenTrial, baseline: FrozenTrial | None) -> dict[str, int | None]:
    return {"best": best.number, "baseline": baseline.number if baseline is not None else None}


def predict_test(path: Path, cfg: Config, data: TrainingData, amp: AmpPolicy) -> Evaluation:
    """The weights in ``path`` (a trial's ``best.pt``) on the test split: every metric, predictions, probabilities."""
    from lrtune.training import checkpoints
    from lrtune.training.loop import evaluate
    from lrtune.training.models import create_model
    from lrtune.training.run import EVAL_BATCH

    record = checkpoints.load(path, "cpu")
    model = create_model(cfg.model, num_classes=data.n_classes)
    model.load_state_dict(record["state_dict"])
    model.to(amp.device)
    batches = data.eval_batches(data.test_idx, max(cfg.batch_size, EVAL_BATCH))
    return evaluate(model, batches, n_classes=data.n_classes, amp=amp)


def test_record(
    targets: np.ndarray, preds: dict[str, np.ndarray], n_classes: int, *, trials: dict[str, Any], seed: int = 0,
    metric: str = "macro_f1", probs: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """JSON-safe: each prediction's test scores, its ``metric`` with a bootstrap 95% interval, and the paired gain."""
    from lrtune.training.metrics import bootstrap_scores, metrics

    samples = bootstrap_scores(metric, targets, preds, n_classes, probs=probs, resamples=RESAMPLES, seed=seed)
    record: dict[str, Any] = {"n_test": int(len(targets)), "trials": trials, "resamples": RESAMPLES, "metric": metric}
    for role, p in preds.items():
        ev = metrics(targets, p, n_classes, probs=(probs or {}).get(role))
        record[role] = {"trial": trials[role], "value": ev.value(metric), "ci95": _interval(samples[role]),
                        "scores": ev.scores()}
    if "best" in preds and "baseline" in preds:
        gain = record["best"]["value"] - record["baseline"]["value"]
        low, high = _interval(samples["best"] - samples["baseline"])
        record["gain"] = {"value": gain, "ci95": [low, high], "holds": low > 0}
    widths = [record[r]["ci95"][1] - record[r]["ci95"][0] for r in preds]
    if widths and max(widths) > WIDE:
        record["note"] = (f"{len(targets)} test images give intervals up to {max(widths):.2f} wide: "
                          "read the scores as rough")
    return record


def _interval(samples: np.ndarray) -> list[float]:
    low, high = np.nanpercentile(samples, [2.5, 97.5])
    return [round(float(low), 6), round(float(high), 6)]
