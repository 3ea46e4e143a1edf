"""``lrtune search``: run, or resume, a study."""

from __future__ import annotations

import argparse
import shlex
from typing import Sequence

from lrtune.cli.options import add_field, given_fields, resolve_config, verbosity
from lrtune.cli.output import format_summary
from lrtune.config import Config, metric_label
from lrtune.errors import SIGNAL_EXIT, SearchInterrupted
from lrtune.progress import ConsoleProgress

GROUPS = {
    "data": ("data", "data_root", "image_size", "val_fraction", "test_fraction", "cache", "skip_bad_images", "balance",
             "hflip", "affine", "color", "rare_affine", "crop", "augment", "num_workers"),
    "model and training": ("model", "pretrained", "weights", "epochs", "batch_size", "optimizer", "weight_decay",
                           "momentum", "warmup_epochs", "device", "threads", "amp", "compile", "compile_mode", "diverge_factor"),
    "search space": ("lr_min", "lr_max", "schedulers", "losses", "accum", "lr_range", "baselines", "space", "body_lrs",
                     "body_ratio", "layer_decay", "warmup_max", "head_epochs"),
    "study": ("metric", "trials", "timeout", "sampler", "pruner", "pruner_warmup", "seed", "workers", "fuse", "keep", "force",
              "track"),
    "many machines": ("artifacts", "storage_retry", "heartbeat_interval", "heartbeat_grace"),
}


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "search",
        parents=[common],
        help="run (or resume) a study",
        description="Run an Optuna study over LR, scheduler, loss and accumulation. "
        "Running the same command again resumes the study up to --trials finished trials. "
        "On an existing study, options not given are taken from the study: "
        "`lrtune search --storage URL --study NAME` joins it from any machine.",
    )
    for title, names in GROUPS.items():
        group = parser.add_argument_group(title)
        for name in names:
            add_field(group, name)
        if title == "search space":
            group.add_argument("--loss", action="append", default=[], metavar="MODULE:CALLABLE",
                               help="add your own loss to the searched ones (again for more): module:callable or "
                               "path/to/file.py:callable, importable from the current folder, a function (logits, "
                               "targets, **params) -> scalar; its dict attribute space declares its searched params")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved config, the data and the estimated time, and run nothing")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from lrtune.api import search

    cfg = resolve_config(args)
    progress = ConsoleProgress(cfg.trials, verbosity=verbosity(args), metric=metric_label(cfg.metric))
    if args.dry_run:
        return dry_run(cfg, progress)
    try:
        study = search(config=cfg, progress=progress, given=given_fields(args), loss={ref: ref for ref in args.loss})
    except SearchInterrupted as exc:
        progress.message(
            "interrupted; the running trial continues from its last epoch on resume: "
            + shlex.join(["lrtune", *argv])
        )
        return SIGNAL_EXIT.get(exc.signum, 1)
    print(format_summary(study))
    return 0


def dry_run(cfg: Config, progress: ConsoleProgress) -> int:
    """The estimate on stderr's last line; the resolved config and the data's summary on stdout."""
    from lrtune.api import estimate

    plan = estimate(config=cfg, progress=progress)
    data = plan["data"]
    print("config:")
    for key, value in plan["config"].items():
        print(f"  {key} = {value!r}")
    counts = ", ".join(f"{name} {n}" for name, n in zip(data["classes"], data["train_counts"]))
    print(f"data: {data['name']}, {len(data['classes'])} classes, {data['n_train']} training and {data['n_val']} "
          f"validation images at {data['image_size']} px" + (f", {data['n_test']} test" if "n_test" in data else ""))
    print(f"  training images per class: {counts}")
    print(plan["estimate"]["line"])
    return 0
