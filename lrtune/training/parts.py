"""What the public functions take of the user's own: a model, losses, datasets, as objects or references.

A reference (``"module:callable"``) goes into the config as it is. A Python object is kept for this process
under the name it is given (``references.give``) and goes into the config as ``object:<name>``, so a study
records what it ran with, and a resume or a retrain gives the same object and name again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from lrtune.config import Config
from lrtune.errors import ConfigError


@dataclass
class Given:
    """The config fields the user's parts set."""

    model: str | None = None
    losses: list[str] = field(default_factory=list)
    data: str | None = None
    shares: dict[str, float] = field(default_factory=dict)  # the validation and test shares of the given sets

    def apply(self, cfg: Config) -> tuple[Config, set[str]]:
        """``cfg`` with these parts, and the names of the fields they set."""
        changed: dict[str, Any] = dict(self.shares)
        if self.model is not None:
            changed["model"] = self.model
        if self.losses:
            changed["losses"] = [*cfg.losses, *(name for name in self.losses if name not in cfg.losses)]
        if self.data is not None:
            changed["data"] = self.data
        return dataclasses.replace(cfg, **changed), set(changed)

    def check(self, stored: Config) -> None:
        """``ConfigError`` when the parts given again are not the ones a study ran with."""
        if self.model is not None and self.model != stored.model:
            raise ConfigError(f"the study ran with model {stored.model!r}, not {self.model!r}")
        if self.data is not None and self.data != stored.data:
            raise ConfigError(f"the study ran with data {stored.data!r}, not {self.data!r}")
        for name in self.losses:
            if name not in stored.losses:
                raise ConfigError(f"the study ran with the losses {', '.join(stored.losses)}, not {name!r}")


def take(
    *,
    model: Any = None,
    model_name: str | None = None,
    loss: Mapping[str, Any] | None = None,
    train_data: Any = None,
    val_data: Any = None,
    test_data: Any = None,
    classes: Sequence[str] | None = None,
    data_name: str | None = None,
    num_workers: int = 0,
) -> Given:
    """Check the user's parts, keep the objects for this process, and say what they set in the config.

    ``model``: a reference, a ``torch.nn.Module`` or a callable ``(num_classes) -> nn.Module``; ``loss``: names to
    references or callables ``(logits, targets, **params) -> scalar``; ``train_data`` and ``val_data`` (and
    ``test_data``): datasets of ``(image_tensor, label)`` with ``classes`` naming the labels. An object needs a
    name (``model_name``, ``data_name``; a loss's is its key).
    """
    from lrtune.training.references import give

    given = Given()
    if isinstance(model, str):
        given.model = model
    elif model is not None:
        if not callable(model):
            raise ConfigError(f"model= is a {type(model).__name__}: give a torch.nn.Module, a callable "
                              "(num_classes) -> nn.Module, or a 'module:callable' reference")
        given.model = give("model", _named(model_name, "model", "model_name", model), model)
    for name, fn in (loss or {}).items():
        if isinstance(fn, str):
            given.losses.append(fn)
        elif callable(fn):
            given.losses.append(give("loss", name, fn))
        else:
            raise ConfigError(f"loss {name!r} is a {type(fn).__name__}, not a callable (logits, targets) -> scalar")
    if train_data is not None or val_data is not None or test_data is not None:
        given.data, given.shares = _data(train_data, val_data, test_data, classes, data_name, num_workers)
    return given


def _named(name: str | None, what: str, keyword: str, value: Any) -> str:
    if not name:
        raise ConfigError(f"{what}= is a Python object ({type(value).__name__}) with no import path: name it with "
                          f"{keyword}=, which a resume gives again")
    return name


def _data(train: Any, val: Any, test: Any, classes: Sequence[str] | None, name: str | None,
          num_workers: int) -> tuple[str, dict[str, float]]:
    from lrtune.training.user_data import user_sets

    if train is None or val is None:
        raise ConfigError("your own data needs both train_data= and val_data= (and optionally test_data=)")
    if not classes:
        raise ConfigError("train_data= needs classes=, the names of its labels 0, 1, ... in order")
    text = user_sets(train=train, val=val, test=test, classes=list(classes), name=_named(name, "train_data", "data_name", train),
                     num_workers=num_workers)
    total = len(train) + len(val) + (len(test) if test is not None else 0)
    return text, {"val_fraction": round(len(val) / total, 6),
                  "test_fraction": round(len(test) / total, 6) if test is not None else 0.0}
