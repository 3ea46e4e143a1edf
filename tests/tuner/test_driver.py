import optuna
import pytest
from optuna.trial import TrialState

from lrtune.config import Config
from lrtune.errors import LRTuneError
from lrtune.tuner import driver
from lrtune.storage import default_storage_url, open_storage
from lrtune.training import checkpoints


@pytest.fixture
def storage_url(tmp_path):
    return default_storage_url(tmp_path)


def test_config_is_stored_and_a_changed_one_refused_unless_forced(storage_url):
    storage = open_storage(storage_url)
    study = optuna.create_study(study_name="c", storage=storage)
    driver.record_config(study, Config())
    assert study.user_attrs["config"]["model"] == "test_resnet"
    driver.record_config(study, Config(trials=500, workers=4))  # run-only options may change
    with pytest.raises(LRTuneError, match="epochs: 10 -> 3"):
        driver.record_config(study, Config(epochs=3))
    driver.record_config(study, Config(epochs=3, force=True))
    assert study.user_attrs["config"]["epochs"] == 3
    assert study.user_attrs["config_history"][0]["changes"] == ["epochs: 10 -> 3"]


def test_keep_best_keeps_the_best_weights_even_when_a_pruned_trial_scored_higher(tmp_path):
    study = optuna.create_study(direction="maximize")
    for value, state in ((0.5, TrialState.COMPLETE), (0.7, TrialState.COMPLETE), (0.9, TrialState.PRUNED)):
        study.add_trial(optuna.trial.create_trial(value=value, state=state))
    for number in (0, 1):
        checkpoints.save(checkpoints.trial_dir(tmp_path, number) / checkpoints.BEST, {"trial": number})
    driver.keep_weights(Config(keep="best"), tmp_path)(study, study.trials[-1])
    assert sorted(checkpoints.weight_files(tmp_path)) == [1]


def test_checking_a_changed_config_writes_nothing_to_the_study(storage_url):
    study = optuna.create_study(study_name="c", storage=open_storage(storage_url))
    driver.record_config(study, Config())
    with pytest.raises(LRTuneError, match="epochs: 10 -> 3"):
        driver.config_changes(study, Config(epochs=3))
    assert driver.config_changes(study, Config(epochs=3, force=True)) == ["epochs: 10 -> 3"]
    assert study.user_attrs["config"]["epochs"] == 10 and "config_history" not in study.user_attrs
