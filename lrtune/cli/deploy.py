"""``lrtune train``, ``predict`` and ``export``: from a finished study to a model in use."""

from __future__ import annotations

import argparse
from typing import Sequence

from lrtune.cli.options import resolve_config, verbosity
from lrtune.errors import ConfigError
from lrtune.config import metric_label
from lrtune.formatting import format_metric
from lrtune.progress import ConsoleProgress


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    train = sub.add_parser(
        "train",
        parents=[common],
        help="retrain a trial's configuration into a model folder",
        description="Retrain a trial (default: the study's best) with its parameters and seed, into "
        "STUDIES_DIR/<study>/models/<name>/ (model.safetensors, timm config.json, training.json, curves.json). "
        "Running it again after a crash continues from the last epoch.",
    )
    train.add_argument("--trial", type=int, metavar="N",
                       help="the trial to retrain [default: the confirmed winner, else the best]")
    train.add_argument(
        "--on", choices=("train", "all"), default="train",
        help="train: the training split, so validation judges the model; all: training plus validation images "
        "[default: train]",
    )
    train.add_argument("--epochs", type=int, metavar="N", help="epochs [default: the trial's best epoch]")
    train.add_argument("--name", help="model folder name [default: trial<N>-<on>]")
    train.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps [default: the study's]")
    train.set_defaults(handler=run_train)

    predict = sub.add_parser(
        "predict",
        parents=[common],
        help="label images with a model; with labels, also score them",
        description="Predict a folder, a list of image files or a CSV (path[,label]) with a model folder, or with "
        "the weights a study's trial kept (--study, --trial). Labelled input (class folders or a label column) "
        "is also scored: macro-F1, accuracy, balanced accuracy, weighted F1, ROC-AUC (the model's metric first) "
        "and per-class precision, recall and F1.",
    )
    predict.add_argument("model", nargs="?", metavar="MODEL", help="a model folder [default: the study's best trial]")
    predict.add_argument("--trial", type=int, metavar="N", help="with no MODEL: this trial's weights [default: the best]")
    predict.add_argument("--data", nargs="+", required=True, metavar="PATH", help="a folder, image files, or a CSV")
    predict.add_argument("--out", required=True, metavar="FILE", help="the CSV of predictions to write")
    predict.add_argument("--report", metavar="FILE", help="also write an HTML page with the confusion matrix")
    predict.add_argument("--tta", choices=("none", "hflip"), default="none", help="average with the flipped image")
    predict.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per batch [default: 64]")
    predict.add_argument("--skip-bad-images", action="store_true", help="skip images that cannot be decoded")
    predict.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps [default: auto]")
    predict.set_defaults(handler=run_predict)

    export = sub.add_parser(
        "export",
        parents=[common],
        help="write the best configuration (json, yaml, toml) or a model as ONNX",
        description="--format json|yaml|toml writes a trial's configuration (default: the best): parameters, "
        "training config, value, dataset, versions; the TOML is accepted by `search --config` and "
        "`train --config`. --format onnx writes a model, checked with onnxruntime when it is installed.",
    )
    export.add_argument("model", nargs="?", metavar="MODEL", help="for onnx: a model folder [default: the best trial]")
    export.add_argument("--format", choices=("json", "yaml", "toml", "onnx"), required=True)
    export.add_argument("--trial", type=int, metavar="N",
                        help="the trial [default: the confirmed winner, else the best]")
    export.add_argument("--out", metavar="FILE", help="output file [default: stdout; for onnx MODEL/model.onnx]")
    export.set_defaults(handler=run_export)


def _study(cfg):
    from lrtune.api import open_study

    return open_study(name=cfg.study or None, storage=cfg.storage or None, studies_dir=cfg.studies_dir)


def run_train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from lrtune.api import train
    from lrtune.deploy.spec import spec_from_file

    cfg = resolve_config(args)
    progress = ConsoleProgress(verbosity=verbosity(args))
    from_file = args.config is not None and spec_from_file(args.config, cfg) is not None
    result = train(
        study=None if from_file else _study(cfg),
        trial=args.trial,
        config=cfg,
        config_file=args.config if from_file else None,
        on=args.on,
        epochs=args.epochs,
        name=args.name,
        studies_dir=cfg.studies_dir,
        device=args.device,
        progress=progress,
    )
    if result.on == "train":
        trial = f" (the trial's best: {format_metric(result.trial_value)})" if args.epochs is None else ""
        progress.message(f"{result.epochs} epochs on the training split: validation {metric_label(result.metric)} "
                         f"{format_metric(result.value)}{trial}")
    else:
        progress.message(f"{result.epochs} epochs on training and validation images: no validation metric")
    print(result.folder)
    return 0


def run_predict(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from lrtune.api import load_model, predict
    from lrtune.deploy.evaluation import scores_text

    cfg = resolve_config(args)
    progress = ConsoleProgress(verbosity=verbosity(args))
    if args.model is None:
        model = load_model(study=_study(cfg), trial=args.trial, studies_dir=cfg.studies_dir, device=args.device)
    else:
        if args.trial is not None:
            raise ConfigError("--trial picks a study's trial; give it without MODEL")
        model = load_model(path=args.model, device=args.device)
    pred = predict(
        model=model, data=args.data, out=args.out, report=args.report, batch_size=args.batch_size,
        tta=args.tta, skip_bad_images=args.skip_bad_images, progress=progress,
    )
    if pred.skipped:
        progress.message(f"skipped {len(pred.skipped)} images that could not be decoded, the first: {pred.skipped[0]}")
    ev = pred.evaluation()
    if ev is not None:
        print(scores_text(ev, pred.classes, pred.metric))
    progress.message(f"{len(pred.names)} predictions written to {args.out}")
    return 0


def run_export(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from pathlib import Path

    from lrtune.api import export_config, export_onnx, load_model
    from lrtune.deploy.spec import confirmed_winner

    cfg = resolve_config(args)
    progress = ConsoleProgress(verbosity=verbosity(args))
    study = _study(cfg) if args.model is None else None
    winner = confirmed_winner(study) if study is not None and args.trial is None else None
    if args.format != "onnx":
        if study is None:
            raise ConfigError(f"--format {args.format} exports a study's trial; give --study (and --trial), not MODEL")
        text = export_config(study=study, trial=args.trial, format=args.format, out=args.out)
        if winner is not None:
            progress.message(f"exported trial {winner[0]}, {winner[1]}")
        if args.out is None:
            print(text, end="")
        else:
            print(args.out)
        return 0
    if args.model is not None:
        model = load_model(path=args.model)
        out = args.out or str(Path(args.model) / "model.onnx")
    else:
        if args.out is None:
            raise ConfigError("--format onnx of a study's trial needs --out FILE")
        trial = winner[0] if winner is not None else args.trial
        model = load_model(study=study, trial=trial, studies_dir=cfg.studies_dir)
        out = args.out
    result = export_onnx(model=model, out=out)
    if winner is not None:
        progress.message(f"exported trial {winner[0]}, {winner[1]}")
    if result.max_abs_diff is None:
        progress.message("onnxruntime is not installed: the ONNX file is unchecked")
    else:
        progress.message(
            f"onnxruntime agrees with PyTorch: largest logit difference {result.max_abs_diff:.2g}"
        )
    print(result.path)
    return 0
