"""The commands that only read a storage: ``studies``, ``show``, ``report`` and ``track``."""

from __future__ import annotations

import argparse
import json
from typing import Sequence

from lrtune.cli.options import resolve_config
from lrtune.cli.output import format_summary, show_json, studies_table


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    studies = sub.add_parser("studies", parents=[common], help="list the studies in a storage")
    studies.add_argument("--json", action="store_true", help="print JSON instead of a table")
    studies.set_defaults(handler=run_studies)

    show = sub.add_parser("show", parents=[common], help="top trials and the best configuration of a study")
    show.add_argument("--top", type=int, default=10, help="how many trials to list [default: 10]")
    show.add_argument("--json", action="store_true", help="print JSON instead of a table")
    show.set_defaults(handler=run_show)

    report = sub.add_parser("report", parents=[common], help="write an HTML report of a study")
    report.add_argument("--out", metavar="FILE", help="output file [default: STUDIES_DIR/<study>/report.html]")
    report.add_argument(
        "--plotlyjs",
        choices=("inline", "cdn"),
        default="inline",
        help="embed plotly.js (works offline) or load it from a CDN (small file) [default: inline]",
    )
    report.set_defaults(handler=run_report)

    track = sub.add_parser("track", parents=[common], help="log a study's trials to MLflow or TensorBoard",
                           description="Log every ended trial of a study, from its storage, to a tracker; trials "
                           "the tracker holds already are skipped, so running it again adds only what is new.")
    track.add_argument("--to", action="append", required=True, metavar="TRACKER",
                       help="mlflow[=URI] or tensorboard[=DIR]; give it again for several")
    track.set_defaults(handler=run_track)


def run_studies(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from lrtune.api import list_studies

    cfg = resolve_config(args)
    rows = list_studies(storage=cfg.storage or None, studies_dir=cfg.studies_dir)
    print(json.dumps(rows, indent=2) if args.json else studies_table(rows))
    return 0


def run_show(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from lrtune.api import open_study

    cfg = resolve_config(args)
    study = open_study(name=cfg.study or None, storage=cfg.storage or None, studies_dir=cfg.studies_dir)
    top = max(1, args.top)
    print(json.dumps(show_json(study, top), indent=2) if args.json else format_summary(study, top=top))
    return 0


def run_report(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from lrtune.api import open_study, write_report

    cfg = resolve_config(args)
    study = open_study(name=cfg.study or None, storage=cfg.storage or None, studies_dir=cfg.studies_dir)
    print(write_report(study=study, out=args.out, studies_dir=cfg.studies_dir, plotlyjs=args.plotlyjs))
    return 0


def run_track(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from lrtune.api import open_study, track
    from lrtune.progress import ConsoleProgress
    from lrtune.cli.options import verbosity

    cfg = resolve_config(args)
    study = open_study(name=cfg.study or None, storage=cfg.storage or None, studies_dir=cfg.studies_dir)
    logged = track(study=study, to=args.to, studies_dir=cfg.studies_dir, progress=ConsoleProgress(verbosity=verbosity(args)))
    for kind, count in logged.items():
        print(f"{kind}: logged {count} trial(s) of study {study.study_name}")
    return 0
