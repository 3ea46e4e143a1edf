import json

import optuna
import pytest
from optuna.trial import TrialState

import lrtune
from lrtune.config import Config
from lrtune.tuner import lr_range
from lrtune.tuner.lr_range import WINDOW, lr_bounds, narrowed_bounds
from lrtune.tuner.space import suggest




@pytest.fixture
def short_sweep(monkeypatch):
    monkeypatch.setattr(lr_range, "STEPS", 20)


def small(tmp_path, **overrides):
    values = {"trials": 3, "epochs": 1, "batch_size": 64, "studies_dir": str(tmp_path), "study": "s", **overrides}
    return Config(**values)


def test_bounds_are_a_window_around_the_suggestion_holding_the_baseline():
    cfg = Config(lr_min=1e-5, lr_max=1.0)
    assert narrowed_bounds(cfg, 1e-2, 1e-3) == pytest.approx((1e-2 / WINDOW, 1e-2 * WINDOW))
    assert narrowed_bounds(cfg, 1e-1, 1e-3) == pytest.approx((1e-3, 1.0))  # cut at lr_max, widened to the baseline
    assert narrowed_bounds(cfg, None, 1e-3) == (1e-5, 1.0)
    assert narrowed_bounds(Config(lr_min=1e-5, lr_max=1e-4), 1.0, 1e-4) == (1e-5, 1e-4)  # outside: unchanged
    assert narrowed_bounds(Config(lr_min=1e-3, lr_max=1e-3), 1e-2, 1e-3) == (1e-3, 1e-3)


def test_without_a_stored_range_the_space_uses_the_configured_bounds():
    cfg = Config(lr_range="auto", lr_min=1e-4, lr_max=1e-2)
    assert lr_bounds(optuna.trial.FixedTrial({"lr": 1e-3}), cfg) == (1e-4, 1e-2)
    study = optuna.create_study()
    study.set_user_attr("lr_range", {"bounds": [1e-3, 5e-3]})
    trial = study.ask()
    assert lr_bounds(trial, cfg) == (1e-3, 5e-3)
    assert lr_bounds(trial, Config(lr_range="off", lr_min=1e-4, lr_max=1e-2)) == (1e-4, 1e-2)
    assert 1e-3 <= suggest(trial, cfg).lr <= 5e-3


def test_auto_runs_the_test_once_stores_it_narrows_the_range_and_queues_the_suggestion(tmp_path, short_sweep,
                                                                                     monkeypatch):
    cfg = small(tmp_path, lr_range="auto")
    study = lrtune.search(config=cfg)

    record = study.user_attrs["lr_range"]
    assert json.loads(json.dumps(record)) == record
    assert len(record["lrs"]) == len(record["losses"]) == len(record["smoothed"]) > 0
    assert record["lrs"][0] == pytest.approx(cfg.lr_min / 100)
    assert record["setup"] == {"loss": "ce", "accum": 1, "batch_size": 64}
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    assert trials[0].user_attrs.get("baseline") is True
    assert trials[0].params == {"lr": 1e-3, "scheduler": "cosine", "loss": "ce", "accum": 1}
    low, high = record["bounds"]
    if record["suggestion"] is not None:
        assert trials[1].user_attrs.get("lr_range") is True
        assert trials[1].params == {**trials[0].params, "lr": record["suggestion"]}
        assert low <= record["suggestion"] <= high
    assert all(low <= t.params["lr"] <= high for t in trials[1:])

    def fail(*args, **kwargs):
        raise AssertionError("the range test ran again on resume")

    monkeypatch.setattr(lr_range, "range_test", fail)
    again = lrtune.search(config=small(tmp_path, lr_range="auto", trials=4))
    assert again.user_attrs["lr_range"] == record
    assert sum(t.state == TrialState.COMPLETE for t in again.get_trials()) + sum(
        t.state == TrialState.PRUNED for t in again.get_trials()
    ) == 4
    assert sum(bool(t.user_attrs.get("lr_range")) for t in again.get_trials()) <= 1


def test_off_runs_no_range_test(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the range test ran")

    monkeypatch.setattr(lr_range, "range_test", fail)
    study = lrtune.search(config=small(tmp_path, trials=1, lr_range="off"))
    assert "lr_range" not in study.user_attrs
    assert Config().lr_range == "auto"  # the default runs it


def test_a_search_after_lr_find_has_exactly_the_trials_of_one_without(tmp_path):
    def trials_of(study):
        return [(t.number, t.state, t.params, t.value, t.intermediate_values) for t in study.get_trials()]

    without = lrtune.search(config=small(tmp_path / "without", threads=1))
    result = lrtune.lr_find(config=small(tmp_path / "with", threads=1), steps=20)
    assert len(result.lrs) > 0
    after = lrtune.search(config=small(tmp_path / "with", threads=1))
    assert trials_of(after) == trials_of(without)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start": 1.0, "end": 0.1}, "the LR range must increase"),
        ({"steps": 3}, "too few for a range test"),
        ({"loss": "nope"}, "unknown loss 'nope'"),
    ],
)
def test_lr_find_refuses_bad_input_with_one_line(tmp_path, kwargs, message):
    with pytest.raises(lrtune.ConfigError, match=message) as info:
        lrtune.lr_find(config=small(tmp_path), **kwargs)
    assert "\n" not in str(info.value)


def test_a_study_stored_before_the_lr_range_option_ran_without_the_test_and_joins_as_such():
    from lrtune import config as config_mod
    from lrtune.tuner import driver

    study = optuna.create_study()
    stored = config_mod.to_dict(Config())
    del stored["lr_range"]
    study.set_user_attr("config", stored)
    assert driver.config_changes(study, Config(lr_range="off")) == []
    with pytest.raises(lrtune.StudyError, match="lr_range: 'off' -> 'auto'"):
        driver.config_changes(study, Config())
    # Run again with no options (a worker joining, or the same command resuming), it keeps running without the test.
    joined = config_mod.adopt(stored, Config(), given={"storage", "study"})
    assert joined.lr_range == "off" and driver.config_changes(study, joined) == []


def test_workers_starting_a_new_study_together_queue_the_suggestion_once(monkeypatch):
    class Result:
        def to_dict(self):
            return {"suggestion": 0.01, "rule": "steepest"}

    storage = optuna.storages.InMemoryStorage()
    first = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    first.set_user_attr("baseline", {"lr": 1e-3, "scheduler": "cosine", "loss": "ce", "accum": 1})
    second = optuna.load_study(study_name="s", storage=storage)
    cfg = Config()
    runs = []

    def range_test(*args, **kwargs):
        runs.append(1)
        if len(runs) == 1:  # the other worker finishes its test before this one stores
            lr_range.seed_study(second, cfg, data=None, amp=None)
        return Result()

    monkeypatch.setattr(lr_range, "run_range_test", range_test)
    lr_range.seed_study(first, cfg, data=None, amp=None)
    assert len(runs) == 2
    queued = [t for t in first.get_trials() if t.user_attrs.get("lr_range")]
    assert len(queued) == 1 and queued[0].system_attrs["fixed_params"]["lr"] == 0.01
