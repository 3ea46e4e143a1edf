"""``lrtune lr-find``: an LR range test on the search's data, model and batch; the suggestion on stdout."""

from __future__ import annotations

import argparse
from typing import Sequence

from lrtune.cli.options import add_field, resolve_config, verbosity
from lrtune.cli.search import GROUPS
from lrtune.formatting import format_value
from lrtune.progress import ConsoleProgress

SWEEP_FIELDS = ("lr_min", "losses", "accum", "seed")


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "lr-find",
        parents=[common],
        help="run an LR range test and print the LR it suggests",
        description="Train for a few steps while the LR grows exponentially, one value per optimizer step, "
        "and suggest an LR from the smoothed loss (steepest descent, valley, minimum / 10: the middle one). "
        "It uses the search's data, model and batch, with the baseline trial's loss and accumulation: "
        "the first of --losses (ce when listed) and the smallest of --accum (1 when listed).",
    )
    sweep = parser.add_argument_group("sweep")
    sweep.add_argument("--start", type=float, default=None, metavar="LR",
                       help="first LR [default: --lr-min / 100]")
    sweep.add_argument("--end", type=float, default=10.0, metavar="LR", help="last LR [default: 10]")
    sweep.add_argument("--steps", type=int, default=100, metavar="N", help="optimizer steps [default: 100]")
    sweep.add_argument("--plot", metavar="FILE", default=None,
                       help="write the loss-vs-LR figure with the suggestions marked to this HTML file")
    for name in SWEEP_FIELDS:
        add_field(sweep, name)
    for title in ("data", "model and training"):
        group = parser.add_argument_group(title)
        for name in GROUPS[title]:
            add_field(group, name)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from lrtune.api import lr_find
    from lrtune.report import write_lr_range_plot

    cfg = resolve_config(args)
    progress = ConsoleProgress(verbosity=verbosity(args))
    result = lr_find(config=cfg, start=args.start, end=args.end, steps=args.steps, progress=progress)
    if args.plot:
        path = write_lr_range_plot(result.to_dict(), out=args.plot)
        progress.message(f"plot written to {path}")
    print(format_result(result))
    return 0


def format_result(result) -> str:  # noqa: ANN001 - a RangeTestResult
    if result.suggestion is not None:
        head = f"suggested LR: {format_value(result.suggestion)} (rule: {result.rule})"
    else:
        head = f"suggested LR: none ({result.rule})"
    rules = ", ".join(f"{rule} {format_value(lr) if lr else 'none'}" for rule, lr in result.suggestions.items())
    setup = ", ".join(f"{k} {v}" for k, v in result.setup.items()).replace("_", " ")
    sweep = (f"sweep: {format_value(result.start)} to {format_value(result.end)}, {len(result.lrs)} of "
             f"{result.steps} steps ({setup}); {result.stop}")
    if result.skipped:
        sweep += f"; {result.skipped} steps skipped by the AMP scaler"
    return "\n".join([head, f"rules: {rules}", sweep])
