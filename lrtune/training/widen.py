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

    def __init__(self, name: str, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.name = name
        self.bind(layers)

    def bind(self, layers: Sequence[nn.Module]) -> None:
        """Read the weights of ``layers`` (as many as before) from now on."""
        self.layers = list(layers)
        self.k = len(layers)
        object.__setattr__(self, "template", layers[0])  # not a submodule: it belongs to slot 0

    def cat(self, name: str) -> torch.Tensor | None:
        tensors = [getattr(layer, name) for layer in self.layers]
        return None if tensors[0] is None else torch.cat(tensors)


# Devices where a 1x1 convolution runs as a batched product and a kernel on a 1x1 map as its centre: measured
# faster than oneDNN's grouped convolution on the CPU (benchmarks/fuse_layers.py); elsewhere the grouped one runs.
PRODUCT_DEVICES: tuple[str, ...] = ("cpu",)


class _WideConv(_Wide):
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

    @property
    def pointwise(self) -> bool:
        """A 1x1 convolution of each slot's channels (no groups, no padding): one batched product per slot."""
        conv: nn.Conv2d = self.template  # type: ignore[assignment]
        return (conv.kernel_size == (1, 1) and conv.groups == 1 and conv.dilation == (1, 1)
                and conv.padding in ((0, 0), "valid") and type(conv) is nn.Conv2d)

    def centred(self, x: torch.Tensor) -> bool:
        """Whether ``x`` is a 1x1 map that only the kernel's centre reaches: an odd kernel zero-padded by half
        its dilated extent, so every other tap falls on padding and the output is 1x1 too."""
        conv: nn.Conv2d = self.template  # type: ignore[assignment]
        return (x.shape[-2:] == (1, 1) and type(conv) is nn.Conv2d and conv.padding_mode == "zeros"
                and conv.kernel_size != (1, 1) and not isinstance(conv.padding, str)
                and all(k % 2 == 1 and p == d * (k // 2)
                        for k, p, d in zip(conv.kernel_size, conv.padding, conv.dilation)))

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn: nn.BatchNorm2d = self.template  # type: ignore[assignment]
        if _shared(x, bn.num_features, self.k, 1):
            x = x.repeat(1, self.k, 1, 1)
        tracked = bn.track_running_stats and bn.running_mean is not None
        if self.training and tracked and bn.num_batches_tracked is not None:
            torch._foreach_add_([layer.num_batches_tracked for layer in self.layers], 1)
        use_stats = tracked and (not self.training or bn.track_running_stats)
        mean = self.cat("running_mean") if use_stats else None
        var = self.cat("running_var") if use_stats else None
        out = F.batch_norm(x, mean, var, self.cat("weight"), self.cat("bias"), self.training or mean is None,
                           bn.momentum or 0.0, bn.eps)
        if self.training and mean is not None and var is not None:
            with torch.no_grad():
                mine = [layer.running_mean for layer in self.layers] + [layer.running_var for layer in self.layers]
                torch._foreach_copy_(mine, list(mean.chunk(self.k)) + list(var.chunk(self.k)))
        return _after(bn, out)


class _WideLinear(_Wide):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        linear: nn.Linear = self.template  # type: ignore[assignment]
        if _shared(x, linear.in_features, self.k, -1):
            return F.linear(x, self.cat("weight"), self.cat("bias"))  # type: ignore[arg-type]
        weight = torch.stack([layer.weight for layer in self.layers])  # [K, out, in]
        out = torch.einsum("...ki,koi->...ko", x.unflatten(-1, (self.k, linear.in_features)), weight)
        if linear.bias is not None:
            out = out + torch.stack([layer.bias for layer in self.layers])
        return out.flatten(-2)


class _WideGroupNorm(_Wide):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm: nn.GroupNorm = self.template  # type: ignore[assignment]
        if _shared(x, norm.num_channels, self.k, 1):
            x = x.repeat(1, self.k, *[1] * (x.dim() - 2))
        return _after(norm, F.group_norm(x, norm.num_groups * self.k, self.cat("weight"), self.cat("bias"), norm.eps))


def _after(norm: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """What timm's norm-and-activation layers (``BatchNormAct2d``, ``GroupNormAct``) do after the norm."""
    if hasattr(norm, "act") and hasattr(norm, "drop"):
        out = norm.act(norm.drop(out))
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
