"""The ``lrtune`` command: a table of subcommands over the library.

Results go to stdout; logs, progress and errors to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import multiprocessing
import os
import re
import shlex
import signal
import sys
import traceback
import typing
from pathlib import Path
from typing import Any, Callable, Sequence

from lrtune import config as config_mod
from lrtune.config import FIELDS, Config
from lrtune.errors import LRTuneError

EXIT_ERROR = 1
EXIT_USAGE = 2
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


def abort(text: str, code: int = EXIT_ERROR) -> int:
    print(f"lrtune: error: {text}", file=sys.stderr)
    return code


# -- argument parsing ------------------------------------------------------------


def _field_help() -> dict[str, str]:
    """Each config field's help text: the comment beside it in config.py."""
    source = inspect.getsource(Config)
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^\s+(\w+):[^#\n]*#\s*(.+)$", source, re.M)}


SEARCH_GROUPS = {
    "data": ("data", "data_root", "image_size", "val_fraction", "cache", "skip_bad_images", "balance",
             "hflip", "affine", "color", "rare_affine", "num_workers"),
    "model and training": ("model", "pretrained", "weights", "epochs", "batch_size", "optimizer", "weight_decay",
                           "momentum", "warmup_epochs", "device", "amp", "diverge_factor"),
    "search space": ("lr_min", "lr_max", "schedulers", "losses", "accum"),
    "study": ("trials", "timeout", "sampler", "pruner", "pruner_warmup", "seed", "workers", "keep", "force"),
}
COMMON_FIELDS = ("study", "storage", "studies_dir")


def _add_field(parser: argparse._ActionsContainer, name: str, helps: dict[str, str]) -> None:
    hint = typing.get_type_hints(Config)[name]
    spec = FIELDS[name]
    default = spec.default_factory() if spec.default is dataclasses.MISSING else spec.default  # type: ignore[misc]
    shown = ",".join(map(str, default)) if isinstance(default, list) else default
    text = f"{helps.get(name, '')} [default: {shown!s}; env LRTUNE_{name.upper()}]".replace("%", "%%")
    flag = "--" + name.replace("_", "-")
    if hint is bool:
        parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
    else:
        metavar = "A,B,..." if typing.get_origin(hint) is list else name.split("_")[-1].upper()
        parser.add_argument(flag, dest=name, default=None, metavar=metavar, help=text)


def build_parser() -> argparse.ArgumentParser:
    helps = _field_help()
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("storage and output")
    group.add_argument("--config", metavar="FILE", help="TOML config file [env LRTUNE_CONFIG]")
    for name in COMMON_FIELDS:
        _add_field(group, name, helps)
    group.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    group.add_argument("-v", "--verbose", action="count", default=0, help="more progress (every epoch) and library logs")
    group.add_argument("--debug", action="store_true", help="show the full traceback on errors")

    parser = argparse.ArgumentParser(
        prog="lrtune",
        description="Tune the learning rate, scheduler, loss and gradient accumulation of a timm image classifier.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    search = sub.add_parser(
        "search",
        parents=[common],
        help="run (or resume) a study",
        description="Run an Optuna study over LR, scheduler, loss and accumulation. "
        "Running the same command again resumes the study up to --trials finished trials.",
    )
    for title, names in SEARCH_GROUPS.items():
        grp = search.add_argument_group(title)
        for name in names:
            _add_field(grp, name, helps)
    search.set_defaults(handler=cmd_search)

    studies = sub.add_parser("studies", parents=[common], help="list the studies in a storage")
    studies.add_argument("--json", action="store_true", help="print JSON instead of a table")
    studies.set_defaults(handler=cmd_studies)

    show = sub.add_parser("show", parents=[common], help="top trials and the best configuration of a study")
    show.add_argument("--top", type=int, default=10, help="how many trials to list [default: 10]")
    show.add_argument("--json", action="store_true", help="print JSON instead of a table")
    show.set_defaults(handler=cmd_show)

    report = sub.add_parser("report", parents=[common], help="write an HTML report of a study")
    report.add_argument("--out", metavar="FILE", help="output file [default: STUDIES_DIR/<study>/report.html]")
    report.add_argument(
        "--plotlyjs",
        choices=("inline", "cdn"),
        default="inline",
        help="embed plotly.js (works offline) or load it from a CDN (small file) [default: inline]",
    )
    report.set_defaults(handler=cmd_report)
    return parser


def resolve_config(args: argparse.Namespace) -> Config:
    given = {name: getattr(args, name) for name in FIELDS if getattr(args, name, None) is not None}
    return config_mod.resolve(given, config_file=args.config)


def verbosity(args: argparse.Namespace) -> int:
    return 0 if args.quiet else 1 + args.verbose


def _quiet_libraries(level: int) -> None:
    import logging
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.INFO if level >= 3 else optuna.logging.ERROR)
    if level < 3:
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message=".*upsample_bilinear2d.*")
        logging.getLogger("timm").setLevel(logging.ERROR)


