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
    cfg = Config(augment=augment, batch_size=16, image_size=8, epochs=2)
    fp16 = AmpPolicy(torch.device("cpu"), amp_dtype=torch.float16)  # emulated on the CPU, slowly: a few small batches
    digits = dataclasses.replace(digits, train_idx=digits.train_idx[:96], val_idx=digits.val_idx[:64])
    full = epochs_of(cfg, digits, fp16, 2)
    assert augment_path(cfg, digits, fp16.device) == augment and full.scaler is not None
    first = epochs_of(cfg, digits, fp16, 1)
    saved = first.checkpoint(checkpoints.pack(first.model.state_dict()))
    assert saved["scaler"]["scale"] == first.scaler.get_scale()
    resumed = epochs_of(cfg, digits, fp16, 2, restore_from=saved)
    assert resumed.state.curves == full.state.curves
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


@pytest.mark.parametrize("augment", ["cpu", "device"])
def test_a_bf16_run_trains_under_autocast_without_a_scaler_on_both_paths(tmp_path, augment):
    """bf16 kernels on the CPU are not bit-for-bit repeatable, so this checks the path, not exact replay.

    32-pixel images: at 8 or 16, a stride-2 3x3 conv of test_resnet sees a 1x1 map, and oneDNN's bf16
    backward-weights kernels (AVX-512, AMX) write garbage, NaN included, into the taps that see only padding.
    """
    cfg = Config(studies_dir=str(tmp_path), augment=augment, batch_size=64, image_size=32, epochs=2)
    bf16 = AmpPolicy(torch.device("cpu"), amp_dtype=torch.bfloat16)
    data = load_training_data(cfg)
    data = dataclasses.replace(data, train_idx=data.train_idx[:192], val_idx=data.val_idx[:64])  # a few batches
    run = TrainingRun(cfg, PARAMS, data=data, amp=bf16, seed=5)
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


class RecordingGuard:
    def __init__(self) -> None:
        self.seen: list[tuple[int, float]] = []

    def observe(self, images: int, seconds: float) -> None:
        self.seen.append((images, seconds))


@pytest.mark.parametrize("augment", ["cpu", "device"])
def test_the_thread_guard_hears_each_epochs_training_images_and_seconds_on_both_paths(digits, augment):
    cfg = Config(augment=augment, batch_size=64, image_size=8, epochs=2)
    guard = RecordingGuard()
    run = TrainingRun(cfg, PARAMS, data=digits, amp=AmpPolicy(torch.device("cpu")), seed=5, threads=guard)
    for epoch in (1, 2):
        run.train_epoch(epoch)
    per_epoch = len(run.loader) * 64  # drop_last: whole batches only
    assert [images for images, _ in guard.seen] == [per_epoch, per_epoch]
    assert all(seconds > 0 for _, seconds in guard.seen)
    assert sum(seconds for _, seconds in guard.seen) == pytest.approx(run.state.train_seconds)


@pytest.mark.parametrize("augment, loader_workers", [("cpu", 2), ("device", 0)])
def test_auto_threads_leave_a_core_to_each_loader_process_on_the_cpu_path_only(digits, augment, loader_workers,
                                                                               monkeypatch):
    from lrtune.training import run as run_mod, threads

    monkeypatch.setattr(threads, "available_cores", lambda: (12, "12 cores available"))
    offered = []

    def probe(run, counts, *, apply):
        offered.append(counts)
        assert run.cfg.num_workers == 0  # the probe measures steps, not loader processes
        return {n: 100.0 * n for n in counts}

    monkeypatch.setattr(run_mod, "probe_threads", probe)
    said = []
    cfg = Config(augment=augment, batch_size=64, image_size=8, num_workers=2)
    with threads.kept_threads():
        guard = run_mod.thread_guard(cfg, PARAMS, data=digits, amp=AmpPolicy(torch.device("cpu")), workers=2,
                                     say=said.append)
        assert torch.get_num_threads() == guard.threads
    budget = 12 // 2 - loader_workers
    assert offered == [threads.candidates(budget)] and guard.threads == budget and not guard.fixed
    assert said[0].startswith(f"threads: {budget} (12 cores available, shared by 2 local workers")
    fixed = run_mod.thread_guard(dataclasses.replace(cfg, threads=3), PARAMS, data=digits,
                                 amp=AmpPolicy(torch.device("cpu")))
    assert fixed.threads == 3 and fixed.fixed and len(offered) == 1


