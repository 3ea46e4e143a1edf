"""The ``lrtune`` command: a table of subcommands over the library.

Results go to stdout; logs, progress and errors to stderr. A command's
handler returns the exit code; ``main`` turns errors into one line and a code.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import logging
import os
import sys
import threading
import traceback
from typing import Sequence

from lrtune.cli import confirm, deploy, lr_find, read, search
from lrtune.cli.options import common_parser, verbosity
from lrtune.errors import LRTuneError, first_line, is_no_space

EXIT_ERROR = 1
EXIT_USAGE = 2

# Each module adds its subcommands with register(sub, common).
COMMANDS = (search, lr_find, confirm, read, deploy)


def build_parser() -> argparse.ArgumentParser:
    common = common_parser()
    parser = argparse.ArgumentParser(
        prog="lrtune",
        description="Tune the learning rate, scheduler, loss and gradient accumulation of a timm image classifier.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub, common)
    return parser


def abort(text: str, code: int = EXIT_ERROR) -> int:
    print(f"lrtune: error: {text}", file=sys.stderr)
    return code


# Importing torch, timm and albumentations creates millions of objects that live as long as the process; at
# Python's thresholds (700, 10, 10) the collector scans them again and again, a second of every command's start
# (benchmarks/startup.py). Cyclic garbage waits for 50,000 new objects instead of 700.
GC_THRESHOLDS = (50_000, 20, 100)


def _configure_process(level: int, debug: bool = False) -> None:
    """The command line owns its process: no update checks, library logs only when asked for, a thread's error
    as one line (its traceback with ``--debug``), and the garbage collector run less often
    (``GC_THRESHOLDS``)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations asks PyPI for updates on import otherwise
    gc.set_threshold(*GC_THRESHOLDS)
    if not debug:
        threading.excepthook = _thread_error
    if level >= 3:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.DEBUG)
    else:
        import warnings

        warnings.filterwarnings("ignore", message=".*upsample_bilinear2d.*")
        logging.getLogger("timm").setLevel(logging.ERROR)


def _thread_error(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    name = args.thread.name if args.thread is not None else "a thread"
    print(f"lrtune: error in {name}: {type(args.exc_value).__name__}: {first_line(args.exc_value)} "
          "(run with --debug for the traceback)", file=sys.stderr)


def run() -> None:
    """The ``lrtune`` command: ``main``, then the end of the process without its heap torn down.

    Freeing what torch, timm and a search built, object by object, took about
    two seconds after every search's last line (benchmarks/startup.py), and
    nothing of it needs undoing: the studies, checkpoints and reports are on
    disk by then. The exit handlers still run (a loader process, a tracker's
    last write). A thread that has not ended keeps Python's ordinary exit, which
    waits for it.
    """
    code = main()
    _flush()
    if any(thread.is_alive() and not thread.daemon for thread in threading.enumerate()
           if thread is not threading.main_thread()):
        raise SystemExit(code)
    atexit._run_exitfuncs()
    _flush()
    os._exit(code)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    _configure_process(verbosity(args), bool(getattr(args, "debug", False)))
    try:
        return args.handler(args, argv)
    except LRTuneError as exc:
        if args.debug:
            traceback.print_exc()
        return abort(str(exc))
    except KeyboardInterrupt:
        print("lrtune: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the one place an unexpected error becomes a message and an exit code
        if args.debug:
            traceback.print_exc()
            return EXIT_ERROR
        if is_no_space(exc):
            return abort(f"no space left on a disk: {first_line(exc)}")
        return abort(f"unexpected {type(exc).__name__}: {first_line(exc)} (run with --debug for the traceback)")
