import optuna
import pytest

from lrtune.config import Config
from lrtune.errors import NoSpaceError, StorageError
from lrtune.tuner import faults


def _trial(attrs):
    study = optuna.create_study()
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    return study, trial


def test_a_retry_carries_what_the_trial_is_and_counts_the_faults_of_the_machine():
    _, trial = _trial({"baseline": True, "seed": 7, "host": "h", "faults": 1})
    assert faults.retry_attrs(trial, 7) == {"retry_of": 0, "seed": 7, "baseline": True, "faults": 1}
    assert faults.retry_attrs(trial, 7, fault=True)["faults"] == 2


def test_a_trial_is_queued_again_until_max_faults_then_counts_as_failed():
    study, trial = _trial({"faults": faults.MAX_FAULTS - 2})
    assert faults.retry(study, trial, 3, fault=True)
    (queued,) = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert queued.user_attrs["faults"] == faults.MAX_FAULTS - 1
    study, trial = _trial({"faults": faults.MAX_FAULTS - 1})
    assert not faults.retry(study, trial, 3, fault=True)
    assert faults.retry(study, trial, 3, fault=False)  # an interrupt is not a fault


def test_failure_reasons_name_the_cause_and_what_follows():
    assert faults.failure(MemoryError(), requeued=False) == "out of memory on the CPU (MemoryError)"
    alloc = RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried")
    assert faults.failure(alloc, requeued=False).startswith("out of memory on the CPU ([enforce fail")
    io = faults.failure(OSError(5, "Input/output error"), requeued=True)
    assert io == (f"OSError: [Errno 5] Input/output error (a fault of the machine: queued to run again, at most "
                  f"{faults.MAX_FAULTS} times)")
    assert faults.failure(OSError(5, "x"), requeued=False).endswith("faults of the machine: counted as failed)")
    assert faults.failure(ValueError("bad"), requeued=False) == "ValueError: bad"


def test_the_fatal_fault_behind_an_error_is_found():
    try:
        try:
            raise NoSpaceError("no space left under x for the study database")
        except NoSpaceError:
            raise AssertionError("Should not reach.")
    except AssertionError as exc:
        assert isinstance(faults.fatal_cause(exc), NoSpaceError)
    assert faults.fatal_cause(ValueError("x")) is None
    error = StorageError("gone")
    assert faults.fatal_cause(error) is error


@pytest.mark.parametrize("keep, workers, fuse, kept", [("all", 1, 1, 50), ("best", 1, 1, 2), ("none", 2, 3, 0)])
def test_the_disk_a_search_needs_counts_checkpoints_at_once_and_kept_weights(keep, workers, fuse, kept):
    cfg = Config(trials=50, keep=keep, workers=workers, fuse=fuse)
    need, how = faults.disk_needed(cfg, 1_000_000)
    running = workers * fuse
    assert need == 3_000_000 * running + 1_000_000 * (kept + running)
    assert f"{running} trial" in how and f"{kept} kept weights" in how and f"--keep {keep}" in how


def test_too_little_free_space_is_a_warning_before_the_search(tmp_path, monkeypatch):
    said = []
    monkeypatch.setattr(faults, "free_bytes", lambda folder: 2_000_000)
    faults.check_free_space(Config(trials=12, keep="all"), tmp_path, 1_500_000, said.append)
    (line,) = said
    assert line.startswith(f"warning: 2.0 MB free under {tmp_path}, and this search may write about 24 MB")
    monkeypatch.setattr(faults, "free_bytes", lambda folder: 10**12)
    faults.check_free_space(Config(trials=12, keep="all"), tmp_path, 1_500_000, said.append)
    assert len(said) == 1
