"""``lrtune confirm``: the top configurations and the baselines retrained from fresh seeds, ranked by the mean."""

from __future__ import annotations

import argparse
import shlex
from typing import Sequence

from lrtune.cli.options import resolve_config, verbosity
from lrtune.cli.output import study_metric
from lrtune.config import metric_label
from lrtune.errors import SIGNAL_EXIT, SearchInterrupted
from lrtune.formatting import format_against_lr_free, format_confirmed
from lrtune.progress import ConsoleProgress


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "confirm",
        parents=[common],
        help="retrain the top configurations and the baselines with fresh seeds; rank them by the mean",
        description="Retrain a study's top configurations (--top), its LR baseline and its LR-free baselines "
        "with --seeds fresh seeds each, each run the same training a trial runs, and rank them by their mean "
        "validation value with a 95%% interval; with a test split, score them there too. The runs are trials "
        "of the study <study>.confirm: running the same command again continues them after a crash, and the "
        "study's own trials are left as they are. `train` and `export` then take the confirmed winner.",
    )
    parser.add_argument("--top", type=int, default=3, metavar="K", help="tuned configurations to confirm [default: 3]")
    parser.add_argument("--seeds", type=int, default=3, metavar="S", help="fresh seeds per configuration [default: 3]")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps [default: auto]")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from lrtune.api import confirm, open_study
    from lrtune.storage import completed_roles

    cfg = resolve_config(args)
    study = open_study(name=cfg.study or None, storage=cfg.storage or None, studies_dir=cfg.studies_dir)
    metric = study_metric(study)
    progress = ConsoleProgress(verbosity=verbosity(args), metric=metric_label(metric))
    try:
        record = confirm(study=study, top=args.top, seeds=args.seeds, device=args.device,
                         studies_dir=cfg.studies_dir, progress=progress)
    except SearchInterrupted as exc:
        progress.message("interrupted; the running run continues from its last epoch on resume: "
                         + shlex.join(["lrtune", *argv]))
        return SIGNAL_EXIT.get(exc.signum, 1)
    lines = format_confirmed(record) + format_against_lr_free(completed_roles(study), record, metric)
    print("\n".join(lines))
    return 0
