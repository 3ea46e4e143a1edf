import optuna
import pytest
import torch

from lrtune.config import Config
from lrtune.errors import LRTuneError
from lrtune.tuner import trial as trial_mod
from lrtune.tuner.trial import Objective, StopFlag, TrialFailed
from lrtune.training import checkpoints
from lrtune.training import run as run_mod
from lrtune.training.loop import Interrupted

PARAMS = {"lr": 3e-3, "scheduler": "cosine", "loss": "focal", "focal_gamma": 2.0, "accum": 2}


def make(tmp_path, **overrides):
    cfg = Config(epochs=3, studies_dir=str(tmp_path), **overrides)
    return Objective(cfg, study_dir=tmp_path / "study")


def test_objective_runs_under_a_fixed_trial_and_records_json_safe_results(tmp_path):
    objective = make(tmp_path)
    trial = optuna.trial.FixedTrial(PARAMS)
    value = objective(trial)
    attrs = trial.user_attrs
    assert 0.0 <= value <= 1.0
    assert value == pytest.approx(max(attrs["curves"]["val_f1"]))
    assert attrs["curves"]["epoch"] == [1, 2, 3]
    assert len(attrs["curves"]["lr"]) == 3 and len(attrs["lr_steps"]) > 3
    best = attrs["best"]
    assert best["macro_f1"] == value
    assert len(best["confusion"]) == 10 and len(best["f1"]) == 10
    # The matrix is the best epoch's, computed when the trial ends.
    assert sum(map(sum, best["confusion"])) == len(objective.data.val_idx)
    trace = sum(best["confusion"][i][i] for i in range(10))
    assert trace / len(objective.data.val_idx) == pytest.approx(best["accuracy"])
    assert attrs["effective_batch"] == 64
    import json

    json.dumps(attrs)  # everything stored on a trial is JSON-safe
    assert (tmp_path / "study" / "trials" / "0" / "best.pt").is_file()
    assert not (tmp_path / "study" / "trials" / "0" / "last.pt").exists()
    saved = checkpoints.load(tmp_path / "study" / "trials" / "0" / "best.pt")
    assert saved["model"] == "test_resnet" and saved["classes"] == [str(i) for i in range(10)]


@pytest.mark.parametrize(
    "num_workers, share, augment",
    [
        (0, trial_mod.CHECKPOINT_SHARE, "cpu"),
        (0, trial_mod.CHECKPOINT_SHARE, "device"),
        (2, trial_mod.CHECKPOINT_SHARE, "cpu"),
        (0, 1e-9, "cpu"),
        (0, 1e-9, "device"),
    ],
    ids=["in-process", "device-path", "worker-processes", "checkpoint-after-epoch-1-only",
         "device-path-checkpoint-after-epoch-1-only"],
)
def test_a_retried_trial_continues_from_its_checkpoint_and_ends_identical(
    tmp_path, monkeypatch, num_workers, share, augment
):
    monkeypatch.setattr(trial_mod, "CHECKPOINT_SHARE", share)
    full = make(tmp_path / "a", num_workers=num_workers, augment=augment)
    reference = optuna.trial.FixedTrial(PARAMS, number=0)
    expected = full(reference)

    stop = StopFlag()
    cfg = Config(epochs=3, studies_dir=str(tmp_path / "b"), num_workers=num_workers, augment=augment)
    interrupted = Objective(cfg, study_dir=tmp_path / "b" / "s", stop=stop)

    class StopInEpoch3:
        fired = False

        def epoch(self, trial, epoch, epochs, f1):
            if epoch == 2 and not self.fired:  # once: a retry from epoch 1 passes epoch 2 again
                self.fired = True
                stop.signum = 2  # arrives during epoch 3

    interrupted.progress = StopInEpoch3()
    first = optuna.trial.FixedTrial(PARAMS, number=0)
    with pytest.raises(Interrupted):
        interrupted(first)
    assert first.user_attrs["reason"] == "interrupted"
    # The first epoch always writes a checkpoint; the second does unless it was
    # much shorter than writing one.
    on_disk = checkpoints.load(tmp_path / "b" / "s" / "trials" / "0" / "last.pt")["run"]["epoch"]
    assert on_disk in (1, 2)
    if share < 1e-6:
        assert on_disk == 1 and first.user_attrs["epochs_without_checkpoint"] == 1

    stop.signum = None
    retry = optuna.trial.FixedTrial(PARAMS, number=1)
    retry.set_user_attr("retry_of", 0)
    retry.set_user_attr("seed", first.user_attrs["seed"])
    assert interrupted(retry) == expected
    assert retry.user_attrs["resumed_at_epoch"] == on_disk + 1
    assert retry.user_attrs["curves"] == reference.user_attrs["curves"]
    assert not (tmp_path / "b" / "s" / "trials" / "0").exists()


