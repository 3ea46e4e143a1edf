import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from lrtune.errors import LRTuneError
from lrtune.training.schedules import create_schedule
from lrtune.training.loop import AmpPolicy, Diverged, Interrupted, evaluate, resolve_device, train_one_epoch
from lrtune.training.metrics import confusion

CPU = AmpPolicy(torch.device("cpu"))


def linear_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))


def batches(n, size, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randint(0, 256, (size, 4, 4, 3), dtype=torch.uint8, generator=g), torch.randint(0, 5, (size,), generator=g))
        for _ in range(n)
    ]


def run(model, loader, accum, lr=0.5, optimizer="sgd"):
    steps = -(-len(loader) // accum)
    opt = torch.optim.SGD(model.parameters(), lr=lr) if optimizer == "sgd" else torch.optim.AdamW(model.parameters(), lr=lr)
    schedule = create_schedule("step", base_lr=lr, steps_per_epoch=steps, epochs=1, step_size=1, step_gamma=0.5)
    return train_one_epoch(model, loader, opt, nn.CrossEntropyLoss(), schedule=schedule, step=0, accum_steps=accum, amp=CPU)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("k", [2, 4])
def test_accumulating_k_micro_batches_equals_one_big_batch(k, optimizer):
    micro = batches(k * 3, 4)
    big = [
        (torch.cat([x for x, _ in micro[i : i + k]]), torch.cat([y for _, y in micro[i : i + k]]))
        for i in range(0, len(micro), k)
    ]
    a, b = linear_model(), linear_model()
    ra = run(a, micro, accum=k, optimizer=optimizer)
    rb = run(b, big, accum=1, optimizer=optimizer)
    assert ra.step == rb.step == 3
    assert len(ra.lrs) == 3
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    assert ra.train_loss == pytest.approx(rb.train_loss, rel=1e-5)


def test_partial_group_at_epoch_end_still_steps():
    model = linear_model()
    before = copy.deepcopy(model.state_dict())
    result = run(model, batches(5, 4), accum=4)
    assert result.step == 2  # one full group of 4 and the remaining 1
    assert not torch.equal(before["1.weight"], model.state_dict()["1.weight"])


def test_lr_follows_the_schedule_per_optimizer_step():
    model = linear_model()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    schedule = create_schedule("cosine", base_lr=0.1, steps_per_epoch=4, epochs=1)
    result = train_one_epoch(
        model, batches(8, 2), opt, nn.CrossEntropyLoss(), schedule=schedule, step=0, accum_steps=2, amp=CPU
    )
    assert result.lrs == pytest.approx([schedule.lr(i) for i in range(4)])
    assert opt.param_groups[0]["lr"] == pytest.approx(schedule.lr(3))


def test_non_finite_loss_raises_diverged():
    class NaNLoss(nn.Module):
        def forward(self, logits, y):
            return logits.sum() * float("nan")

    model = linear_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = create_schedule("step", base_lr=0.1, steps_per_epoch=2, epochs=1)
    with pytest.raises(Diverged):
        train_one_epoch(model, batches(2, 2), opt, NaNLoss(), schedule=schedule, step=0, accum_steps=1, amp=CPU)


def test_stop_request_interrupts_between_micro_batches():
    model = linear_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = create_schedule("step", base_lr=0.1, steps_per_epoch=4, epochs=1)
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Interrupted):
        train_one_epoch(
            model, batches(4, 2), opt, nn.CrossEntropyLoss(), schedule=schedule, step=0, accum_steps=1,
            amp=CPU, should_stop=should_stop,
        )


