"""K modules of one architecture as one wide module: each layer of the K slots as one layer over their channels
side by side. Knows nothing of Optuna.

A wide tensor holds the K slots' features side by side in its channel dimension: ``[batch, K*C, H, W]`` for a
convolution, ``[..., K*C]`` for a linear layer, slot k's C channels at ``k*C``. A convolution of the K slots is
then one grouped convolution over the concatenated weights, a BatchNorm one BatchNorm over K*C channels (each
channel's statistics are its own slot's), a linear layer one batched product; layers without weights
(activations, pooling, residual sums) act on each channel alone and need nothing. The model's input, shared by
the slots, meets a dense convolution of the K slots' concatenated filters: no copy of the batch per slot.

The slots stay ordinary modules holding their own weights: each forward concatenates them (autograd carries
each slot's gradient back to its own parameters) and a training forward writes BatchNorm's running statistics
back to each slot. ``widen`` replaces the layers it knows; a layer with weights it does not know makes it
refuse the model with ``NotWide``, naming the layer.
"""

from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lrtune.errors import ModelError


class NotWide(ModelError):
    """A model ``widen`` cannot run as K slots side by side: the message names the layer."""


def _shared(x: torch.Tensor, channels: int, k: int, dim: int) -> bool:
    """Whether ``x`` is the slots' shared input (``channels`` wide) rather than their K side by side."""
    if x.shape[dim] == channels * k:
        return False
    if x.shape[dim] == channels:
        return True
    raise NotWide(f"a layer of {channels} channels got {x.shape[dim]} for {k} slots side by side")


