"""Models: any timm architecture, with pretrained weights only from local files."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import timm
import torch
from torch import nn

from lrtune.errors import ModelError, first_line

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


def create_model(name: str, *, num_classes: int, pretrained: bool = False, weights: str = "") -> nn.Module:
    """Build timm model ``name`` with a ``num_classes`` head.

    With ``pretrained``, weights come from ``weights`` (a local file) or from
    timm's local caches; nothing is ever downloaded.
    """
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"did you mean: {', '.join(close)}" if close else "`python -c 'import timm; print(timm.list_models())'` lists them"
        raise ModelError(f"unknown model {name!r}; timm has {len(timm.list_models())} models ({hint})")
    if not pretrained:
        if weights:
            raise ModelError("--weights is given without --pretrained")
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    path = Path(weights) if weights else local_weights(name)
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


def local_weights(name: str) -> Path:
    """Where timm's pretrained weights for ``name`` already lie on this machine.

    Looks in the Hugging Face cache and torch hub's checkpoint folder only.
    """
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        raise ModelError(f"timm has no pretrained weights for {name!r}; pass --weights FILE")
    candidates: list[Path] = []
    if cfg.file:
        candidates.append(Path(cfg.file))
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo = cfg.hf_hub_id
        for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            found = try_to_load_from_cache(repo, filename)
            if isinstance(found, str):
                candidates.append(Path(found))
    if cfg.url:
        candidates.append(Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url))
    for path in candidates:
        if path.is_file():
            return path
    where = cfg.hf_hub_id or cfg.url or name
    raise ModelError(
        f"no local pretrained weights for {name!r} ({where} is not in the local caches, and lrtune never downloads); "
        "pass --weights FILE"
    )


def check_model(name: str, *, num_classes: int, pretrained: bool, weights: str) -> None:
    """Fail fast (before any trial runs) on a bad model name or missing weights."""
    create_model(name, num_classes=num_classes, pretrained=pretrained, weights=weights)