def test_evaluate_matches_sklearn_metrics_and_restores_nothing():
    model = linear_model()
    data = batches(3, 8)
    ev = evaluate(model, data, n_classes=5, amp=CPU)
    assert not model.training
    from sklearn.metrics import f1_score

    from lrtune.training.loaders import to_model_input

    with torch.no_grad():
        preds = torch.cat([model(to_model_input(x, "cpu")).argmax(1) for x, _ in data]).numpy()
    y = torch.cat([y for _, y in data]).numpy()
    assert ev.macro_f1 == pytest.approx(f1_score(y, preds, average="macro", labels=range(5), zero_division=0))
    assert np.array(confusion(ev.targets, ev.preds, 5)).sum() == len(y)
    assert ev.loss > 0


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(LRTuneError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(LRTuneError, match="CUDA is not available"):
            resolve_device("cuda:0")


# --- what differs on CUDA, through the same code on the CPU ----------------------------------


def test_fp16_with_a_grad_scaler_skips_a_step_whose_gradients_overflow_and_lowers_the_scale():
    model = linear_model()
    fp16 = AmpPolicy(torch.device("cpu"), amp_dtype=torch.float16)
    scaler = fp16.scaler()
    assert scaler is not None and scaler.is_enabled()
    start_scale = scaler.get_scale()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    schedule = create_schedule("step", base_lr=0.5, steps_per_epoch=3, epochs=1)
    before = copy.deepcopy(model.state_dict())
    after_step = []
    calls = []

    def overflow_first_group(grad):
        calls.append(1)
        return grad * math.inf if len(calls) == 1 else grad

    model[1].weight.register_hook(overflow_first_group)
    opt.register_step_post_hook(lambda *args: after_step.append(model[1].weight.detach().clone()))
    data = batches(3, 4)
    result = train_one_epoch(
        model, data, opt, nn.CrossEntropyLoss(), schedule=schedule, step=0, accum_steps=1, amp=fp16, scaler=scaler
    )
    assert result.step == 3 and math.isfinite(result.train_loss)
    assert len(after_step) == 2  # the overflowing step never reached the optimizer
    assert scaler.get_scale() == start_scale * scaler.get_backoff_factor()
    assert not torch.equal(before["1.weight"], model.state_dict()["1.weight"])


def test_bf16_autocast_runs_training_and_evaluation_in_bfloat16_without_a_scaler():
    bf16 = AmpPolicy(torch.device("cpu"), amp_dtype=torch.bfloat16)
    assert bf16.scaler() is None
    model = linear_model()
    dtypes = []
    model[1].register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    schedule = create_schedule("cosine", base_lr=1e-2, steps_per_epoch=2, epochs=1)
    result = train_one_epoch(model, batches(2, 4), opt, nn.CrossEntropyLoss(), schedule=schedule, step=0,
                             accum_steps=1, amp=bf16)
    ev = evaluate(model, batches(2, 4, seed=3), n_classes=5, amp=bf16)
    assert dtypes == [torch.bfloat16] * 4
    assert math.isfinite(result.train_loss) and math.isfinite(ev.loss)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast keeps the weights in fp32


class RecordDeviceCopies(TorchFunctionMode):
    """Every ``Tensor.to`` that names a device, and whether it was asked not to block."""

    def __init__(self):
        super().__init__()
        self.copies = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.to and any(isinstance(a, (torch.device, str)) for a in (*args[1:], kwargs.get("device"))):
            self.copies.append(bool(kwargs.get("non_blocking", False)))
        return func(*args, **kwargs)


def test_batches_cross_to_the_device_without_blocking_in_training_and_evaluation():
    model = linear_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = create_schedule("step", base_lr=0.1, steps_per_epoch=3, epochs=1)
    with RecordDeviceCopies() as recorded:
        train_one_epoch(model, batches(3, 4), opt, nn.CrossEntropyLoss(), schedule=schedule, step=0, accum_steps=1,
                        amp=CPU)
        evaluate(model, batches(2, 4), n_classes=5, amp=CPU)
    assert len(recorded.copies) == 2 * (3 + 2)  # images and labels of every batch
    assert all(recorded.copies)


def test_cuda_gets_bf16_where_the_gpu_has_it_else_fp16_with_a_scaler_and_channels_last(monkeypatch):
    from lrtune.training.loop import amp_policy

    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert amp_policy(cuda, True) == AmpPolicy(cuda, amp_dtype=torch.bfloat16, channels_last=True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    fp16 = amp_policy(cuda, True)
    assert fp16 == AmpPolicy(cuda, amp_dtype=torch.float16, channels_last=True)
    assert amp_policy(cuda, False).amp_dtype is None
    assert amp_policy(torch.device("cpu"), True) == CPU


class CountHostSyncs(TorchFunctionMode):
    """Every call that makes the host wait for the device: reading a value, a copy to the host, a truth test."""

    SYNCS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu, torch.Tensor.__bool__,
             torch.Tensor.__float__, torch.Tensor.__int__, torch.Tensor.nonzero}

    def __init__(self):
        super().__init__()
        self.calls = []
        self.host_side = False  # while a host-side loader makes a batch: its tensors are the host's own

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.SYNCS and not self.host_side:
            self.calls.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))

    def host_batches(self, loader):
        """``loader``'s batches, not counted while they are made (the CPU path's DataLoader lives on the host)."""
        batches = None
        while True:
            self.host_side = True
            try:
                batches = batches or iter(loader)
                batch = next(batches)
            except StopIteration:
                return
            finally:
                self.host_side = False
            yield batch