class _Wide(nn.Module):
    """One layer of K slots: the slots' own modules (not registered here: the fused model holds them)."""

    TENSORS: tuple[str, ...] = ("weight", "bias")  # what a forward reads of each slot's layer

    def __init__(self, name: str, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.name = name
        self.bind(layers)

    def bind(self, layers: Sequence[nn.Module]) -> None:
        """Read the weights of ``layers`` (as many as before) from now on.

        Each of ``TENSORS`` is looked up here once per slot, not at every forward: the slots' tensors are
        updated in place (optimizer steps, loaded checkpoints, running statistics), and a fused model binds its
        slots again before each pass.
        """
        self.layers = list(layers)
        self.k = len(layers)
        object.__setattr__(self, "template", layers[0])  # not a submodule: it belongs to slot 0
        self.tensors = {name: [getattr(layer, name) for layer in layers] for name in self.TENSORS}
        self.prepare(layers[0])

    def prepare(self, template: nn.Module) -> None:
        """What a forward needs to know of the layers' configuration, read once per bind."""

    def cat(self, name: str) -> torch.Tensor | None:
        tensors = self.tensors[name]
        return None if tensors[0] is None else torch.cat(tensors)


# Devices where a 1x1 convolution runs as a batched product and a kernel on a 1x1 map as its centre: measured
# faster than oneDNN's grouped convolution on the CPU (benchmarks/fuse_layers.py); elsewhere the grouped one runs.
PRODUCT_DEVICES: tuple[str, ...] = ("cpu",)


class _WideConv(_Wide):
    def prepare(self, template: nn.Module) -> None:
        conv: nn.Conv2d = template  # type: ignore[assignment]
        plain = type(conv) is nn.Conv2d
        # A 1x1 convolution of each slot's channels (no groups, no padding): one batched product per slot.
        self.pointwise = (plain and conv.kernel_size == (1, 1) and conv.groups == 1 and conv.dilation == (1, 1)
                          and conv.padding in ((0, 0), "valid"))
        # An odd kernel zero-padded by half its dilated extent: on a 1x1 map every tap but the centre falls on
        # padding, and the output is 1x1 too (``centred``).
        self.centre_only = (plain and conv.padding_mode == "zeros" and conv.kernel_size != (1, 1)
                            and not isinstance(conv.padding, str)
                            and all(k % 2 == 1 and p == d * (k // 2)
                                    for k, p, d in zip(conv.kernel_size, conv.padding, conv.dilation)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv: nn.Conv2d = self.template  # type: ignore[assignment]
        weight, bias = self.cat("weight"), self.cat("bias")
        if _shared(x, conv.in_channels, self.k, 1):
            if conv.groups == 1:  # one dense convolution of every slot's filters
                return self._convolve(x, weight, bias, 1)
            x = x.repeat(1, self.k, 1, 1)
        products = x.device.type in PRODUCT_DEVICES
        if products and self.centred(x):  # a 1x1 map meets only the kernel's centre: a 1x1 convolution of it
            kh, kw = conv.kernel_size
            weight = weight[:, :, kh // 2:kh // 2 + 1, kw // 2:kw // 2 + 1]
            if conv.groups == 1:
                return self._pointwise(x, weight, bias, stride=(1, 1))
            return F.conv2d(x, weight, bias, 1, 0, 1, conv.groups * self.k)
        if products and self.pointwise:
            return self._pointwise(x, weight, bias, stride=conv.stride)
        return self._convolve(x, weight, bias, conv.groups * self.k)

    def centred(self, x: torch.Tensor) -> bool:
        """Whether ``x`` is a 1x1 map that only the kernel's centre reaches."""
        return self.centre_only and x.shape[-2:] == (1, 1)

    def _pointwise(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *,
                   stride: tuple[int, ...]) -> torch.Tensor:
        conv: nn.Conv2d = self.template  # type: ignore[assignment]
        if stride != (1, 1):
            x = x[:, :, ::stride[0], ::stride[1]]
        b, _, h, w = x.shape
        out = torch.einsum("bkil,koi->bkol", x.reshape(b, self.k, conv.in_channels, h * w),
                           weight.reshape(self.k, conv.out_channels, conv.in_channels))
        out = out.reshape(b, self.k * conv.out_channels, h, w)
        return out if bias is None else out + bias.view(1, -1, 1, 1)

    def _convolve(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  groups: int) -> torch.Tensor:
        conv: nn.Conv2d = self.template  # type: ignore[assignment]
        if _SAME is not None and type(conv) is _SAME[0]:
            return _SAME[1](x, weight, bias, conv.stride, conv.padding, conv.dilation, groups)
        padding = conv.padding
        if conv.padding_mode != "zeros":
            x = F.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
            padding = 0
        return F.conv2d(x, weight, bias, conv.stride, padding, conv.dilation, groups)  # type: ignore[arg-type]


class _WideBatchNorm(_Wide):
    """``nn.BatchNorm2d`` over K*C channels, and timm's ``BatchNormAct2d`` (its dropout and activation after)."""

    TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

    def prepare(self, template: nn.Module) -> None:
        bn: nn.BatchNorm2d = template  # type: ignore[assignment]
        self.tracked = bn.track_running_stats and self.tensors["running_mean"][0] is not None
        self.counted = self.tracked and self.tensors["num_batches_tracked"][0] is not None
        self.stats = self.tensors["running_mean"] + self.tensors["running_var"]  # written back after a training step
        self.after = _after_of(bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn: nn.BatchNorm2d = self.template  # type: ignore[assignment]
        if _shared(x, bn.num_features, self.k, 1):
            x = x.repeat(1, self.k, 1, 1)
        if self.training and self.counted:
            torch._foreach_add_(self.tensors["num_batches_tracked"], 1)
        mean = self.cat("running_mean") if self.tracked else None
        var = self.cat("running_var") if self.tracked else None
        out = F.batch_norm(x, mean, var, self.cat("weight"), self.cat("bias"), self.training or mean is None,
                           bn.momentum or 0.0, bn.eps)
        if self.training and mean is not None and var is not None:
            with torch.no_grad():
                torch._foreach_copy_(self.stats, list(mean.chunk(self.k)) + list(var.chunk(self.k)))
        return self.after(out)


class _WideLinear(_Wide):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        linear: nn.Linear = self.template  # type: ignore[assignment]
        if _shared(x, linear.in_features, self.k, -1):
            return F.linear(x, self.cat("weight"), self.cat("bias"))  # type: ignore[arg-type]
        weight = torch.stack(self.tensors["weight"])  # [K, out, in]
        out = torch.einsum("...ki,koi->...ko", x.unflatten(-1, (self.k, linear.in_features)), weight)
        if linear.bias is not None:
            out = out + torch.stack(self.tensors["bias"])
        return out.flatten(-2)


class _WideGroupNorm(_Wide):
    def prepare(self, template: nn.Module) -> None:
        self.after = _after_of(template)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm: nn.GroupNorm = self.template  # type: ignore[assignment]
        if _shared(x, norm.num_channels, self.k, 1):
            x = x.repeat(1, self.k, *[1] * (x.dim() - 2))
        return self.after(F.group_norm(x, norm.num_groups * self.k, self.cat("weight"), self.cat("bias"), norm.eps))


def _after_of(norm: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """What timm's norm-and-activation layers (``BatchNormAct2d``, ``GroupNormAct``) do after the norm: their
    dropout, then their activation (the slot's own modules: they have no weights); nothing for a plain norm."""
    act, drop = getattr(norm, "act", None), getattr(norm, "drop", None)
    if act is None or drop is None:
        return _same
    return lambda out: act(drop(out))


def _same(out: torch.Tensor) -> torch.Tensor:
    return out


_SAME: tuple[type, Callable] | None = None
WIDE: dict[type, type[_Wide]] = {nn.Conv2d: _WideConv, nn.BatchNorm2d: _WideBatchNorm, nn.Linear: _WideLinear,
                                 nn.GroupNorm: _WideGroupNorm}
try:
    from timm.layers import BatchNormAct2d, Conv2dSame, GroupNormAct
    from timm.layers import Linear as TimmLinear
    from timm.layers.conv2d_same import conv2d_same

    _SAME = (Conv2dSame, conv2d_same)
    WIDE.update({Conv2dSame: _WideConv, BatchNormAct2d: _WideBatchNorm, GroupNormAct: _WideGroupNorm,
                 TimmLinear: _WideLinear})
except ImportError:  # timm is a dependency; without it only torch's layers widen
    pass


def _refusal(name: str, module: nn.Module) -> str | None:
    """Why a layer that is not replaced cannot act on K slots side by side (None when it can: no weights)."""
    if any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
        where = f" ({name})" if name else " (the model itself)"
        return f"{type(module).__name__}{where} is a layer with weights the fuser does not know"
    return None


def _check(name: str, module: nn.Module) -> None:
    """Refuse what ``WIDE`` knows by type but not in this configuration."""
    if isinstance(module, nn.BatchNorm2d) and module.momentum is None:
        raise NotWide(f"{name}: BatchNorm's cumulative average (momentum None) is each slot's own count")
    if isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
        for part in ("act", "drop"):
            sub = getattr(module, part, None)
            if sub is not None and any(True for _ in sub.parameters()):
                raise NotWide(f"{name}.{part}: {type(sub).__name__} has weights the fuser does not know")


def widen(skeleton: nn.Module, slots: Sequence[nn.Module]) -> nn.Module:
    """A copy of ``skeleton`` (the architecture, any device, meta included) whose layers act on the K ``slots``
    side by side, each known layer reading the weights of the slots' layer of the same name."""
    wide = copy.deepcopy(skeleton)
    replaced: list[str] = []
    for name, module in list(wide.named_modules()):
        if any(name.startswith(done + ".") for done in replaced):
            continue
        kind = WIDE.get(type(module))
        if kind is None:
            reason = _refusal(name, module)
            if reason is not None:
                raise NotWide(reason)
            continue
        if not name:
            raise NotWide(f"the model is a single {type(module).__name__}")
        _check(name, module)
        layers = [slot.get_submodule(name) for slot in slots]
        parent, _, child = name.rpartition(".")
        setattr(wide.get_submodule(parent), child, kind(name, layers))
        replaced.append(name)
    return wide


def rebind(wide: nn.Module, slots: Sequence[nn.Module]) -> None:
    """Make ``wide`` (from ``widen`` with as many slots) read the weights of ``slots`` from now on."""
    for layer in wide.modules():
        if isinstance(layer, _Wide):
            if layer.k != len(slots):
                raise ValueError(f"a wide model of {layer.k} slots cannot read {len(slots)}")
            layer.bind([slot.get_submodule(layer.name) for slot in slots])