def test_divergence_prunes_with_the_reason(tmp_path, monkeypatch):
    objective = make(tmp_path)
    real = run_mod.create_loss

    def nan_loss(*args, **kwargs):
        loss = real(*args, **kwargs)
        return lambda logits, y: loss(logits, y) * float("nan")

    monkeypatch.setattr(run_mod, "create_loss", nan_loss)
    trial = optuna.trial.FixedTrial(PARAMS)
    with pytest.raises(optuna.TrialPruned, match="diverged"):
        objective(trial)
    assert trial.user_attrs["reason"].startswith("diverged: non-finite train loss")
    assert not (tmp_path / "study" / "trials" / "0").exists()


def test_out_of_memory_fails_the_trial_with_its_reason_then_stops_a_doomed_study(tmp_path, monkeypatch):
    objective = make(tmp_path)

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(run_mod, "train_together", oom)
    for number in range(2):
        trial = optuna.trial.FixedTrial(PARAMS, number=number)
        with pytest.raises(TrialFailed, match="out of memory"):
            objective(trial)
        assert trial.user_attrs["reason"] == "out of memory: CUDA out of memory. Tried to allocate 2.00 GiB"
    with pytest.raises(LRTuneError, match="3 trials in a row failed"):
        objective(optuna.trial.FixedTrial(PARAMS, number=2))


@pytest.mark.parametrize(
    ("keep", "study_best", "written"), [("best", 1.0, False), ("best", 0.0, True), ("all", 1.0, True)]
)
def test_keep_best_writes_no_weights_for_a_trial_that_cannot_beat_the_study(tmp_path, keep, study_best, written):
    objective = make(tmp_path, keep=keep)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    study.add_trial(optuna.trial.create_trial(value=study_best))
    study.enqueue_trial(PARAMS)
    study.optimize(objective, n_trials=1)
    assert 0.0 < study.trials[1].value
    assert (tmp_path / "study" / "trials" / "1" / "best.pt").is_file() == written
    assert not (tmp_path / "study" / "trials" / "1" / "last.pt").exists()


def test_keep_none_writes_no_weights(tmp_path):
    objective = make(tmp_path, keep="none")
    objective(optuna.trial.FixedTrial(PARAMS))
    assert not (tmp_path / "study" / "trials" / "0").exists()


def test_errors_that_would_fail_every_trial_stop_before_the_first(tmp_path):
    with pytest.raises(LRTuneError, match="unknown model"):
        make(tmp_path, model="no_such_model")
    with pytest.raises(LRTuneError, match="data .*missing.* not found"):
        make(tmp_path, data=str(tmp_path / "missing"))


def test_a_trial_on_the_device_augmentation_path_trains_and_repeats_exactly(tmp_path):
    values = []
    for name in ("a", "b"):
        cfg = Config(epochs=2, studies_dir=str(tmp_path / name), augment="device", crop=0.5, balance="oversample")
        objective = Objective(cfg, study_dir=tmp_path / name / "study")
        trial = optuna.trial.FixedTrial(PARAMS, number=0)
        values.append((objective(trial), trial.user_attrs["curves"]))
    assert 0.0 <= values[0][0] <= 1.0 and len(values[0][1]["epoch"]) == 2
    assert values[0] == values[1]


