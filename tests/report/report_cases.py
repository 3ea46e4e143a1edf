"""Studies and helpers shared by the report tests."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from lrtune.report import write_report
from lrtune.storage import default_storage_url, load_study, mask_url, open_existing_storage, open_storage
from studies import BASELINE

optuna.logging.set_verbosity(optuna.logging.WARNING)

PRUNED, FAIL, RUNNING, WAITING = TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING


def params(lr: float, scheduler: str = "cosine", loss: str = "ce", accum: int = 1) -> dict:
    return {"lr": lr, "scheduler": scheduler, "loss": loss, "accum": accum}


MIXED = [
    {"params": dict(BASELINE), "value": 0.70, "baseline": True},
    {"params": params(3e-3, "step", "focal", 2), "value": 0.80},
    {"state": PRUNED, "params": params(0.3, "plateau"), "stop_epoch": 3},
    {"params": params(1e-4, "cosine", "f1", 4), "value": 0.75},
    {"state": FAIL, "params": params(0.9, "step"), "reason": "diverged: non-finite loss at epoch 2", "stop_epoch": 2},
    {"params": params(2e-3, "plateau", "label_smoothing", 8), "value": 0.78},
    {"state": RUNNING, "params": params(5e-3)},
]


def new_storage(tmp_path: Path) -> str:
    """A fresh lrtune database in ``tmp_path``, in WAL mode like the ones a search creates."""
    url = default_storage_url(tmp_path)
    open_storage(url)
    return url


def report_of(url: str, study_name: str | None, out: str | Path | None = None, **options: Any) -> Path:
    """What ``lrtune report`` does: open the storage, pick the study (latest when None), write its report."""
    study = load_study(open_existing_storage(url), study_name)
    return write_report(study, out=out, storage_label=mask_url(url), **options)


def without_bundle(html_text: str) -> str:
    """The page without the inline plotly.js, small enough for readable assertion messages."""
    return re.sub(r"<script charset=\"utf-8\">.*?</script>", "<script>PLOTLY</script>", html_text, count=1, flags=re.S)
