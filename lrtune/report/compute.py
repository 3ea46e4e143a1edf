"""A study turned into the plain data the report shows; nothing here draws or needs plotly."""

from __future__ import annotations

import datetime
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from lrtune.config import CURVE_KEYS, metric_label
from lrtune.formatting import body_lr, format_against_lr_free, format_confirmed, format_test_split, ordered_scores
from lrtune.report.lr_range import LRRangeData, lr_range_data, lr_range_skipped
from lrtune.report.values import finite_float, int_or_none, is_positive_number
from lrtune.report.notes import add_notes
from lrtune.storage import completed_roles, mask_url

MIN_TRIALS_FOR_IMPORTANCE = 4
ROUGH_IMPORTANCE_BELOW = 20
TOP_TRIALS = 10
TOP_LR_TRIALS = 5
STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
# Config fields that say how the best trial was trained, shown beside its params.
TRAINING_CONFIG = (
    "data",
    "model",
    "pretrained",
    "epochs",
    "batch_size",
    "optimizer",
    "weight_decay",
    "momentum",
    "warmup_epochs",
    "image_size",
    "balance",
    "amp",
    "seed",
)


@dataclass
class TrialSummary:
    """What the report needs from one trial; any attribute may be missing."""

    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    start: datetime.datetime | None
    complete: datetime.datetime | None
    epochs: list[int]
    values: list[float | None]  # the validation value of the study's metric per epoch
    effective_batch: int | None
    best_epoch: int | None
    reason: str
    baseline: bool
    retry_of: int | None
    lr_scales: list[float] = field(default_factory=list)  # a fine-tune's LR share per layer group, the head last

    @property
    def body_lr(self) -> str:
        """A fine-tune's body LR (the head's is ``lr``), or ""."""
        return body_lr(self.params, self.lr_scales)

    @property
    def run_seconds(self) -> float | None:
        """How long the trial ran; None until it has finished."""
        if self.start is None or self.complete is None:
            return None
        return (self.complete - self.start).total_seconds()


@dataclass
class ClassScores:
    """The best trial's per-class scores at its best epoch."""

    classes: list[str]
    precision: list[float | None]
    recall: list[float | None]
    f1: list[float | None]
    support: list[int | None]
    confusion: list[list[int]]
    accuracy: float | None
    epoch: int | None


@dataclass
class LRGrid:
    """Best value per (log-LR bin, accumulation steps) cell; ``None`` where no trial fell."""

    lr_bins: list[str]
    accum: list[int]
    accum_labels: list[str]
    best: list[list[float | None]]
    best_trial: list[list[int | None]]
    count: list[list[int]]


@dataclass
class LRSteps:
    """The learning rate one trial used at each logged optimizer step."""

    number: int
    value: float | None
    steps: list[float]
    lrs: list[float]


@dataclass
class ReportData:
    """Everything the report shows; ``notes`` maps a figure name to the notes shown above it."""

    study_name: str
    storage: str
    maximize: bool
    generated: datetime.datetime
    data_summary: dict[str, Any]  # the study's "dataset" attribute
    config: dict[str, Any]
    training: dict[str, Any]
    fingerprint: str
    counts: dict[str, int]
    trials: list[TrialSummary]
    best: TrialSummary | None
    baseline: TrialSummary | None
    gain: float | None
    history_best: dict[int, float]
    top: list[TrialSummary]
    lr_grid: LRGrid | None
    lr_steps: list[LRSteps]
    importances: dict[str, float]
    class_scores: ClassScores | None
    stopped: list[dict[str, Any]]
    notes: dict[str, list[str]] = field(default_factory=dict)
    metric: str = "macro_f1"  # what the study maximizes
    best_scores: dict[str, float | None] = field(default_factory=dict)  # every metric of the best trial, its own first
    lr_range: LRRangeData | None = None  # the study's LR range test, with the completed trials' LR and value
    lr_range_skipped: str = ""  # why the study's LR range test was skipped, if it was
    test_split: list[str] = field(default_factory=list)  # the best trial and the baseline on the test split
    confirmed: list[str] = field(default_factory=list)  # lrtune confirm's ranking over seeds
    against_lr_free: list[str] = field(default_factory=list)  # the tuned winner against the best LR-free baseline

    @property
    def metric_label(self) -> str:
        return metric_label(self.metric)

    @property
    def completed(self) -> list[TrialSummary]:
        return [t for t in self.trials if t.state == "COMPLETE"]