class Messages:
    def __init__(self):
        self.lines = []

    def message(self, text):
        self.lines.append(text)

    def epoch(self, *args):
        pass


@pytest.mark.parametrize("room_after_polls", [2, None], ids=["room-comes", "gives-up"])
def test_a_trial_waits_for_room_on_a_shared_gpu_and_starts_anyway_when_none_comes(tmp_path, monkeypatch,
                                                                                     room_after_polls):
    """The device's memory readings are faked: the last trial's peak, then what is free at each poll."""
    from lrtune.training import memory

    objective = make(tmp_path, augment="cpu")  # auto would read the free memory too
    objective.progress = Messages()
    peak = 3 * 2**30
    polls = []

    def free_bytes(device):
        polls.append(device)
        return 2 * peak if room_after_polls is not None and len(polls) > room_after_polls else peak

    monkeypatch.setattr(memory, "peak_bytes", lambda device: peak)
    monkeypatch.setattr(memory, "free_bytes", free_bytes)
    monkeypatch.setattr(memory, "MEMORY_WAIT_S", 0.05)
    monkeypatch.setattr(memory, "MEMORY_POLL_S", 0.01)
    objective(optuna.trial.FixedTrial(PARAMS, number=0))
    assert polls == [] and objective.peak == peak  # nothing to wait for before the first trial
    second = optuna.trial.FixedTrial(PARAMS, number=1)
    assert 0 <= objective(second) <= 1
    if room_after_polls is not None:
        assert len(polls) == room_after_polls + 1 and objective.progress.lines == []
    else:
        assert len(polls) >= 5
        [line] = objective.progress.lines
        assert line == "waited 0.05 s for 3.60 GiB of free memory on cpu (3.00 GiB free); starting the trial anyway"


def test_a_trials_attributes_are_written_together_and_read_back_by_the_trial(tmp_path):
    from sqlalchemy import event

    from lrtune import storage as storage_mod

    storage = storage_mod.open_storage(storage_mod.default_storage_url(tmp_path))
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    statements = []
    event.listen(storage.engine, "before_cursor_execute", lambda conn, cursor, sql, *rest: statements.append(sql))
    trial_mod.set_user_attrs(trial, {"seed": 7, "host": "a", "pid": 1})
    assert len(statements) == 1
    assert trial.user_attrs == {"seed": 7, "host": "a", "pid": 1}
    assert study.get_trials()[0].user_attrs == {"seed": 7, "host": "a", "pid": 1}
    # Any other trial (a fixed one, or on another storage) gets them one by one.
    fixed = optuna.trial.FixedTrial({})
    trial_mod.set_user_attrs(fixed, {"seed": 7})
    assert fixed.user_attrs == {"seed": 7}


class _Watch(optuna.pruners.BasePruner):
    """Records the values each decision saw; prunes from epoch ``at`` on."""

    def __init__(self, at: int | None = None) -> None:
        self.at, self.seen = at, []

    def prune(self, study, trial) -> bool:
        self.seen.append(dict(trial.intermediate_values))
        return self.at is not None and max(trial.intermediate_values) >= self.at


def _watched_study(tmp_path, monkeypatch, pruner):
    """A study on lrtune's storage, and the values of each intermediate-value write its trials make."""
    from lrtune import storage as storage_mod
    from lrtune.storage import backend

    writes, original = [], backend.ResilientStorage.set_trial_intermediate_values
    monkeypatch.setattr(backend.ResilientStorage, "set_trial_intermediate_values",
                        lambda self, trial_id, values: writes.append(sorted(values)) or original(self, trial_id, values))
    storage = storage_mod.open_storage(storage_mod.default_storage_url(tmp_path))
    return optuna.create_study(study_name="s", storage=storage, direction="maximize", pruner=pruner), writes


