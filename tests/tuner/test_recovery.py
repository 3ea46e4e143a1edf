import socket
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from lrtune.config import Config
from lrtune.tuner import recovery
from lrtune.storage import default_storage_url, open_storage


@pytest.fixture
def storage_url(tmp_path):
    return default_storage_url(tmp_path)


def _running_trial(storage, host, pid):
    study = optuna.create_study(study_name="s", storage=storage, load_if_exists=True)
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    trial.set_user_attr("host", host)
    trial.set_user_attr("pid", pid)
    trial.set_user_attr("seed", 42)
    return study, trial


def test_a_trial_whose_process_died_on_this_host_is_failed_and_requeued(storage_url):
    storage = open_storage(storage_url)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    study, trial = _running_trial(storage, socket.gethostname(), int(dead.stdout))
    _, alive = _running_trial(storage, socket.gethostname(), 1)  # pid 1 lives
    _, remote = _running_trial(storage, "another-host", int(dead.stdout))  # left to the heartbeat
    assert recovery.recover_orphans(study) == [trial.number]
    trials = study.get_trials()
    assert trials[trial.number].state == TrialState.FAIL
    assert trials[trial.number].user_attrs["reason"] == "worker died"
    assert trials[alive.number].state == trials[remote.number].state == TrialState.RUNNING
    (waiting,) = study.get_trials(states=(TrialState.WAITING,))
    assert waiting.user_attrs == {"retry_of": trial.number, "seed": 42}
    assert waiting.system_attrs["fixed_params"] == trials[trial.number].params
    assert recovery.recover_orphans(study) == []  # once only


def test_a_silent_trial_on_another_host_is_requeued_by_the_heartbeat(storage_url):
    storage = open_storage(storage_url, heartbeat=recovery.heartbeat(Config(heartbeat_interval=1, heartbeat_grace=1)))
    study, trial = _running_trial(storage, "another-host", 123)
    storage.record_heartbeat(trial._trial_id)
    time.sleep(2.5)
    optuna.storages.fail_stale_trials(study)
    assert study.get_trials()[trial.number].state == TrialState.FAIL
    (waiting,) = study.get_trials(states=(TrialState.WAITING,))
    assert waiting.user_attrs["retry_of"] == trial.number