# --- a fine-tune: the head's and the body's LRs, and the body joining after the head's epochs ---------------


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    from lrtune.training.models import create_model

    path = tmp_path_factory.mktemp("w") / "test_resnet.pth"
    torch.save(create_model("test_resnet", num_classes=1000).state_dict(), path)
    return path


def _steps(run):
    """Each optimizer step as (global step, each group's LR, whether any body parameter had a gradient)."""
    seen = []
    head = {id(p) for p in run.model.get_classifier().parameters()}

    def record(optimizer, args, kwargs):
        body_grads = any(p.grad is not None for p in run.model.parameters() if id(p) not in head)
        seen.append((len(seen), [group["lr"] for group in optimizer.param_groups], body_grads))

    run.optimizer.register_step_pre_hook(record)
    return seen


@pytest.mark.parametrize("augment", ["cpu", "device"])
def test_a_fine_tune_steps_each_group_at_its_searched_lr_and_the_body_joins_after_the_head_epochs(
        digits, pretrained, augment):
    cfg = Config(augment=augment, batch_size=64, image_size=8, epochs=3, pretrained=True, weights=str(pretrained))
    params = Hyperparams(lr=1e-2, scheduler="cosine", loss="ce", accum=1, body_ratio=0.1, head_epochs=1,
                         warmup_epochs=0.5)
    run = TrainingRun(cfg, params, data=digits, amp=AmpPolicy(torch.device("cpu")), seed=1)
    body_group, head_group = run.optimizer.param_groups
    assert head_group["lr_scale"] == 1.0 and body_group["lr_scale"] == 0.1
    assert {id(p) for p in head_group["params"]} == {id(p) for p in run.model.get_classifier().parameters()}
    before = {k: v.clone() for k, v in run.model.state_dict().items() if not k.startswith("fc.")}
    seen = _steps(run)
    run.train_epoch(1)
    per_epoch = len(seen)
    ramp = round(0.5 * per_epoch)
    for step, (body_lr, head_lr), body_grads in seen:  # the head alone, at the schedule's LR with its warmup
        assert head_lr == pytest.approx(run.schedule.lr(step)) and body_lr == 0.0 and not body_grads
    after = run.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items() if "running" not in k and "num_batches" not in k)
    run.train_epoch(2)
    joined = seen[per_epoch:]
    assert all(body_grads for _, _, body_grads in joined)
    for step, (body_lr, head_lr), _ in joined:  # the body at 0.1 of the head's LR, ramped up over the warmup
        ramp_share = min(1.0, (step - per_epoch + 1) / ramp)
        assert head_lr == pytest.approx(run.schedule.lr(step))
        assert body_lr == pytest.approx(head_lr * 0.1 * ramp_share)
    head_param = head_group["params"][0]
    body_param = body_group["params"][0]
    assert int(run.optimizer.state[head_param]["step"]) == 2 * per_epoch  # the head's state carried on
    assert int(run.optimizer.state[body_param]["step"]) == per_epoch  # the body's began when it joined


@pytest.mark.parametrize("augment", ["cpu", "device"])
def test_a_layer_decay_fine_tune_holds_each_layer_group_at_its_share_from_the_first_step(digits, pretrained, augment):
    cfg = Config(augment=augment, batch_size=64, image_size=8, epochs=2, pretrained=True, weights=str(pretrained))
    params = Hyperparams(lr=1e-2, scheduler="cosine", loss="ce", accum=1, layer_decay=0.5)
    run = TrainingRun(cfg, params, data=digits, amp=AmpPolicy(torch.device("cpu")), seed=1)
    scales = [group["lr_scale"] for group in run.optimizer.param_groups]
    assert scales == run.lr_scales and scales[-1] == 1.0
    assert scales == sorted(scales) and scales[0] == pytest.approx(0.5 ** (len(set(scales)) - 1))
    seen = _steps(run)
    run.train_epoch(1)
    step, lrs, body_grads = seen[0]
    assert body_grads and lrs == pytest.approx([run.schedule.lr(0) * scale for scale in scales])
