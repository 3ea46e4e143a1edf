"""Options shared by the commands: every config field as a flag, with its help, default and variable."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import typing

from lrtune import config as config_mod
from lrtune.config import FIELDS, Config


def _field_help() -> dict[str, str]:
    """Each config field's help text: the comment beside it in config.py."""
    source = inspect.getsource(Config)
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^\s+(\w+):[^#\n]*#\s*(.+)$", source, re.M)}


HELP = _field_help()
COMMON_FIELDS = ("study", "storage", "studies_dir")


def add_field(parser: argparse._ActionsContainer, name: str) -> None:
    """``--name`` for config field ``name``; its help names the default and the environment variable."""
    hint = typing.get_type_hints(Config)[name]
    spec = FIELDS[name]
    default = spec.default_factory() if spec.default is dataclasses.MISSING else spec.default  # type: ignore[misc]
    shown = ",".join(map(str, default)) if isinstance(default, list) else default
    if name in ("threads", "fuse") and default == 0:
        shown = "auto"
    text = f"{HELP.get(name, '')} [default: {shown!s}; env LRTUNE_{name.upper()}]".replace("%", "%%")
    flag = "--" + name.replace("_", "-")
    if hint is bool:
        parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
    else:
        metavar = "A,B,..." if typing.get_origin(hint) is list else name.split("_")[-1].upper()
        parser.add_argument(flag, dest=name, default=None, metavar=metavar, help=text)


def common_parser() -> argparse.ArgumentParser:
    """The parent of every command: config file, storage, study, verbosity and --debug."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("storage and output")
    group.add_argument("--config", metavar="FILE", help="TOML config file [env LRTUNE_CONFIG]")
    for name in COMMON_FIELDS:
        add_field(group, name)
    group.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    group.add_argument(
        "-v", "--verbose", action="count", default=0, help="more progress: -v every epoch, -vv also Optuna's log"
    )
    group.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return common


def _flags(args: argparse.Namespace) -> dict[str, object]:
    return {name: getattr(args, name) for name in FIELDS if getattr(args, name, None) is not None}


def resolve_config(args: argparse.Namespace) -> Config:
    return config_mod.resolve(_flags(args), config_file=args.config)


def given_fields(args: argparse.Namespace) -> frozenset[str]:
    """The fields the user set by flag, ``LRTUNE_*`` or config file; a joined study supplies the rest."""
    return config_mod.explicit_fields(_flags(args), config_file=args.config)


def verbosity(args: argparse.Namespace) -> int:
    """0 quiet, 1 normal, 2 every epoch, 3 and up also the libraries' logs."""
    return 0 if args.quiet else 1 + args.verbose
