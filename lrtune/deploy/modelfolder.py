"""A model folder: weights as safetensors and a timm ``config.json``, loadable without lrtune.

``model.safetensors`` holds the state dict; ``config.json`` is timm's
``pretrained_cfg`` form (architecture, ``num_classes``, ``label_names``, input
size, mean, std), so ``timm.create_model("local-dir:<folder>", pretrained=True)``
rebuilds the model. ``training.json`` and ``curves.json`` say how it was trained.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from torch import nn

from lrtune.errors import ModelError, first_line
from lrtune.training.checkpoints import load as load_checkpoint
from lrtune.training.models import create_model
from lrtune.training.references import is_user_part

WEIGHTS, CONFIG, TRAINING, CURVES = "model.safetensors", "config.json", "training.json", "curves.json"
REQUIRED = (WEIGHTS, CONFIG, TRAINING)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # what lrtune normalizes with (timm's IMAGENET_DEFAULT_MEAN)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class LoadedModel:
    """A plain ``torch.nn.Module`` in eval mode, its class names, and the preprocessing it expects.

    Images are squashed (resized without cropping) to ``image_size`` squares,
    scaled to [0, 1] and normalized with ``mean`` and ``std``.
    """

    model: nn.Module
    classes: list[str]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    architecture: str
    source: Path
    metric: str = "macro_f1"  # the metric its study optimized: predictions list it first

    def preprocess(self, images: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        """``(B, S, S, 3)`` uint8 RGB images -> the normalized ``(B, 3, S, S)`` float batch the model takes."""
        x = torch.as_tensor(images).to(device).permute(0, 3, 1, 2).float().div_(255)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return x.sub_(mean).div_(std).contiguous()


def save_model_folder(
    folder: Path,
    model: nn.Module,
    *,
    classes: list[str],
    image_size: int,
    training: dict[str, Any],
    curves: dict[str, Any],
    architecture: str = "",
) -> None:
    """Write the four files of a model folder into ``folder`` (which must exist). A user's model
    (``architecture`` a reference) gets the same ``config.json`` naming its reference, which rebuilds it."""
    from safetensors.torch import save_file
    from timm.models._hub import save_config_for_hf

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS), metadata={"format": "pt"})
    data_config = {
        "input_size": (3, image_size, image_size),
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "squash",
    }
    if is_user_part(architecture):
        config = {"architecture": architecture, "num_classes": len(classes), "label_names": list(classes),
                  "pretrained_cfg": {**data_config, "input_size": list(data_config["input_size"])}}
        (folder / CONFIG).write_text(json.dumps(config, indent=2))
    else:
        save_config_for_hf(model, str(folder / CONFIG), model_config={"label_names": list(classes)},
                           data_config=data_config)
    (folder / TRAINING).write_text(json.dumps(training, indent=2, default=str))
    (folder / CURVES).write_text(json.dumps(curves, indent=2))


def load_model_folder(folder: str | Path, *, device: torch.device | str = "cpu") -> LoadedModel:
    """The model of a folder written by ``save_model_folder``; a missing or broken file is a ``ModelError``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"model folder {folder} not found")
    for name in REQUIRED:
        if not (folder / name).is_file():
            raise ModelError(f"model folder {folder} has no {name}; it is incomplete, train it again")
    try:
        config = json.loads((folder / CONFIG).read_text())
        pretrained = config["pretrained_cfg"]
        architecture, classes = config["architecture"], list(config["label_names"])
        image_size = int(pretrained["input_size"][-1])
        mean, std = tuple(pretrained["mean"]), tuple(pretrained["std"])
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise ModelError(f"{folder / CONFIG} is not a timm model config: {first_line(exc)}") from None
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(folder / WEIGHTS))
    except (OSError, SafetensorError) as exc:
        raise ModelError(f"cannot read {folder / WEIGHTS}: {first_line(exc)}") from None
    model = _build(architecture, len(classes), state, folder / WEIGHTS)
    metric = _metric_of(folder)
    return LoadedModel(model.to(device).eval(), classes, image_size, mean, std, architecture, folder, metric)


def _metric_of(folder: Path) -> str:
    """The metric the folder's training config names (macro-F1 for a folder without one)."""
    try:
        return str(json.loads((folder / "training.json").read_text())["config"].get("metric") or "macro_f1")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "macro_f1"


def load_trial_weights(path: Path, *, device: torch.device | str = "cpu") -> LoadedModel:
    """The model of a trial's ``best.pt``."""
    try:
        record = load_checkpoint(path)
        architecture, classes, size = record["model"], list(record["classes"]), int(record["image_size"])
        state = record["state_dict"]
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise ModelError(f"cannot read trial weights {path}: {first_line(exc)}") from None
    model = _build(architecture, len(classes), state, path)
    metric = str(record.get("metric") or "macro_f1")
    return LoadedModel(model.to(device).eval(), classes, size, IMAGENET_MEAN, IMAGENET_STD, architecture, path, metric)


def _build(architecture: str, num_classes: int, state: dict[str, torch.Tensor], source: Path) -> nn.Module:
    if is_user_part(architecture):
        model = create_model(architecture, num_classes=num_classes)
    elif not timm.is_model(architecture):
        raise ModelError(f"{source}: unknown timm architecture {architecture!r}")
    else:
        model = timm.create_model(architecture, pretrained=False, num_classes=num_classes)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"{source} does not fit {architecture} with {num_classes} classes: {first_line(exc)}") from None
    return model
