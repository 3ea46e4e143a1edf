import optuna
import pytest

from lrtune import storage as storage_mod
from lrtune.config import Config
from lrtune.errors import LRTuneError


def test_default_names_and_folders(tmp_path):
    assert storage_mod.default_study_name(Config()) == "digits-lt-test_resnet"
    assert storage_mod.default_study_name(Config(data="/data/faces/train.csv", model="efficientnet_b0")) == "train-efficientnet_b0"
    assert storage_mod.study_dir(tmp_path, "../../etc") == tmp_path / "_.._etc"
    assert storage_mod.study_dir(tmp_path, "..") == tmp_path / "_"


def test_latest_study_is_the_one_with_the_newest_trial(storage_url):
    storage = storage_mod.open_storage(storage_url)
    for name in ("a", "b", "c"):
        optuna.create_study(study_name=name, storage=storage)
    optuna.load_study(study_name="b", storage=storage).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert storage_mod.latest_study_name(storage) == "b"
    with pytest.raises(LRTuneError, match=r"unknown study 'z' \(existing studies: a, b, c\)"):
        storage_mod.load_study(storage, "z")


def test_reading_a_missing_database_is_an_error_and_creates_nothing(tmp_path):
    with pytest.raises(LRTuneError, match="no study database at"):
        storage_mod.open_existing_storage(storage_mod.default_storage_url(tmp_path / "none"))
    assert not (tmp_path / "none").exists()


def test_the_latest_study_is_loaded_when_none_is_named(storage_url):
    storage = storage_mod.open_storage(storage_url)
    with pytest.raises(LRTuneError, match="no studies in"):
        storage_mod.load_study(storage)
    optuna.create_study(study_name="only", storage=storage)
    assert storage_mod.load_study(storage).study_name == "only"

