import dataclasses

import numpy as np
import pytest
import torch

from lrtune.config import Config
from lrtune.training import checkpoints, memory
from lrtune.training.datasets import class_counts
from lrtune.training.loop import AmpPolicy
from lrtune.training.run import Hyperparams, TrainingRun, augment_path, load_training_data, make_loader


def test_a_test_fraction_holds_out_a_stratified_test_split_and_validation_keeps_its_share(tmp_path):
    plain = load_training_data(Config(studies_dir=str(tmp_path), image_size=8))
    data = load_training_data(Config(studies_dir=str(tmp_path), image_size=8, test_fraction=0.2))
    n = len(data.imageset.labels)
    assert len(plain.test_idx) == 0 and "n_test" not in plain.summary()
    parts = [data.train_idx, data.val_idx, data.test_idx]
    assert sorted(np.concatenate(parts).tolist()) == list(range(n))
    assert len(data.val_idx) == len(plain.val_idx) and len(data.test_idx) == round(0.2 * n)
    share = class_counts(data.imageset.labels[data.test_idx], 10) / class_counts(data.imageset.labels, 10)
    assert np.all(share > 0.1) and np.all(share < 0.3)
    summary = data.summary()
    assert summary["n_test"] == len(data.test_idx) and sum(summary["test_counts"]) == len(data.test_idx)
    again = load_training_data(Config(studies_dir=str(tmp_path), image_size=8, test_fraction=0.2))
    np.testing.assert_array_equal(again.test_idx, data.test_idx)


# --- the two augmentation paths, and what differs on CUDA, on the CPU -------------------------

PARAMS = Hyperparams(lr=3e-3, scheduler="cosine", loss="ce", accum=2)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return load_training_data(Config(studies_dir=str(tmp_path_factory.mktemp("s")), image_size=8))


def test_auto_augments_on_the_device_when_the_cache_fits_a_quarter_of_its_free_memory(digits, monkeypatch):
    cache = digits.imageset.images.nbytes
    cuda = torch.device("cuda")
    monkeypatch.setattr(memory, "free_bytes", lambda device: 4 * cache)  # a CUDA device's reading, faked
    assert augment_path(Config(), digits, cuda) == "device"
    monkeypatch.setattr(memory, "free_bytes", lambda device: 4 * cache - 1)
    assert augment_path(Config(), digits, cuda) == "cpu"
    assert augment_path(Config(augment="device"), digits, cuda) == "device"
    monkeypatch.setattr(memory, "free_bytes", lambda device: None)  # the CPU has no such reading
    assert augment_path(Config(), digits, torch.device("cpu")) == "cpu"


def test_the_cpu_path_pins_its_batches_for_a_cuda_device_only(digits):
    assert make_loader(Config(), digits, torch.device("cuda"), "cpu").pin_memory
    assert not make_loader(Config(), digits, torch.device("cpu"), "cpu").pin_memory


def epochs_of(cfg, data, amp, epochs, restore_from=None):
    run = TrainingRun(cfg, PARAMS, data=data, amp=amp, seed=5)
    if restore_from is not None:
        run.restore(restore_from)
    for epoch in range(run.state.epoch + 1, epochs + 1):
        run.train_epoch(epoch)
    return run


@pytest.mark.parametrize("augment", ["cpu", "device"])
def test_an_fp16_run_checkpoints_its_grad_scaler_and_resumes_exactly_on_both_paths(digits, augment):
    cfg = Config(augment=augment, batch_size=64, image_size=8, epochs=3)
    fp16 = AmpPolicy(torch.device("cpu"), amp_dtype=torch.float16)
    full = epochs_of(cfg, digits, fp16, 3)
    assert augment_path(cfg, digits, fp16.device) == augment and full.scaler is not None
    first = epochs_of(cfg, digits, fp16, 1)
    saved = first.checkpoint(checkpoints.pack(first.model.state_dict()))
    assert saved["scaler"]["scale"] == first.scaler.get_scale()
    resumed = epochs_of(cfg, digits, fp16, 3, restore_from=saved)
    assert resumed.state.curves == full.state.curves
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


@pytest.mark.parametrize("augment", ["cpu", "device"])
def test_a_bf16_run_trains_under_autocast_without_a_scaler_on_both_paths(digits, augment):
    """bf16 kernels on the CPU are not bit-for-bit repeatable, so this checks the path, not exact replay."""
    cfg = Config(augment=augment, batch_size=64, image_size=8, epochs=2)
    bf16 = AmpPolicy(torch.device("cpu"), amp_dtype=torch.bfloat16)
    run = TrainingRun(cfg, PARAMS, data=digits, amp=bf16, seed=5)
    seen = []
    run.model.get_classifier().register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    outcomes = [run.train_epoch(epoch) for epoch in (1, 2)]
    assert run.scaler is None and run.checkpoint({})["scaler"] == {}
    assert set(seen) == {torch.bfloat16}
    assert run.state.curves["epoch"] == [1, 2] and all(0 <= o.value <= 1 for o in outcomes)


def test_compile_wraps_the_model_in_the_mode_asked_for_and_shares_its_weights(digits, monkeypatch):
    calls = []

    def fake_compile(model, **kwargs):
        calls.append(kwargs)
        return torch.nn.Sequential(model)  # a wrapper around the same module, as torch.compile's is

    monkeypatch.setattr(torch, "compile", fake_compile)
    cfg = Config(batch_size=64, image_size=8, compile=True, compile_mode="reduce-overhead")
    run = TrainingRun(cfg, PARAMS, data=digits, amp=AmpPolicy(torch.device("cpu")), seed=5)
    assert calls == [{"dynamic": False, "mode": "reduce-overhead"}]
    assert run.net[0] is run.model
    TrainingRun(dataclasses.replace(cfg, compile_mode="default"), PARAMS, data=digits,
                amp=AmpPolicy(torch.device("cpu")), seed=5)
    assert calls[-1] == {"dynamic": False, "mode": None}