# -- search ------------------------------------------------------------------------


class _Signals:
    """Turn SIGINT and SIGTERM into a stop request that the training loop honours."""

    def __init__(self, on_signal: Callable[[int], None] | None = None) -> None:
        from lrtune.objective import StopFlag

        self.flag = StopFlag()
        self.on_signal = on_signal
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_Signals":
        for sig in SIGNAL_EXIT:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.flag.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.flag.signum = signum
        if self.on_signal is not None:
            self.on_signal(signum)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def resume_command(argv: Sequence[str]) -> str:
    return shlex.join(["lrtune", *argv])


def cmd_search(args: argparse.Namespace, argv: Sequence[str]) -> int:
    cfg = resolve_config(args)
    level = verbosity(args)
    _quiet_libraries(level)
    from optuna.trial import TrialState

    from lrtune import study as study_mod
    from lrtune.progress import Progress

    study_mod.check_names(cfg)
    name = cfg.study or study_mod.default_study_name(cfg)
    progress = Progress(cfg.trials, verbosity=level)
    storage = study_mod.open_storage(cfg.storage or study_mod.default_storage_url(cfg.studies_dir), heartbeat=True)
    if name in study_mod.study_names(storage):
        existing = study_mod.load_study(storage, name)
        study_mod.check_config(existing, cfg)
        done = study_mod.count_finished(existing)
        if done >= cfg.trials and not existing.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            progress.message(f"study {name!r} already has {done} finished trials (--trials {cfg.trials}); nothing to run")
            print(format_summary(existing))
            return 0
    from lrtune import data
    from lrtune.objective import Objective  # imports torch, timm and albumentations: after the early exit
    from lrtune.train import Interrupted

    data.SHOW_PROGRESS = level > 0

    with _Signals() as signals:
        objective = Objective(cfg, study_dir=study_mod.study_dir(cfg.studies_dir, name), stop=signals.flag, progress=progress)
        study = study_mod.prepare_study(cfg, objective=objective, storage=storage)
        recovered = study_mod.recover_orphans(study)
        if recovered:
            progress.message(f"re-queued trial(s) {', '.join(map(str, recovered))} left running by a dead process")
        done = study_mod.count_finished(study)
        if done >= cfg.trials:
            progress.message(f"study {name!r} already has {done} finished trials (--trials {cfg.trials}); nothing to run")
            print(format_summary(study))
            return 0
        verb = "resuming" if done else "starting"
        progress.message(
            f"{verb} study {name!r}: {done} of {cfg.trials} trials finished, {cfg.trials - done} to go "
            f"(storage {study_mod.mask_url(cfg.storage or study_mod.default_storage_url(cfg.studies_dir))}, "
            f"device {objective.device})"
        )
        progress.start(study)
        try:
            if cfg.workers > 1:
                code = run_workers(cfg, name, level, signals)
                if code:
                    return code
            else:
                study_mod.optimize(study, objective, cfg, stop=signals.flag, progress=progress)
        except Interrupted:
            pass
        if signals.flag.signum is not None:
            progress.message(f"interrupted; the running trial continues from its last epoch on resume: {resume_command(argv)}")
            return SIGNAL_EXIT[signals.flag.signum]
    print(format_summary(study))
    return 0


