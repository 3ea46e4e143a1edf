"""K slots' layers side by side over their channels: each known layer gives each slot what it gives alone."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.layers import BatchNormAct2d, Conv2dSame, GroupNormAct
from torch import nn

from lrtune.training.fused import AGREEMENT, FusedModel, disagreement
from lrtune.training.loop import AmpPolicy
import lrtune.training.widen as widen_module
from lrtune.training.widen import NotWide, rebind, widen

CPU = AmpPolicy(torch.device("cpu"))


def _slots(make, k=3):
    models = []
    for i in range(k):
        torch.manual_seed(100 + i)
        models.append(make())
    return models


def _layered(*layers):
    return lambda: nn.Sequential(*[layer() for layer in layers])


LAYERS = {  # each ends in [batch, features]; the input is [batch, 4, 6, 6]
    "dense conv": _layered(lambda: nn.Conv2d(4, 6, 3, padding=1, bias=True), nn.Flatten),
    "strided 1x1 after a conv": _layered(lambda: nn.Conv2d(4, 6, 3), lambda: nn.Conv2d(6, 5, 1, stride=2),
                                         nn.Flatten),
    "depthwise": _layered(lambda: nn.Conv2d(4, 8, 3, groups=4), lambda: nn.Conv2d(8, 8, 3, groups=8),
                          nn.Flatten),
    "3x3 on a 1x1 map": _layered(lambda: nn.Conv2d(4, 4, 1), lambda: nn.AdaptiveAvgPool2d(1),
                                 lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1),
                                 lambda: nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=3), nn.Flatten),
    "reflect padding": _layered(lambda: nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), nn.Flatten),
    "timm's same padding": _layered(lambda: Conv2dSame(4, 6, 3, stride=2), nn.Flatten),
    "BatchNorm first": _layered(lambda: nn.BatchNorm2d(4), lambda: nn.Conv2d(4, 3, 1), nn.Flatten),
    "BatchNormAct2d": _layered(lambda: nn.Conv2d(4, 6, 3), lambda: BatchNormAct2d(6, act_layer=nn.SiLU),
                               nn.Flatten),
    "GroupNorm": _layered(lambda: nn.Conv2d(4, 6, 3), lambda: nn.GroupNorm(3, 6), nn.Flatten),
    "GroupNormAct": _layered(lambda: nn.Conv2d(4, 6, 3), lambda: GroupNormAct(6, 2), nn.Flatten),
    "linear on the input": _layered(nn.Flatten, lambda: nn.Linear(144, 7)),
    "linear after linear": _layered(nn.Flatten, lambda: nn.Linear(144, 7), nn.ReLU, lambda: nn.Linear(7, 5)),
    "pooled head": _layered(lambda: nn.Conv2d(4, 6, 3), lambda: nn.BatchNorm2d(6), nn.ReLU,
                            lambda: nn.AdaptiveAvgPool2d(1), nn.Flatten, lambda: nn.Linear(6, 3, bias=False)),
}


@pytest.mark.parametrize("products", [True, False], ids=["products", "grouped"])  # the CPU's forms, and CUDA's
@pytest.mark.parametrize("name", LAYERS)
def test_each_known_layer_trains_each_slot_as_alone(name, products, monkeypatch):
    monkeypatch.setattr(widen_module, "PRODUCT_DEVICES", ("cpu",) if products else ())
    products_run = []
    pointwise = widen_module._WideConv._pointwise
    monkeypatch.setattr(widen_module._WideConv, "_pointwise",
                        lambda self, *args, **kwargs: products_run.append(1) or pointwise(self, *args, **kwargs))
    make = LAYERS[name]
    slots, alone = _slots(make), _slots(make)
    x = torch.randn(5, 4, 6, 6)
    fused = FusedModel(slots).train()
    out = fused(x)
    assert bool(products_run) == (products and name in ("strided 1x1 after a conv", "3x3 on a 1x1 map",
                                                        "BatchNorm first"))
    out.sum().backward()
    for k, model in enumerate(alone):
        own = model.train()(x)
        torch.testing.assert_close(out[k], own, rtol=1e-5, atol=1e-5)
        own.sum().backward()
        for (key, p), q in zip(model.named_parameters(), slots[k].parameters()):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=key)


def test_batchnorm_statistics_and_counts_are_each_slots_own():
    make = _layered(lambda: nn.Conv2d(3, 4, 3), lambda: nn.BatchNorm2d(4), nn.Flatten)
    slots, alone = _slots(make), _slots(make)
    slots[1][1].num_batches_tracked.fill_(7)  # a slot refilled later than the others
    alone[1][1].num_batches_tracked.fill_(7)
    fused = FusedModel(slots).train()
    for _ in range(2):
        x = torch.randn(6, 3, 5, 5)
        fused(x)
        for model in alone:
            model.train()(x)
    for mine, theirs in zip(slots, alone):
        for key, value in theirs.state_dict().items():
            torch.testing.assert_close(mine.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert [int(m[1].num_batches_tracked) for m in slots] == [2, 9, 2]
    fused.eval()
    before = [m[1].running_mean.clone() for m in slots]
    fused(torch.randn(6, 3, 5, 5))
    assert all(torch.equal(m[1].running_mean, b) for m, b in zip(slots, before))


@pytest.mark.parametrize("model", ["test_resnet", "test_efficientnet", "test_efficientnet_gn", "test_byobnet"])
def test_timm_families_fuse_to_round_off(model):
    slots = _slots(lambda: timm.create_model(model, num_classes=5), k=2)
    assert disagreement(FusedModel(slots), CPU, torch.rand(4, 3, 32, 32)) < AGREEMENT  # float32 round-off


@pytest.mark.parametrize(("make", "culprit"), [
    (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.LayerNorm([4, 6, 6])), "LayerNorm (1)"),
    (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.PReLU()), "PReLU (1)"),
    (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), BatchNormAct2d(4, act_layer=nn.PReLU)), "1.act: PReLU"),
    (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=None)), "1: BatchNorm's cumulative"),
    (lambda: timm.create_model("test_vit", num_classes=3), "VisionTransformer (the model itself)"),
])
def test_a_layer_it_does_not_know_is_named(make, culprit):
    with pytest.raises(NotWide, match=culprit.replace("(", r"\(").replace(")", r"\)")):
        widen(make().to("meta"), _slots(make, k=2))


class _Mixing(nn.Module):
    """Concatenates two branches' channels: a layout the fused layers cannot see."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 2, 1), nn.Conv2d(3, 2, 1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(torch.cat([self.a(x), self.b(x)], dim=1).mean((2, 3)))