@pytest.mark.parametrize("every, writes", [(0.0, [[1], [2], [3]]), (1e9, [[1], [2, 3]])], ids=["each-epoch", "together"])
def test_the_pruner_sees_each_value_at_once_and_the_study_gets_all_of_them_by_the_end(tmp_path, monkeypatch, every, writes):
    monkeypatch.setattr(trial_mod, "REPORT_EVERY", every)
    pruner = _Watch()
    study, made = _watched_study(tmp_path, monkeypatch, pruner)
    study.optimize(make(tmp_path), n_trials=1)
    assert [sorted(values) for values in pruner.seen] == [[1], [1, 2], [1, 2, 3]]
    assert made == writes
    (trial,) = study.get_trials()
    assert [trial.intermediate_values[epoch] for epoch in (1, 2, 3)] == trial.user_attrs["curves"]["val_f1"]


def test_a_pruned_trial_has_every_value_written_when_optuna_records_it(tmp_path, monkeypatch):
    monkeypatch.setattr(trial_mod, "REPORT_EVERY", 1e9)
    study, made = _watched_study(tmp_path, monkeypatch, _Watch(at=2))
    study.optimize(make(tmp_path), n_trials=1)
    (trial,) = study.get_trials()
    assert trial.state == optuna.trial.TrialState.PRUNED and made == [[1], [2]]
    assert sorted(trial.intermediate_values) == [1, 2] and trial.value == trial.intermediate_values[2]


def test_a_trials_parameters_are_written_in_one_statement(tmp_path, monkeypatch):
    from sqlalchemy import event

    study, _ = _watched_study(tmp_path, monkeypatch, _Watch())
    study.enqueue_trial(PARAMS)  # all five parameters, as a baseline or a retry has them
    inserts = []
    event.listen(study._storage._backend.engine, "before_cursor_execute",
                 lambda conn, cursor, sql, *rest: inserts.append(sql) if "INSERT INTO trial_params" in sql else None)
    study.optimize(make(tmp_path), n_trials=1)
    assert len(inserts) == 1, inserts
    assert study.get_trials()[0].params == PARAMS


@pytest.mark.parametrize("augment", ["cpu", "device"])
def test_another_models_checkpoint_is_set_aside_and_the_retry_trains_as_a_fresh_trial(tmp_path, augment):
    reference = optuna.trial.FixedTrial(PARAMS, number=1)
    reference.set_user_attr("seed", 5)
    expected = make(tmp_path / "a", augment=augment)(reference)

    objective = make(tmp_path / "b", augment=augment)
    other = torch.nn.Linear(3, 2)  # a checkpoint of another model, where trial 0's last.pt belongs
    state = {"model": checkpoints.pack(other.state_dict()), "optimizer": checkpoints.pack({}), "schedule": {},
             "scaler": {}, "run": {}}
    checkpoints.save(checkpoints.trial_dir(objective.study_dir, 0) / checkpoints.LAST, state)
    said = []
    objective.progress = type("Sink", (), {"message": staticmethod(said.append),
                                           "epoch": staticmethod(lambda *a: None)})()
    retry = optuna.trial.FixedTrial(PARAMS, number=1)
    retry.set_user_attr("retry_of", 0)
    retry.set_user_attr("seed", 5)
    assert objective(retry) == expected  # the same trial, from epoch 0
    (aside,) = (objective.study_dir / checkpoints.UNREADABLE).iterdir()
    assert retry.user_attrs["checkpoint_set_aside"] == str(aside)
    assert "resumed_at_epoch" not in retry.user_attrs
    (line,) = said
    assert line.startswith("trial 1: its checkpoint cannot be read (") and line.endswith("starts again from epoch 0")
