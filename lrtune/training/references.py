"""The user's own parts: a model or a loss named by an import reference, or given as a Python object.

A reference is ``module:callable`` (``nets.faces:build``) or ``path/to/file.py:callable``, imported with the
current folder on the path, so a resume and a second machine that run from the same folder load the same
thing. A Python object given to the API has no import path: it is kept for this process under the name it
was given, written ``object:<name>`` in the config, so a study records which one it ran with.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Any

from lrtune.config import OBJECT
from lrtune.errors import ConfigError, LRTuneError, first_line

_REFERENCE = re.compile(r"^(?P<module>[A-Za-z_][\w.]*|[^:]+\.py):(?P<attr>[A-Za-z_]\w*(\.[A-Za-z_]\w*)*)$")
_NAME = re.compile(r"^[A-Za-z0-9_][\w.-]*$")
_given: dict[tuple[str, str], Any] = {}  # (kind, name) -> the object this process was given


def is_reference(text: str) -> bool:
    """``module:callable`` or ``file.py:callable`` (timm's ``hf-hub:org/name`` is not one)."""
    return bool(_REFERENCE.match(text))


def is_user_part(text: str) -> bool:
    """A reference, or the name of an object given to the API."""
    return text.startswith(OBJECT) or is_reference(text)


def short_name(text: str) -> str:
    """What a part is called in a trial's parameters: a reference's callable, an object's name, else the text."""
    if text.startswith(OBJECT):
        return text[len(OBJECT):]
    match = _REFERENCE.match(text)
    return match.group("attr").rsplit(".", 1)[-1] if match else text


def give(kind: str, name: str, value: Any) -> str:
    """Keep ``value`` for this process as the ``kind`` (model, loss) called ``name``; its config text."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{kind} name {name!r} must be letters, digits, '_', '.' or '-'")
    _given[(kind, name)] = value
    return OBJECT + name


def resolve(text: str, *, kind: str, error: type[LRTuneError] = ConfigError) -> Any:
    """The object a reference or an ``object:`` name stands for; ``error`` with one line when it cannot be had."""
    if text.startswith(OBJECT):
        name = text[len(OBJECT):]
        if (kind, name) not in _given:
            raise error(
                f"{kind} {name!r} was a Python object given to an earlier call: give it again in this process "
                f"({kind}=..., {kind}_name={name!r}), or name an importable 'module:callable' instead"
            )
        return _given[(kind, name)]
    match = _REFERENCE.match(text)
    if match is None:
        raise error(f"{kind} reference {text!r} is not 'module:callable' or 'path/to/file.py:callable'")
    module = _import(match.group("module"), text, kind, error)
    value: Any = module
    for part in match.group("attr").split("."):
        if not hasattr(value, part):
            raise error(f"cannot import {kind} {text!r}: {match.group('module')} has no attribute {part!r}")
        value = getattr(value, part)
    if not callable(value):
        raise error(f"{kind} {text!r} is a value of type {type(value).__name__}, not a callable")
    return value


def _import(module: str, text: str, kind: str, error: type[LRTuneError]) -> Any:
    """The module, imported from the current folder (a module path) or from its file (a ``.py`` path)."""
    try:
        if not module.endswith(".py"):
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            return importlib.import_module(module)
        path = Path(module).resolve()
        if not path.is_file():
            raise error(f"cannot import {kind} {text!r}: no file {module}")
        name = "lrtune_user_" + re.sub(r"\W", "_", str(path))
        if name in sys.modules:
            return sys.modules[name]
        if str(path.parent) not in sys.path:  # its neighbours import, as when Python runs the file
            sys.path.insert(0, str(path.parent))
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[name] = loaded
        try:
            spec.loader.exec_module(loaded)
        except BaseException:
            del sys.modules[name]
            raise
        return loaded
    except LRTuneError:
        raise
    except Exception as exc:  # the user's module may raise anything while it imports
        raise error(f"cannot import {kind} {text!r}: {type(exc).__name__}: {first_line(exc)}") from exc

