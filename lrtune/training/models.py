"""Models: any timm architecture; pretrained weights from the Hugging Face cache (downloaded once) or a local file."""

from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path

import timm
import torch
from torch import nn

from lrtune.errors import LRTuneError, ModelError, first_line
from lrtune.training.references import is_user_part, resolve

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


def create_model(name: str, *, num_classes: int, pretrained: bool = False, weights: str = "") -> nn.Module:
    """Build timm model ``name`` with a ``num_classes`` head.

    With ``pretrained``, weights come from ``weights`` (a local file) or, as
    timm does it, from the Hugging Face hub into its cache (downloaded once).
    A user's model (``references``) is built by its callable, or copied from its module.
    """
    if is_user_part(name):
        if pretrained or weights:
            raise ModelError(f"--pretrained and --weights load timm's weights; model {name!r} loads its own")
        return _user_model(name, num_classes)
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"did you mean: {', '.join(close)}" if close else "`python -c 'import timm; print(timm.list_models())'` lists them"
        raise ModelError(f"unknown model {name!r}; timm has {len(timm.list_models())} models ({hint})")
    if not pretrained:
        if weights:
            raise ModelError("--weights is given without --pretrained")
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    if not weights:
        return _download(name, num_classes)
    path = Path(weights)
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    if not path.name.endswith(WEIGHT_SUFFIXES):
        raise ModelError(f"weights file {path} is not one of {', '.join(WEIGHT_SUFFIXES)}")
    try:
        return timm.create_model(
            name, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay={"file": str(path)}
        )
    except (RuntimeError, KeyError, ValueError, OSError) as exc:
        raise ModelError(f"cannot load weights {path} into {name}: {first_line(exc)}") from None


def _user_model(name: str, num_classes: int) -> nn.Module:
    """The module a user's callable returns for ``num_classes``, or a fresh copy of a module given as it is."""
    factory = resolve(name, kind="model", error=ModelError)
    if isinstance(factory, nn.Module):
        return copy.deepcopy(factory)
    try:
        model = factory(num_classes)
    except LRTuneError:
        raise
    except Exception as exc:  # the user's code may raise anything
        raise ModelError(f"model {name!r} failed to build with {num_classes} classes: "
                         f"{type(exc).__name__}: {first_line(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"model {name!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _download(name: str, num_classes: int) -> nn.Module:
    """timm's pretrained weights, from the Hugging Face cache or downloaded into it."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise ModelError(f"timm has no pretrained weights for {name!r}; pass --weights FILE")
    try:
        return timm.create_model(name, pretrained=True, num_classes=num_classes)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ModelError(_not_fetched(name, cfg, exc)) from None
    except Exception as exc:  # the hub client raises its own HTTP errors for no network or a missing repo
        if type(exc).__module__.split(".")[0] not in ("huggingface_hub", "requests", "httpx", "urllib3"):
            raise
        raise ModelError(_not_fetched(name, cfg, exc)) from None


def _not_fetched(name: str, cfg: timm.models.PretrainedCfg, exc: BaseException) -> str:
    """One line: what could not be fetched, where it would be cached, and the way out."""
    if cfg.hf_hub_id:
        from huggingface_hub import constants

        source, cache = f"Hugging Face hub {cfg.hf_hub_id}", constants.HF_HUB_CACHE
        reason = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else first_line(exc)[:160]
    else:
        import torch

        source, cache = str(cfg.url or cfg.file), os.path.join(torch.hub.get_dir(), "checkpoints")
        reason = first_line(exc)[:160]
    return (
        f"pretrained weights for {name!r} ({source}) are not in the cache {cache} and cannot be downloaded "
        f"({reason}); connect to the network once, or pass --weights FILE"
    )


def check_model(name: str, *, num_classes: int, pretrained: bool, weights: str,
                probe: torch.Tensor | None = None) -> tuple[int, torch.Tensor | None]:
    """Fail fast (before any trial runs) on a bad model name, weights that cannot be had, or (given a ``probe``
    batch) an output that is not ``[batch, num_classes]``; the bytes of the model's weights and buffers, and its
    logits for ``probe``."""
    model = create_model(name, num_classes=num_classes, pretrained=pretrained, weights=weights)
    logits = check_output(model, name, probe, num_classes) if probe is not None else None
    return sum(t.numel() * t.element_size() for t in model.state_dict().values()), logits


def check_output(model: nn.Module, name: str, probe: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``model``'s logits for ``probe``; ``ModelError`` naming the shapes when they are not ``[batch, num_classes]``."""
    shape = "x".join(str(n) for n in probe.shape)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(probe)
    except Exception as exc:  # the user's forward may raise anything
        raise ModelError(f"model {name!r} fails on a probe batch of shape {shape}: "
                         f"{type(exc).__name__}: {first_line(exc)}") from exc
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise ModelError(f"model {name!r} returned a {type(out).__name__} for a batch of shape {shape}; "
                         f"it must return logits of shape [batch, num_classes] = [{len(probe)}, {num_classes}]")
    if tuple(out.shape) != (len(probe), num_classes):
        raise ModelError(f"model {name!r} returned shape [{', '.join(map(str, out.shape))}] for a batch of shape "
                         f"{shape}; it must return [batch, num_classes] = [{len(probe)}, {num_classes}]")
    return out


COMPILE_BACKEND: str | None = None  # None: inductor; the tests stand a backend without code generation in on the CPU


def compile_model(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """``torch.compile`` for training: static shapes (the loaders drop a last partial batch), so each of the
    train and eval graphs is captured once and the LR, a Python float the optimizer reads outside the graph,
    changes without a recapture. ``reduce-overhead`` replays CUDA graphs on CUDA, for launch-bound steps."""
    if COMPILE_BACKEND is not None:
        return torch.compile(model, dynamic=False, backend=COMPILE_BACKEND)
    return torch.compile(model, dynamic=False, mode=None if mode == "default" else mode)