def compute_report(study: optuna.Study, *, storage_label: str) -> ReportData:
    """Everything the report shows, as plain data; plotly is not needed here."""
    maximize = study.direction == StudyDirection.MAXIMIZE
    frozen = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    attrs = study.user_attrs
    config = _masked_config(attrs.get("config"))
    metric = str(config.get("metric") or "macro_f1")
    trials = [summarize_trial(t, metric) for t in frozen]
    dataset = attrs.get("dataset") if isinstance(attrs.get("dataset"), dict) else {}

    completed = [t for t in trials if t.state == "COMPLETE" and t.value is not None]
    ranked = sorted(completed, key=lambda t: -t.value if maximize else t.value)
    best = ranked[0] if ranked else None
    baseline = find_baseline(trials, attrs.get("baseline"))
    gain = best.value - baseline.value if best and baseline and baseline.value is not None else None
    by_number = {t.number: t for t in frozen}
    best_frozen = by_number.get(best.number) if best else None

    data = ReportData(
        study_name=study.study_name,
        storage=storage_label,
        maximize=maximize,
        generated=datetime.datetime.now().replace(microsecond=0),
        data_summary=dataset,
        config=config,
        training=training_config(config, dataset),
        fingerprint=str(attrs.get("fingerprint", "")),
        counts={state: sum(t.state == state for t in trials) for state in STATES},
        trials=trials,
        best=best,
        baseline=baseline,
        gain=gain,
        history_best=best_so_far(trials, maximize),
        top=ranked[:TOP_TRIALS],
        lr_grid=lr_grid(completed, config, maximize),
        lr_steps=[steps for t in ranked[:TOP_LR_TRIALS] if (steps := lr_steps_of(by_number[t.number]))],
        importances={},
        class_scores=class_scores(best_frozen, dataset) if best_frozen else None,
        stopped=stopped_reasons(trials),
    )
    data.metric = metric
    data.best_scores = ordered_scores(best_frozen.user_attrs.get("best") or {}, metric) if best_frozen else {}
    data.lr_range = lr_range_data(attrs.get("lr_range"), completed)
    data.lr_range_skipped = lr_range_skipped(attrs.get("lr_range"))
    data.test_split = format_test_split(attrs.get("test_split"))
    data.confirmed = format_confirmed(attrs.get("confirmed"))
    data.against_lr_free = format_against_lr_free(completed_roles(study), attrs.get("confirmed"), metric)
    data.importances = param_importances(study, len(completed), data.notes)
    add_notes(data)
    return data


def _masked_config(config: Any) -> dict[str, Any]:
    """The study's stored config, with any password in its storage URL hidden."""
    config = dict(config) if isinstance(config, dict) else {}
    if isinstance(config.get("storage"), str):
        config["storage"] = mask_url(config["storage"])
    return config


def training_config(config: dict[str, Any], dataset: dict[str, Any]) -> dict[str, Any]:
    """The config fields that say how every trial was trained; ``image_size`` 0 means the dataset's size."""
    training = {k: config[k] for k in TRAINING_CONFIG if k in config}
    if not training.get("image_size") and dataset.get("image_size"):
        training["image_size"] = dataset["image_size"]
    if training.get("optimizer") != "sgd":
        training.pop("momentum", None)
    return training


