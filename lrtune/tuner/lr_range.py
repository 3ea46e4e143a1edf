"""The LR range test as a search's first step: run once per study, stored on it, used to seed the search.

With ``lr_range = "auto"`` the driver runs the range test once, on the
baseline's loss and accumulation, before the first trial, and stores its
record in the study's ``lr_range`` user attribute (a resumed study reuses it).
Its suggestion then

- narrows the LR range to ``[suggestion / WINDOW, suggestion * WINDOW]``,
  cut to the configured ``lr_min``..``lr_max`` and widened to hold the
  baseline's LR (trial 0 stays inside the space); ``space.suggest`` reads these
  bounds from the study;
- is queued as trial 1: the baseline with the suggested LR.

One range, for every loss and accumulation: measured on ``digits-lt``
(``benchmarks/lr_range.py --combinations``), other losses and 4 accumulation
steps moved the suggestion by a factor of 2 at most (about square-root scaling
with the effective batch), well inside the window. Without a suggestion (no
clear descent) the configured range stays and nothing is queued.
"""

from __future__ import annotations

from typing import Any

import optuna

from lrtune.config import Config
from lrtune.errors import ConfigError
from lrtune.progress import ProgressSink
from lrtune.training.loop import AmpPolicy
from lrtune.training.range_test import END_LR, STEPS, RangeTestResult, TooFewImages, range_test
from lrtune.training.run import Hyperparams, TrainingData, TrainingRun

ATTR = "lr_range"  # the study user attribute holding the record
WINDOW = 10.0  # the narrowed range spans this factor on either side of the suggestion
START_BELOW_LR_MIN = 100.0  # the sweep starts at lr_min / this, unless told otherwise


def default_start(cfg: Config) -> float:
    return cfg.lr_min / START_BELOW_LR_MIN


def run_range_test(
    cfg: Config,
    *,
    data: TrainingData,
    amp: AmpPolicy,
    start: float | None = None,
    end: float = END_LR,
    steps: int = STEPS,
    loss: str | None = None,
    accum: int | None = None,
    progress: ProgressSink | None = None,
) -> RangeTestResult:
    """A range test on the search's data, model and batch, with the baseline's loss and accumulation by default."""
    from lrtune.tuner.space import baseline_params, check_space, range_test_body

    check_space(cfg)
    base = baseline_params(cfg)
    loss = loss or base["loss"]
    accum = base["accum"] if accum is None else accum
    if accum <= 0:
        raise ConfigError(f"--accum must be a positive number of micro-batches, got {accum}")
    start = default_start(cfg) if start is None else start
    params = Hyperparams(lr=start, scheduler="cosine", loss=loss, accum=int(accum), **range_test_body(cfg))
    run = TrainingRun(cfg, params, data=data, amp=amp, seed=cfg.seed)

    def count(done: int, total: int) -> None:
        if progress is not None:
            progress.count("LR range test steps", done, total)

    return range_test(run, start=start, end=end, steps=steps, progress=count)


def narrowed_bounds(cfg: Config, suggestion: float | None, baseline_lr: float) -> tuple[float, float]:
    """The LR range around ``suggestion``; the configured range when there is none or it lies outside."""
    if suggestion is None or cfg.lr_min == cfg.lr_max:
        return cfg.lr_min, cfg.lr_max
    low, high = max(cfg.lr_min, suggestion / WINDOW), min(cfg.lr_max, suggestion * WINDOW)
    if low >= high:
        return cfg.lr_min, cfg.lr_max
    return min(low, baseline_lr), max(high, baseline_lr)


def lr_bounds(trial: optuna.Trial | Any, cfg: Config) -> tuple[float, float]:
    """The LR range a trial samples from: the stored narrowed range under ``lr_range=auto``, else the configured one."""
    if cfg.lr_range == "off":
        return cfg.lr_min, cfg.lr_max
    study = getattr(trial, "study", None)
    record = study.user_attrs.get(ATTR) if study is not None else None
    bounds = record.get("bounds") if isinstance(record, dict) else None
    if isinstance(bounds, list) and len(bounds) == 2:
        return float(bounds[0]), float(bounds[1])
    return cfg.lr_min, cfg.lr_max


def seed_study(
    study: optuna.Study,
    cfg: Config,
    *,
    data: TrainingData,
    amp: AmpPolicy,
    progress: ProgressSink | None = None,
) -> dict[str, Any] | None:
    """Run the range test once per study (``lr_range=auto``), store it, and queue its suggestion.

    Returns the stored record; a study that has one already keeps it. A
    training set smaller than one batch skips the test: the record then says
    why, the configured range stays, and the search goes on.
    """
    if cfg.lr_range == "off":
        return None
    stored = study.user_attrs.get(ATTR)
    if isinstance(stored, dict):
        return stored
    from lrtune.tuner.space import range_test_body

    say = progress.message if progress is not None else (lambda text: None)
    body = range_test_body(cfg)
    held = (f", sweeping the head's LR with the body at {body['body_ratio']:.2g} times it" if "body_ratio" in body
            else f", sweeping the head's LR with a layer decay of {body['layer_decay']:.2g}" if body else "")
    say(f"running the LR range test once for this study (--lr-range auto){held}")
    try:
        result = run_range_test(cfg, data=data, amp=amp, steps=STEPS, progress=progress)
    except TooFewImages as exc:
        record = {"skipped": exc.reason, "suggestion": None, "bounds": [cfg.lr_min, cfg.lr_max]}
        study.set_user_attr(ATTR, record)
        say(f"LR range test skipped: {exc.reason}; the LR range stays {cfg.lr_min:.3g} to {cfg.lr_max:.3g}")
        return record
    baseline = study.user_attrs.get("baseline") or {}
    baseline_lr = float(baseline.get("lr", cfg.lr_min))
    record = result.to_dict()
    record["bounds"] = list(narrowed_bounds(cfg, record["suggestion"], baseline_lr))
    study.set_user_attr(ATTR, record)
    if record["suggestion"] is not None:
        params = {**baseline, **body, "lr": record["suggestion"]} if baseline else None
        if params:
            # Workers starting together on a new study may each run the test: one queued trial is enough.
            study.enqueue_trial(params, user_attrs={"lr_range": True}, skip_if_exists=True)
        low, high = record["bounds"]
        say(f"LR range test suggests {record['suggestion']:.3g} ({record['rule']}); LR range {low:.3g} to {high:.3g}")
    else:
        say(f"LR range test: {record['rule']}; the LR range stays {cfg.lr_min:.3g} to {cfg.lr_max:.3g}")
    return record
