import socket
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from lrtune.config import Config
from lrtune.tuner import faults, recovery
from lrtune.storage import default_storage_url, open_storage


@pytest.fixture
def storage_url(tmp_path):
    return default_storage_url(tmp_path)


def _running_trial(storage, host, pid, extra=None):
    study = optuna.create_study(study_name="s", storage=storage, load_if_exists=True)
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    for key, value in {"host": host, "pid": pid, "seed": 42, **(extra or {})}.items():
        trial.set_user_attr(key, value)
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
    assert waiting.user_attrs == {"retry_of": trial.number, "seed": 42, "faults": 1}
    assert waiting.system_attrs["fixed_params"] == trials[trial.number].params
    assert recovery.recover_orphans(study) == []  # once only


def test_a_trial_whose_process_died_max_faults_times_counts_as_failed(storage_url):
    storage = open_storage(storage_url)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    study, trial = _running_trial(storage, socket.gethostname(), int(dead.stdout),
                                  extra={"faults": faults.MAX_FAULTS - 1, "baseline": True})
    assert recovery.recover_orphans(study) == []
    failed = study.get_trials()[trial.number]
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs["reason"] == f"worker died ({faults.MAX_FAULTS} faults of the machine: counted as failed)"
    assert study.get_trials(states=(TrialState.WAITING,)) == []


def test_a_dead_trial_already_queued_again_is_not_queued_twice(storage_url):
    storage = open_storage(storage_url)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    study, trial = _running_trial(storage, socket.gethostname(), int(dead.stdout), extra={"baseline": True})
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number, "seed": 42})  # queued as it stopped
    assert recovery.recover_orphans(study) == [trial.number]
    (waiting,) = study.get_trials(states=(TrialState.WAITING,))
    assert waiting.user_attrs == {"retry_of": trial.number, "seed": 42}


def test_a_retry_of_the_baseline_is_the_baseline(storage_url):
    storage = open_storage(storage_url)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    study, trial = _running_trial(storage, socket.gethostname(), int(dead.stdout), extra={"baseline": True})
    recovery.recover_orphans(study)
    (waiting,) = study.get_trials(states=(TrialState.WAITING,))
    assert waiting.user_attrs["baseline"] is True


def test_a_silent_trial_on_another_host_is_requeued_by_the_heartbeat(storage_url):
    storage = open_storage(storage_url, heartbeat=recovery.heartbeat(Config(heartbeat_interval=1, heartbeat_grace=1)))
    study, trial = _running_trial(storage, "another-host", 123)
    storage.record_heartbeat(trial._trial_id)
    time.sleep(2.5)
    optuna.storages.fail_stale_trials(study)
    assert study.get_trials()[trial.number].state == TrialState.FAIL
    (waiting,) = study.get_trials(states=(TrialState.WAITING,))
    assert waiting.user_attrs["retry_of"] == trial.number
