"""Checkpoints in an artifact store: uploaded each epoch, read by a retry on another machine."""

import optuna
import pytest
from optuna.trial import TrialState

from lrtune.config import Config
from lrtune.errors import ConfigError
from lrtune.storage import default_storage_url, open_storage
from lrtune.training.loop import Interrupted
from lrtune.tuner.artifacts import CHECKPOINT_ATTR, open_store
from lrtune.tuner.trial import Objective, StopFlag

PARAMS = {"lr": 3e-3, "scheduler": "cosine", "loss": "ce", "accum": 1}
FAST = {"epochs": 2, "batch_size": 128, "image_size": 8}


def study_in(tmp_path):
    storage = open_storage(default_storage_url(tmp_path / "db"))
    return optuna.create_study(study_name="s", storage=storage, direction="maximize")


def machine(tmp_path, folder, store, stop=None):
    """An objective with its own studies folder: what another machine would have."""
    cfg = Config(**FAST, artifacts=str(store), studies_dir=str(tmp_path / folder))
    return Objective(cfg, study_dir=tmp_path / folder / "s", stop=stop)


def test_a_retry_on_another_machine_continues_from_the_uploaded_checkpoint(tmp_path):
    study, store = study_in(tmp_path), tmp_path / "store"
    stop = StopFlag()
    a = machine(tmp_path, "a", store, stop)

    class StopInEpoch2:
        def epoch(self, trial, epoch, epochs, f1):
            stop.signum = 2  # arrives during epoch 2

    a.progress = StopInEpoch2()
    study.enqueue_trial(PARAMS)
    with pytest.raises(Interrupted):
        study.optimize(a, n_trials=1)
    first = study.trials[0]
    uploaded = first.user_attrs[CHECKPOINT_ATTR]
    assert uploaded["epoch"] == 1 and (store / uploaded["id"]).is_file()

    (tmp_path / "a").rename(tmp_path / "a-gone")  # machine A's disk is out of reach
    study.optimize(machine(tmp_path, "b", store), n_trials=1)
    retry = study.trials[1]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["retry_of"] == 0
    assert retry.user_attrs["resumed_at_epoch"] == 2
    assert retry.user_attrs["curves"]["epoch"] == [1, 2] and sorted(retry.intermediate_values) == [1, 2]
    assert not (store / uploaded["id"]).exists()  # the finished trial's last.pt is removed
    assert not [p for p in store.iterdir() if p.name.endswith("-last.pt")]


def test_a_retry_that_cannot_reach_the_checkpoint_starts_at_epoch_1_and_says_why(tmp_path):
    study, store = study_in(tmp_path), tmp_path / "store"
    old = study.ask()
    old.set_user_attr(CHECKPOINT_ATTR, {"id": "s-trial0-epoch1-last.pt", "epoch": 1})
    study.tell(old, state=TrialState.FAIL)
    study.enqueue_trial(PARAMS, user_attrs={"retry_of": 0, "seed": 7})
    study.optimize(machine(tmp_path, "b", store), n_trials=1)
    retry = study.trials[1]
    assert retry.state == TrialState.COMPLETE
    assert retry.user_attrs["resume_failed"].startswith(f"checkpoint of trial 0 (epoch 1) unreachable in {store}: ")
    assert "resumed_at_epoch" not in retry.user_attrs
    assert retry.user_attrs["curves"]["epoch"] == [1, 2]


def test_bad_artifact_locations_name_the_culprit(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="--artifacts .*file/sub: cannot create the folder"):
        open_store(str(blocker / "sub"))