def test_a_model_that_mixes_the_slots_channels_disagrees():
    slots = _slots(_Mixing, k=2)
    assert disagreement(FusedModel(slots), CPU, torch.rand(3, 3, 4, 4)) > 1e-2


def test_a_wide_model_rebound_to_other_slots_reads_their_weights():
    make = LAYERS["pooled head"]
    first, second = _slots(make, k=2), _slots(make, k=4)[2:]
    fused = FusedModel(first).eval()
    x = torch.randn(3, 4, 6, 6)
    fused.set_slots(second)  # as many slots: the same wide layers, bound to the new ones
    with torch.no_grad():
        torch.testing.assert_close(fused(x), torch.stack([m.eval()(x) for m in second]))
        fused.set_slots(first[:1] + second)  # three: a wide model of its own
        torch.testing.assert_close(fused(x), torch.stack([m.eval()(x) for m in first[:1] + second]))
    with pytest.raises(ValueError, match="2 slots cannot read 3"):
        rebind(widen(make().to("meta"), first), first + second[:1])


def test_a_fused_step_under_bf16_autocast_and_channels_last_trains_every_slot_as_alone():
    amp = AmpPolicy(torch.device("cpu"), amp_dtype=torch.bfloat16, channels_last=True)  # the CUDA policy's shape
    slots = _slots(lambda: timm.create_model("test_efficientnet", num_classes=4), k=2)
    alone = _slots(lambda: timm.create_model("test_efficientnet", num_classes=4), k=2)
    x = torch.rand(6, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with amp.autocast():
        fused = FusedModel(slots).train()(x)
        own = torch.stack([model.train()(x) for model in alone])
    # bf16 keeps about 3 digits, and the fused and own layers sum in different orders: within 10% of the scale
    # (2% on the CPU box; a slot reading another's weights is off by its whole scale)
    assert float((fused - own).detach().float().abs().max() / own.detach().float().abs().max()) < 0.1
    fused.float().sum().backward()
    own.float().sum().backward()
    for mine, theirs in zip(slots, alone):
        grads = [(p.grad, q.grad) for p, q in zip(mine.parameters(), theirs.parameters())]
        assert all(a is not None and torch.isfinite(a).all() for a, _ in grads)
        cosine = torch.nn.functional.cosine_similarity(torch.cat([a.flatten() for a, _ in grads]),
                                                       torch.cat([b.flatten() for _, b in grads]), dim=0)
        assert cosine > 0.98


def test_the_agreement_check_runs_in_full_float32_and_restores_tf32():
    torch.backends.cudnn.allow_tf32 = True
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append(torch.backends.cudnn.allow_tf32)
            return x

    make = _layered(lambda: nn.Conv2d(3, 2, 1), Spy, nn.Flatten)
    disagreement(FusedModel(_slots(make, k=2)), CPU, torch.rand(2, 3, 2, 2))
    assert seen and not any(seen) and torch.backends.cudnn.allow_tf32
