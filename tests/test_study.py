import socket
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from lrtune import study as study_mod
from lrtune.config import Config
from lrtune.errors import LRTuneError


@pytest.fixture
def storage_url(tmp_path):
    return study_mod.default_storage_url(tmp_path)


def test_default_names_and_folders(tmp_path):
    assert study_mod.default_study_name(Config()) == "digits-lt-test_resnet"
    assert study_mod.default_study_name(Config(data="/data/faces/train.csv", model="efficientnet_b0")) == "train-efficientnet_b0"
    assert study_mod.study_dir(tmp_path, "../../etc") == tmp_path / "_.._etc"
    assert study_mod.study_dir(tmp_path, "..") == tmp_path / "_"


def test_mask_url_hides_passwords():
    assert study_mod.mask_url("postgresql://me:s3cret@db:5432/x") == "postgresql://me:***@db:5432/x"
    assert study_mod.mask_url("sqlite:///studies/lrtune.db") == "sqlite:///studies/lrtune.db"


def test_unknown_sampler_and_pruner_list_the_valid_ones():
    with pytest.raises(LRTuneError, match=r"unknown sampler 'grid' \(valid: tpe, random, gp, qmc\)"):
        study_mod.create_sampler("grid", 0)
    with pytest.raises(LRTuneError, match=r"unknown pruner 'x' \(valid: median, hyperband, none\)"):
        study_mod.create_pruner("x", warmup=1, epochs=3)
    for name in study_mod.SAMPLERS:
        study_mod.create_sampler(name, 0)


def test_sqlite_storage_is_in_wal_mode(storage_url, tmp_path):
    study_mod.open_storage(storage_url)
    import sqlite3

    with sqlite3.connect(tmp_path / "lrtune.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _running_trial(storage, host, pid):
    study = optuna.create_study(study_name="s", storage=storage, load_if_exists=True)
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    trial.set_user_attr("host", host)
    trial.set_user_attr("pid", pid)
    trial.set_user_attr("seed", 42)
    return study, trial


def test_a_trial_whose_process_died_on_this_host_is_failed_and_requeued(storage_url):
    storage = study_mod.open_storage(storage_url)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    study, trial = _running_trial(storage, socket.gethostname(), int(dead.stdout))
    _, alive = _running_trial(storage, socket.gethostname(), 1)  # pid 1 lives
    _, remote = _running_trial(storage, "another-host", int(dead.stdout))  # left to the heartbeat
    assert study_mod.recover_orphans(study) == [trial.number]
    trials = study.get_trials()
    assert trials[trial.number].state == TrialState.FAIL
    assert trials[trial.number].user_attrs["reason"] == "worker died"
    assert trials[alive.number].state == trials[remote.number].state == TrialState.RUNNING
    (waiting,) = study.get_trials(states=(TrialState.WAITING,))
    assert waiting.user_attrs == {"retry_of": trial.number, "seed": 42}
    assert waiting.system_attrs["fixed_params"] == trials[trial.number].params
    assert study_mod.recover_orphans(study) == []  # once only


def test_a_silent_trial_on_another_host_is_requeued_by_the_heartbeat(storage_url, monkeypatch):
    monkeypatch.setattr(study_mod, "HEARTBEAT_INTERVAL", 1)
    monkeypatch.setattr(study_mod, "GRACE_PERIOD", 1)
    storage = study_mod.open_storage(storage_url, heartbeat=True)
    study, trial = _running_trial(storage, "another-host", 123)
    storage.record_heartbeat(trial._trial_id)
    time.sleep(2.5)
    optuna.storages.fail_stale_trials(study)
    assert study.get_trials()[trial.number].state == TrialState.FAIL
    (waiting,) = study.get_trials(states=(TrialState.WAITING,))
    assert waiting.user_attrs["retry_of"] == trial.number


def test_config_is_stored_and_a_changed_one_refused_unless_forced(storage_url):
    storage = study_mod.open_storage(storage_url)
    study = optuna.create_study(study_name="c", storage=storage)
    study_mod.check_config(study, Config())
    assert study.user_attrs["config"]["model"] == "test_resnet"
    study_mod.check_config(study, Config(trials=500, workers=4))  # run-only options may change
    with pytest.raises(LRTuneError, match="epochs: 10 -> 3"):
        study_mod.check_config(study, Config(epochs=3))
    study_mod.check_config(study, Config(epochs=3, force=True))
    assert study.user_attrs["config"]["epochs"] == 3
    assert study.user_attrs["config_history"][0]["changes"] == ["epochs: 10 -> 3"]


def test_latest_study_is_the_one_with_the_newest_trial(storage_url):
    storage = study_mod.open_storage(storage_url)
    for name in ("a", "b", "c"):
        optuna.create_study(study_name=name, storage=storage)
    optuna.load_study(study_name="b", storage=storage).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert study_mod.latest_study_name(storage) == "b"
    with pytest.raises(LRTuneError, match=r"unknown study 'z' \(existing studies: a, b, c\)"):
        study_mod.load_study(storage, "z")


def test_keep_best_keeps_the_best_weights_even_when_a_pruned_trial_scored_higher(tmp_path):
    from lrtune import checkpoints

    study = optuna.create_study(direction="maximize")
    for value, state in ((0.5, TrialState.COMPLETE), (0.7, TrialState.COMPLETE), (0.9, TrialState.PRUNED)):
        study.add_trial(optuna.trial.create_trial(value=value, state=state))
    for number in (0, 1):
        checkpoints.save(checkpoints.trial_dir(tmp_path, number) / checkpoints.BEST, {"trial": number})
    study_mod.keep_weights(Config(keep="best"), tmp_path)(study, study.trials[-1])
    assert sorted(checkpoints.weight_files(tmp_path)) == [1]
