"""What the commands print on stdout: tables of trials and a study's summary."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lrtune.config import metric_label
from lrtune.formatting import (
    format_against_lr_free,
    format_confirmed,
    format_lr_range,
    format_metric,
    format_params,
    format_scores,
    format_test_split,
    format_value,
    body_lr,
    ordered_scores,
    table,
)
from lrtune.storage import completed_roles, top_trials

TRIAL_HEADER = ["trial", "state", "{metric}", "lr", "scheduler", "loss", "accum", "epochs", "other"]
TUNED = ("lr", "scheduler", "loss", "accum")


def trial_row(t: FrozenTrial) -> list[str]:
    p = t.params
    extras = {k: v for k, v in sorted(p.items()) if k not in TUNED}
    body = body_lr(p, t.user_attrs.get("lr_scales"))
    if body:  # a fine-tune: lr is the head's
        extras = {"body_lr": body, **extras}
    epochs = len(t.user_attrs.get("curves", {}).get("epoch", [])) or len(t.intermediate_values)
    return [
        str(t.number),
        t.state.name.lower(),
        format_metric(t.value),
        format_value(p.get("lr", "-")),
        str(p.get("scheduler", "-")),
        str(p.get("loss", "-")),
        str(p.get("accum", "-")),
        str(epochs),
        format_params(extras).replace(", ", " "),
    ]


def study_metric(study: optuna.Study) -> str:
    """The metric the study maximizes (macro-F1 for a study stored without one)."""
    return str((study.user_attrs.get("config") or {}).get("metric") or "macro_f1")


def format_summary(study: optuna.Study, top: int = 5) -> str:
    """Trial counts by state, the top trials, the best (every metric) and its gain over the baseline, throughput."""
    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState if any(t.state == s for t in trials)}
    best = top_trials(study, top)
    metric = study_metric(study)
    label = metric_label(metric)
    lines = [f"study {study.study_name}: " + ", ".join(f"{n} {k}" for k, n in counts.items())]
    if best:
        header = [h.format(metric=label) for h in TRIAL_HEADER]
        lines.append(table([trial_row(t) for t in best], header))
        b = best[0]
        lines.append(f"best: trial {b.number}, {label} {format_metric(b.value)}, {format_params(b.params)}")
        scores = b.user_attrs.get("best") or {}
        if isinstance(scores, dict) and ordered_scores(scores, metric):
            lines.append(f"best trial's validation scores: {format_scores(scores, metric)}")
            left_out = scores.get("roc_auc_left_out") or []
            if left_out:
                classes = (study.user_attrs.get("dataset") or {}).get("classes") or []
                names = ", ".join(str(classes[k]) if k < len(classes) else str(k) for k in left_out)
                lines.append(f"its ROC-AUC leaves out {names}: no validation image of it, or only images of it")
        baseline = [t for t in trials if t.user_attrs.get("baseline") and t.value is not None]
        if baseline:
            base = baseline[0]
            lines.append(
                f"baseline (trial {base.number}): {label} {format_metric(base.value)}, gain {b.value - base.value:+.4f}"
            )
    else:
        lines.append("no finished trials yet")
    confirmed = study.user_attrs.get("confirmed")
    lines += format_confirmed(confirmed)
    lines += format_against_lr_free(completed_roles(study), confirmed, metric)
    lines += format_lr_range(study.user_attrs.get("lr_range"))
    lines += format_test_split(study.user_attrs.get("test_split"))
    speeds = sorted(t.user_attrs["images_per_s"] for t in trials if t.user_attrs.get("images_per_s"))
    if speeds:
        lines.append(f"training throughput: {speeds[len(speeds) // 2]:.0f} images/s (median over {len(speeds)} trials)")
    return "\n".join(lines)


def show_json(study: optuna.Study, top: int) -> dict[str, Any]:
    """``lrtune show --json``: the config, the best trial with its metrics, the top trials, the test split."""
    ranked = top_trials(study, top)
    best = ranked[0] if ranked else None
    metric = study_metric(study)
    scores = (best.user_attrs.get("best") or {}) if best is not None else {}
    return {
        "study": study.study_name,
        "metric": metric,
        "config": study.user_attrs.get("config"),
        "best": None
        if best is None
        else {"trial": best.number, "value": best.value, "params": best.params,
              "scores": ordered_scores(scores if isinstance(scores, dict) else {}, metric),
              "metrics": best.user_attrs.get("best")},
        "top": [{"trial": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params} for t in ranked],
        "test_split": study.user_attrs.get("test_split"),
        "confirmed": study.user_attrs.get("confirmed"),
        "against_lr_free": format_against_lr_free(completed_roles(study), study.user_attrs.get("confirmed"), metric),
    }


def studies_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no studies"
    header = list(rows[0])
    cells = [[format_metric(r[k]) if k == "best" else str(r[k]) for k in header] for r in rows]
    return table(cells, header)
