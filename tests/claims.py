"""Workers that race to claim queued trials, each its own spawned process.

A spawned process imports its target by module name, so it lives here, on
the suite's ``sys.path``, rather than in a test module.
"""

from __future__ import annotations

import optuna

from lrtune import storage as storage_mod


def claim_all(url: str, ids: list[int], together, won) -> None:
    """Try to take each of ``ids`` (queued trials) once every racer has its storage open; put those taken on ``won``."""
    storage = storage_mod.open_storage(url)
    together.wait(timeout=300)
    won.put([i for i in ids if storage.set_trial_state_values(i, optuna.trial.TrialState.RUNNING)])
