import copy
import math

import optuna
import pytest
from optuna.storages import RDBStorage
from optuna.trial import TrialState

import postgres
from lrtune import storage as storage_mod


def _study_with_every_kind_of_row(storage) -> optuna.Study:
    """Trials in every state, with each kind of parameter, non-finite values, and attributes; and another study."""
    study = optuna.create_study(study_name=postgres.new_study_name(), storage=storage, direction="maximize")
    other = optuna.create_study(study_name=postgres.new_study_name(), storage=storage)
    other.tell(other.ask(), 1.0)
    for i in range(8):
        trial = study.ask()
        trial.suggest_float("lr", 1e-5, 1.0, log=True)
        trial.suggest_categorical("loss", ["ce", "focal", None])
        trial.suggest_int("accum", 1, 4)
        for step, value in enumerate([0.25, math.nan, math.inf, -math.inf, 0.5][: i + 1]):
            trial.report(value, step)
        trial.set_user_attr("curves", {"val_f1": [0.1, 0.2], "epoch": [1, 2]})
        trial.set_user_attr("missing", None)
        storage.set_trial_system_attr(trial._trial_id, "origin", [i, "a"])
        if i % 4 == 0:
            study.tell(trial, [0.5, math.inf][i // 4])
        elif i % 4 == 1:
            study.tell(trial, state=TrialState.PRUNED)
        elif i % 4 == 2:
            study.tell(trial, state=TrialState.FAIL)
    study.enqueue_trial({"lr": 0.01}, user_attrs={"retry_of": 3})
    return study


def _comparable(trials) -> str:
    """Trials as text (so NaN equals NaN), with each trial's rows in one order: Optuna's order is the database's."""
    trials = copy.deepcopy(trials)
    for t in trials:
        t.intermediate_values = dict(sorted(t.intermediate_values.items()))
        t.user_attrs = dict(sorted(t.user_attrs.items()))
        t._system_attrs = dict(sorted(t.system_attrs.items()))
    return repr(trials)


def test_a_trial_loads_in_one_query_as_optuna_loads_it(any_url, statements_of):
    storage = storage_mod.open_storage(any_url)
    study = _study_with_every_kind_of_row(storage)
    ids = [t._trial_id for t in RDBStorage._get_trials(storage, study._study_id, None, set(), -1)]
    assert len(ids) == 9
    theirs = [RDBStorage.get_trial(storage, trial_id) for trial_id in ids]
    seen = statements_of(storage)
    ours = [storage.get_trial(trial_id) for trial_id in ids]
    assert len(seen) == len(ids), seen
    assert _comparable(ours) == _comparable(theirs)
    with pytest.raises(KeyError):
        storage.get_trial(max(ids) + 1000)


def test_a_studys_trials_load_in_one_query_as_optuna_loads_them(any_url, statements_of):
    storage = storage_mod.open_storage(any_url)
    study = _study_with_every_kind_of_row(storage)
    ids = [t._trial_id for t in RDBStorage._get_trials(storage, study._study_id, None, set(), -1)]
    asks = [  # as get_all_trials asks, and as Optuna's cache asks for what changed since it last read
        (None, set(), -1),
        ((TrialState.COMPLETE, TrialState.PRUNED), set(), -1),
        ((TrialState.WAITING,), set(), -1),
        (None, set(), ids[4]),
        (None, {ids[1], ids[3], ids[7]}, ids[5]),
        (None, set(), ids[-1]),
    ]
    for states, included, after in asks:
        seen = statements_of(storage)
        ours = storage._get_trials(study._study_id, states, included, after)
        assert len(seen) == 1, seen
        assert _comparable(ours) == _comparable(RDBStorage._get_trials(storage, study._study_id, states, included, after))
    assert [t.number for t in storage.get_all_trials(study._study_id, states=(TrialState.RUNNING,))] == [3, 7]
    with pytest.raises(KeyError):
        storage.get_all_trials(study._study_id + 1000)


def test_trial_times_read_back_as_optuna_gives_them_in_any_time_zone(any_url, far_time_zone):
    storage = storage_mod.open_storage(any_url)
    study = _study_with_every_kind_of_row(storage)
    ours = storage.get_all_trials(study._study_id)
    theirs = RDBStorage._get_trials(storage, study._study_id, None, set(), -1)
    assert [(t.datetime_start, t.datetime_complete) for t in ours] == [
        (t.datetime_start, t.datetime_complete) for t in theirs]
    assert storage.get_trial(ours[0]._trial_id).datetime_start == RDBStorage.get_trial(storage, ours[0]._trial_id).datetime_start


def test_a_studys_user_attributes_load_in_one_query(any_url, statements_of):
    storage = storage_mod.open_storage(any_url)
    study = optuna.create_study(study_name=postgres.new_study_name(), storage=storage)
    assert storage.get_study_user_attrs(study._study_id) == {}
    study.set_user_attr("config", {"lr_min": 1e-5, "model": "test_resnet"})
    study.set_user_attr("none", None)
    seen = statements_of(storage)
    assert storage.get_study_user_attrs(study._study_id) == {"config": {"lr_min": 1e-5, "model": "test_resnet"}, "none": None}
    assert len(seen) == 1, seen
    with pytest.raises(KeyError):
        storage.get_study_user_attrs(study._study_id + 1000)