def _worker_main(cfg_values: dict, name: str, index: int, level: int, device: str) -> None:
    """One local worker process: its own objective on the shared study."""
    cfg = config_mod.from_dict({**cfg_values, "device": device})
    _quiet_libraries(level)
    import optuna
    import torch

    if not device.startswith("cuda"):
        # Workers share the CPU's cores instead of each spawning a thread per core.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // cfg.workers))

    from lrtune import data
    from lrtune import study as study_mod
    from lrtune.objective import Objective
    from lrtune.progress import Progress
    from lrtune.train import Interrupted

    data.SHOW_PROGRESS = False  # the parent process shows its own decoding progress
    progress = Progress(cfg.trials, verbosity=level, prefix=f"[worker {index}] ")
    with _Signals() as signals:
        try:
            objective = Objective(cfg, study_dir=study_mod.study_dir(cfg.studies_dir, name), stop=signals.flag, progress=progress)
            storage = study_mod.open_storage(cfg.storage or study_mod.default_storage_url(cfg.studies_dir), heartbeat=True)
            study = optuna.load_study(study_name=name, storage=storage)
            study.sampler = study_mod.create_sampler(cfg.sampler, study_mod.sampler_seed(cfg, study, index))
            study.pruner = study_mod.create_pruner(cfg.pruner, warmup=cfg.pruner_warmup, epochs=cfg.epochs)
            progress.start(study)
            if study_mod.count_finished(study) < cfg.trials:
                study_mod.optimize(study, objective, cfg, stop=signals.flag, progress=progress)
        except Interrupted:
            pass
        except LRTuneError as exc:
            print(f"lrtune: error: [worker {index}] {exc}", file=sys.stderr)
            sys.exit(EXIT_ERROR)
        if signals.flag.signum is not None:
            sys.exit(SIGNAL_EXIT[signals.flag.signum])


def run_workers(cfg: Config, name: str, level: int, signals: _Signals) -> int:
    """Run ``cfg.workers`` processes on the study, one per GPU when several are visible."""
    import torch

    n_gpus = torch.cuda.device_count() if cfg.device in ("auto", "cuda") else 0
    ctx = multiprocessing.get_context("spawn")
    procs = []
    values = config_mod.to_dict(cfg)
    for index in range(cfg.workers):
        device = f"cuda:{index % n_gpus}" if n_gpus > 1 else cfg.device
        proc = ctx.Process(target=_worker_main, args=(values, name, index, level, device), daemon=False)
        proc.start()
        procs.append(proc)

    def forward(signum: int) -> None:
        for proc in procs:
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signum)

    signals.on_signal = forward
    for proc in procs:
        proc.join()
    codes = [proc.exitcode or 0 for proc in procs]
    if signals.flag.signum is not None:
        return 0
    bad = [c for c in codes if c not in (0,)]
    return bad[0] if bad else 0


# -- output ------------------------------------------------------------------------


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _trial_row(t: Any) -> list[str]:
    p = t.params
    extras = {k: v for k, v in p.items() if k not in ("lr", "scheduler", "loss", "accum")}
    epochs = len(t.user_attrs.get("curves", {}).get("epoch", [])) or len(t.intermediate_values)
    return [
        str(t.number),
        t.state.name.lower(),
        f"{t.value:.4f}" if t.value is not None else "-",
        _fmt(p.get("lr", "-")),
        str(p.get("scheduler", "-")),
        str(p.get("loss", "-")),
        str(p.get("accum", "-")),
        str(epochs),
        " ".join(f"{k}={_fmt(v)}" for k, v in sorted(extras.items())),
    ]


TRIAL_HEADER = ["trial", "state", "macro-F1", "lr", "scheduler", "loss", "accum", "epochs", "other"]