def summarize_trial(trial: FrozenTrial, metric: str = "macro_f1") -> TrialSummary:
    attrs = trial.user_attrs
    curves = attrs.get("curves") if isinstance(attrs.get("curves"), dict) else {}
    epochs, values = _curve(curves, CURVE_KEYS.get(metric, "val_f1"))
    if not epochs and trial.intermediate_values:
        epochs = sorted(trial.intermediate_values)
        values = [finite_float(trial.intermediate_values[e]) for e in epochs]
    best = attrs.get("best") if isinstance(attrs.get("best"), dict) else {}
    value = finite_float(trial.value) if trial.state in (TrialState.COMPLETE, TrialState.PRUNED) else None
    return TrialSummary(
        number=trial.number,
        state=trial.state.name,
        value=value,
        params=dict(trial.params),
        start=trial.datetime_start,
        complete=trial.datetime_complete,
        epochs=epochs,
        values=values,
        effective_batch=int_or_none(attrs.get("effective_batch")),
        best_epoch=int_or_none(best.get("epoch")),
        reason=str(attrs.get("reason", "")),
        baseline=attrs.get("baseline") is True,
        retry_of=int_or_none(attrs.get("retry_of")),
        lr_scales=[float(x) for x in attrs.get("lr_scales") or [] if isinstance(x, (int, float))],
    )


def find_baseline(trials: list[TrialSummary], baseline_params: Any) -> TrialSummary | None:
    """The completed baseline trial: the one marked ``baseline``, else one with the baseline's params."""
    completed = [t for t in trials if t.state == "COMPLETE" and t.value is not None]
    marked = [t for t in completed if t.baseline]
    if marked:
        return marked[0]
    if isinstance(baseline_params, dict) and baseline_params:
        return next((t for t in completed if t.params == baseline_params), None)
    return None


def best_so_far(trials: list[TrialSummary], maximize: bool) -> dict[int, float]:
    """Trial number -> the best completed value up to and including that trial."""
    out: dict[int, float] = {}
    best: float | None = None
    for t in trials:
        if t.state == "COMPLETE" and t.value is not None:
            if best is None or (t.value > best if maximize else t.value < best):
                best = t.value
        if best is not None:
            out[t.number] = best
    return out


def lr_grid(completed: list[TrialSummary], config: dict[str, Any], maximize: bool) -> LRGrid | None:
    """Bin completed trials by half a decade of LR and by accumulation steps."""
    points = [
        (math.log10(t.params["lr"]), t.params["accum"], t)
        for t in completed
        if is_positive_number(t.params.get("lr")) and isinstance(t.params.get("accum"), int)
    ]
    if not points:
        return None
    low = math.floor(min(p[0] for p in points) * 2) / 2
    high = max(math.ceil(max(p[0] for p in points) * 2) / 2, low + 0.5)
    n_bins = round((high - low) * 2)
    edges = [low + i / 2 for i in range(n_bins + 1)]
    accum = sorted({p[1] for p in points})
    best: list[list[float | None]] = [[None] * n_bins for _ in accum]
    best_trial: list[list[int | None]] = [[None] * n_bins for _ in accum]
    count = [[0] * n_bins for _ in accum]
    for log_lr, a, t in points:
        row, col = accum.index(a), min(int((log_lr - low) * 2), n_bins - 1)
        count[row][col] += 1
        current = best[row][col]
        if current is None or (t.value > current if maximize else t.value < current):
            best[row][col] = t.value
            best_trial[row][col] = t.number
    bins = [f"{_sci(10 ** a)}–{_sci(10 ** b)}" for a, b in zip(edges, edges[1:])]
    labels = _accum_labels(accum, points, int_or_none(config.get("batch_size")))
    return LRGrid(lr_bins=bins, accum=accum, accum_labels=labels, best=best, best_trial=best_trial, count=count)


def _accum_labels(accum: list[int], points: list[tuple[float, int, TrialSummary]], batch_size: int | None) -> list[str]:
    """``2 (batch 64)``: the accumulation steps and the effective batch they give."""
    batches = {p[1]: p[2].effective_batch for p in points if p[2].effective_batch}
    labels = []
    for a in accum:
        batch = batches.get(a) or (batch_size * a if batch_size else None)
        labels.append(f"{a} (batch {batch})" if batch else str(a))
    return labels


