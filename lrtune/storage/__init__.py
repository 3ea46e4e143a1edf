"""The read side: opening storages, naming and listing studies, loading trials.

The report and ``lrtune show`` depend on this package and nothing heavier; it
imports neither torch nor the training code. ``backend`` opens a database and
holds the storage lrtune reads and writes it through; ``statements`` are that
storage's one-round-trip SQL; ``studies`` names, lists and loads studies.
"""

from lrtune.storage.backend import (
    Heartbeat,
    ResilientStorage,
    mask_url,
    open_storage,
    pop_waiting_by_id,
    resilient,
    retrying,
    scrub,
)
from lrtune.storage.studies import (
    CONFIRM_SUFFIX,
    DB_NAME,
    FINISHED,
    best_first,
    completed_roles,
    count_finished,
    default_storage_url,
    default_study_name,
    latest_study_name,
    load_study,
    open_existing_storage,
    storage_label,
    storage_url,
    study_dir,
    study_names,
    summarize_studies,
    top_trials,
    trial_role,
)

__all__ = [
    "CONFIRM_SUFFIX",
    "DB_NAME",
    "FINISHED",
    "Heartbeat",
    "ResilientStorage",
    "best_first",
    "completed_roles",
    "count_finished",
    "default_storage_url",
    "default_study_name",
    "latest_study_name",
    "load_study",
    "mask_url",
    "open_existing_storage",
    "open_storage",
    "pop_waiting_by_id",
    "resilient",
    "retrying",
    "scrub",
    "storage_label",
    "storage_url",
    "study_dir",
    "study_names",
    "summarize_studies",
    "top_trials",
    "trial_role",
]