def format_summary(study: Any, top: int = 5) -> str:
    from optuna.trial import TrialState

    from lrtune import study as study_mod

    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState if any(t.state == s for t in trials)}
    best = study_mod.top_trials(study, top)
    lines = [f"study {study.study_name}: " + ", ".join(f"{n} {k}" for k, n in counts.items())]
    if best:
        lines.append(_table([_trial_row(t) for t in best], TRIAL_HEADER))
        b = best[0]
        lines.append(f"best: trial {b.number}, macro-F1 {b.value:.4f}, " + ", ".join(f"{k}={_fmt(v)}" for k, v in b.params.items()))
        baseline = [t for t in trials if t.user_attrs.get("baseline") and t.value is not None]
        if baseline:
            lines.append(f"baseline (trial {baseline[0].number}): macro-F1 {baseline[0].value:.4f}, gain {b.value - baseline[0].value:+.4f}")
    else:
        lines.append("no finished trials yet")
    speeds = sorted(t.user_attrs["images_per_s"] for t in trials if t.user_attrs.get("images_per_s"))
    if speeds:
        lines.append(f"training throughput: {speeds[len(speeds) // 2]:.0f} images/s (median over {len(speeds)} trials)")
    return "\n".join(lines)


def _existing_storage_url(cfg: Config) -> str:
    """The storage to read; the default SQLite file must exist already (reading never creates one)."""
    from lrtune import study as study_mod

    if cfg.storage:
        return cfg.storage
    path = Path(cfg.studies_dir, study_mod.DB_NAME)
    if not path.is_file():
        raise LRTuneError(f"no study database at {path}; run `lrtune search` first")
    return study_mod.default_storage_url(cfg.studies_dir)


def _open(args: argparse.Namespace) -> tuple[Config, Any]:
    from lrtune import study as study_mod

    cfg = resolve_config(args)
    return cfg, study_mod.open_storage(_existing_storage_url(cfg))


def _pick_study(cfg: Config, storage: Any) -> Any:
    from lrtune import study as study_mod

    if cfg.study:
        return study_mod.load_study(storage, cfg.study)
    latest = study_mod.latest_study_name(storage)
    if latest is None:
        raise LRTuneError(f"no studies in {study_mod.mask_url(storage.url)}")
    return study_mod.load_study(storage, latest)


def cmd_studies(args: argparse.Namespace, argv: Sequence[str]) -> int:
    _quiet_libraries(verbosity(args))
    cfg, storage = _open(args)
    rows = []
    from optuna.trial import TrialState

    for summary in storage.get_all_studies():
        trials = storage.get_all_trials(summary._study_id, deepcopy=False)
        done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        values = [t.value for t in done if t.value is not None]
        rows.append(
            {
                "study": summary.study_name,
                "finished": len(done),
                "pruned": sum(t.state == TrialState.PRUNED for t in trials),
                "failed": sum(t.state == TrialState.FAIL for t in trials),
                "running": sum(t.state == TrialState.RUNNING for t in trials),
                "best": max(values) if values else None,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no studies")
    else:
        header = list(rows[0])
        print(_table([[("-" if r[k] is None else f"{r[k]:.4f}" if k == "best" else r[k]) for k in header] for r in rows], header))
    return 0


def cmd_show(args: argparse.Namespace, argv: Sequence[str]) -> int:
    _quiet_libraries(verbosity(args))
    cfg, storage = _open(args)
    study = _pick_study(cfg, storage)
    from lrtune import study as study_mod

    top = study_mod.top_trials(study, max(1, args.top))
    if args.json:
        best = top[0] if top else None
        print(
            json.dumps(
                {
                    "study": study.study_name,
                    "config": study.user_attrs.get("config"),
                    "best": None
                    if best is None
                    else {"trial": best.number, "value": best.value, "params": best.params, "metrics": best.user_attrs.get("best")},
                    "top": [{"trial": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params} for t in top],
                },
                indent=2,
            )
        )
        return 0
    print(format_summary(study, top=max(1, args.top)))
    return 0


def cmd_report(args: argparse.Namespace, argv: Sequence[str]) -> int:
    _quiet_libraries(verbosity(args))
    cfg = resolve_config(args)
    from lrtune.report import run_report

    path = run_report(_existing_storage_url(cfg), cfg.study or None, args.out, studies_dir=cfg.studies_dir, plotlyjs=args.plotlyjs)
    print(path)
    return 0


# -- entry point ---------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
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
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return abort(f"unexpected {type(exc).__name__}: {first} (run with --debug for the traceback)")