def lr_steps_of(trial: FrozenTrial) -> LRSteps | None:
    raw = trial.user_attrs.get("lr_steps")
    if not isinstance(raw, list):
        return None
    pairs = [p for p in raw if isinstance(p, (list, tuple)) and len(p) == 2 and is_positive_number(p[1])]
    if not pairs:
        return None
    return LRSteps(
        number=trial.number,
        value=finite_float(trial.value),
        steps=[float(p[0]) for p in pairs],
        lrs=[float(p[1]) for p in pairs],
    )


def class_scores(trial: FrozenTrial, dataset: dict[str, Any]) -> ClassScores | None:
    best = trial.user_attrs.get("best")
    if not isinstance(best, dict):
        return None
    lists = {
        key: best.get(key) if isinstance(best.get(key), list) else []
        for key in ("precision", "recall", "f1", "support")
    }
    confusion = best.get("confusion") if isinstance(best.get("confusion"), list) else []
    n = max([len(v) for v in lists.values()] + [len(confusion)])
    if n == 0:
        return None
    names = dataset.get("classes") if isinstance(dataset.get("classes"), list) else []
    classes = [str(names[i]) if i < len(names) else str(i) for i in range(n)]
    matrix = [[int_or_none(c) or 0 for c in row] if isinstance(row, list) else [] for row in confusion]
    matrix = [(row + [0] * n)[:n] for row in matrix] if len(matrix) == n else []

    def pad(values: list[Any], convert: Callable[[Any], Any]) -> list[Any]:
        return [convert(values[i]) if i < len(values) else None for i in range(n)]

    return ClassScores(
        classes=classes,
        precision=pad(lists["precision"], finite_float),
        recall=pad(lists["recall"], finite_float),
        f1=pad(lists["f1"], finite_float),
        support=pad(lists["support"], int_or_none),
        confusion=matrix,
        accuracy=finite_float(best.get("accuracy")),
        epoch=int_or_none(best.get("epoch")),
    )


def stopped_reasons(trials: list[TrialSummary]) -> list[dict[str, Any]]:
    """Pruned and failed trials grouped by state and reason, most common first."""
    groups: dict[tuple[str, str], list[int]] = {}
    for t in trials:
        if t.state in ("PRUNED", "FAIL"):
            groups.setdefault((t.state, t.reason or "no reason stored"), []).append(t.number)
    rows = [{"state": s, "reason": r, "count": len(n), "trials": n} for (s, r), n in groups.items()]
    return sorted(rows, key=lambda row: (-row["count"], row["state"], row["reason"]))


def param_importances(study: optuna.Study, n_completed: int, notes: dict[str, list[str]]) -> dict[str, float]:
    """Optuna's parameter importances; a note under ``importance`` says why they are missing or rough."""
    if n_completed < MIN_TRIALS_FOR_IMPORTANCE:
        notes.setdefault("importance", []).append(
            f"Parameter importances need at least {MIN_TRIALS_FOR_IMPORTANCE} completed trials; "
            f"this study has {n_completed}."
        )
        return {}
    try:
        with warnings.catch_warnings():
            # Optuna warns about small samples; the note below says it once.
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError) as exc:
        notes.setdefault("importance", []).append(f"Parameter importances could not be computed: {exc}")
        return {}
    if n_completed < ROUGH_IMPORTANCE_BELOW:
        notes.setdefault("importance", []).append(
            f"Based on only {n_completed} completed trials, so the importances are rough."
        )
    return {name: float(v) for name, v in importances.items()}


def _curve(curves: dict[str, Any], key: str) -> tuple[list[int], list[float | None]]:
    values = curves.get(key)
    if not isinstance(values, list) or not values:
        return [], []
    epochs = curves.get("epoch")
    if not isinstance(epochs, list) or len(epochs) != len(values):
        epochs = list(range(1, len(values) + 1))
    return [int_or_none(e) or i + 1 for i, e in enumerate(epochs)], [finite_float(v) for v in values]


def _sci(x: float) -> str:
    """``3e-3``: one significant digit, no zero-padded exponent."""
    mantissa, exponent = f"{x:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"
