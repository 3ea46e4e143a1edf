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


def test_workers_auto_on_cuda_probes_the_baselines_step_and_sizes_the_count_by_it(tmp_path, monkeypatch):
    """The CUDA branch of --workers auto on the CPU: the device reads CUDA, its memory readings are faked, and the
    probe really trains the baseline's step through the same code a GPU runs."""
    import dataclasses
    from types import SimpleNamespace

    import torch

    from lrtune.config import Config
    from lrtune.training import memory, probe
    from lrtune.training.loop import AmpPolicy
    from lrtune.training.run import Hyperparams, load_training_data
    from lrtune.tuner import driver
    from lrtune.tuner.space import baseline_params
    from lrtune.tuner.workers import auto_workers

    gib = 2**30
    cfg = dataclasses.replace(Config(studies_dir=str(tmp_path), image_size=8, batch_size=32), workers=0)
    objective = SimpleNamespace(device=torch.device("cuda"), data=load_training_data(cfg),
                                amp=AmpPolicy(torch.device("cpu")))
    monkeypatch.setattr(memory, "free_bytes", lambda device: 100 * gib)
    monkeypatch.setattr(memory, "peak_bytes", lambda device: 30 * gib)
    monkeypatch.setattr(probe, "_sync", lambda device: None)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    probed = []
    real_probe = probe.probe_step

    def recording_probe(run, **kwargs):
        probed.append((run.params, run.seed, real_probe(run, **kwargs)))
        return probed[-1][2]

    monkeypatch.setattr(probe, "probe_step", recording_probe)
    said = []
    resolved = driver.resolve_auto_workers(cfg, objective, said.append)
    [(params, seed, (step_s, peak))] = probed
    assert params == Hyperparams.from_dict(baseline_params(cfg)) and seed == cfg.seed
    assert step_s > 0 and peak == 30 * gib
    workers, reason = auto_workers(device_type="cuda", free_bytes=100 * gib, peak_bytes=peak, step_s=step_s)
    assert resolved.workers == workers >= 1
    assert said == [f"--workers auto: {workers} ({reason})"]
    assert dataclasses.replace(resolved, workers=0) == cfg  # nothing else changes
