import optuna
import pytest

from lrtune.config import Config
from lrtune.errors import ConfigError
from lrtune.tuner import tracking


def test_targets_default_to_the_environment_or_the_studies_folder(tmp_path, monkeypatch):
    cfg = Config(studies_dir=str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.parse(["mlflow", "tensorboard"], cfg) == [
        ("mlflow", f"sqlite:///{tmp_path.resolve()}/mlflow.db"), ("tensorboard", str(tmp_path / "tensorboard"))]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracker:5000")
    assert tracking.parse(["mlflow", "tensorboard=/runs"], cfg) == [("mlflow", "http://tracker:5000"),
                                                                      ("tensorboard", "/runs")]
    with pytest.raises(ConfigError, match=r"unknown tracker 'wandb' in --track wandb=x \(valid: mlflow, tensorboard\)"):
        tracking.parse(["wandb=x"], cfg)


def test_a_trials_final_state_in_words():
    study = optuna.create_study(direction="maximize")
    for state, values in ((optuna.trial.TrialState.COMPLETE, {1: 0.5}), (optuna.trial.TrialState.PRUNED, {1: 0.1, 2: 0.2})):
        trial = optuna.trial.create_trial(state=state, value=0.5 if state.name == "COMPLETE" else None,
                                          intermediate_values=values)
        study.add_trial(trial)
    failed = optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs={"reason": "MemoryError"})
    study.add_trial(failed)
    assert [tracking.state_text(t) for t in study.trials] == ["complete", "pruned at epoch 2", "failed: MemoryError"]


def test_a_tracker_that_fails_is_said_once_and_its_trials_are_named(tmp_path):
    said = []
    study = optuna.create_study(study_name="s")

    class Broken:
        kind = "mlflow"

        def __init__(self, *args):
            pass

        def start(self, *args):
            raise ConnectionError("connection refused")

        epoch = end = start

    tracker = tracking.Tracking([], study, Config(studies_dir=str(tmp_path)), {}, said.append)
    tracker.trackers, tracker.unlogged, tracker.specs = [Broken()], {"mlflow": set()}, {"mlflow": "mlflow=http://x"}
    for number in (0, 1):
        trial = study.ask()
        tracker.start(trial)
        tracker.epoch(trial.number, 1, 0.5)
    assert len(said) == 1 and said[0].startswith("warning: tracking to mlflow failed (connection refused)")
    (line,) = tracker.summary()
    assert line.startswith("mlflow: trial(s) 0, 1 were not logged (connection refused)")
    assert line.endswith("`lrtune track --study s --to mlflow=http://x` logs them")