@pytest.mark.parametrize("augment", ["cpu", "device"])
def test_an_epoch_waits_for_the_device_once_at_its_end_on_both_paths(tmp_path, augment):
    """The loss is summed on the device and read once; nothing in a step reads a value back (the CPU stands in)."""
    from lrtune.config import Config
    from lrtune.training.run import Hyperparams, TrainingRun, load_training_data

    cfg = Config(studies_dir=str(tmp_path), image_size=8, batch_size=64, augment=augment, hflip=0.5, crop=0.5)
    run = TrainingRun(cfg, Hyperparams(lr=1e-3, scheduler="cosine", loss="focal", accum=2),
                      data=load_training_data(cfg), amp=CPU, seed=0)
    run.loader.reseed(1)

    class Batches:  # the epoch's batches; the device path's are made on the device and counted like the step
        def __len__(self):
            return len(run.loader)

        def __iter__(self):
            return counted.host_batches(run.loader) if augment == "cpu" else iter(run.loader)

    with CountHostSyncs() as counted:
        result = train_one_epoch(run.model, Batches(), run.optimizer, run.loss_fn, schedule=run.schedule, step=0,
                                 accum_steps=2, amp=CPU)
    assert result.step == math.ceil(len(run.loader) / 2) > 3
    assert counted.calls == ["tolist"]  # one read of every learner's loss


def test_a_compiled_model_is_captured_once_however_the_lr_changes_and_accumulates_as_eager(monkeypatch):
    """The graph path on the CPU: dynamo's capture, without code generation, stands in for inductor's CUDA graphs.
    Static shapes (no partial batch) and an LR the optimizer reads outside the graph: one capture per mode."""
    from torch._dynamo.utils import counters

    from lrtune.training import models

    torch._dynamo.reset()
    monkeypatch.setattr(models, "COMPILE_BACKEND", "eager")
    eager, compiled = linear_model(), linear_model()
    net = models.compile_model(compiled, "reduce-overhead")
    before = counters["stats"]["unique_graphs"]
    results = []
    for model in (eager, net):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        schedule = create_schedule("cosine", base_lr=1e-2, steps_per_epoch=3, epochs=2)
        step = 0
        for epoch in range(2):
            result = train_one_epoch(model, batches(6, 4, seed=epoch), opt, nn.CrossEntropyLoss(), schedule=schedule,
                                     step=step, accum_steps=2, amp=CPU)
            step = result.step
            results.append(result)
        evaluate(model, batches(2, 4), n_classes=5, amp=CPU)
    assert counters["stats"]["unique_graphs"] - before == 2  # training and evaluation, each captured once
    assert len(set(results[2].lrs + results[3].lrs)) == 6  # a new LR every step, no recapture
    for a, b in zip(eager.parameters(), compiled.parameters()):
        torch.testing.assert_close(a, b)
