"""One typed config with every default in one place.

Precedence: CLI > ``LRTUNE_*`` environment > config file (TOML) > defaults.
Every field can be set in all four places; in the environment its name is
``LRTUNE_`` + the field name in upper case (``LRTUNE_LR_MAX=0.1``), and lists
are written comma-separated (``LRTUNE_SCHEDULERS=step,cosine``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Mapping

from lrtune.errors import ConfigError

# What a search can maximize and prune on (``--metric``), and how each is named in output.
METRICS = {
    "macro_f1": "macro-F1",
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "weighted_f1": "weighted F1",
    "roc_auc": "ROC-AUC",
}
# Where each metric's validation value per epoch is kept in a run's curves (``val_f1`` and ``val_acc`` were first).
CURVE_KEYS = {
    "macro_f1": "val_f1",
    "accuracy": "val_acc",
    "balanced_accuracy": "val_balanced_accuracy",
    "weighted_f1": "val_weighted_f1",
    "roc_auc": "val_roc_auc",
}
BUILTIN_SIZES = {"digits-lt": 16, "digits": 16, "digits-writers": 24}  # built-in sets and their native side in pixels
DIGITS_SETS = tuple(BUILTIN_SIZES)
OBJECT = "object:"  # a model, loss or data given to the API as a Python object: ``object:<its name>``


def part_label(text: str) -> str:
    """A short label for a model or data: an object's name, ``file.callable`` for a reference, else the text."""
    if text.startswith(OBJECT):
        return text[len(OBJECT):]
    module, colon, attr = text.rpartition(":")
    if colon and attr.replace(".", "").replace("_", "").isalnum() and ("/" in module or "." in module or module.isidentifier()):
        return f"{Path(module).stem if module.endswith('.py') else module.rsplit('.', 1)[-1]}.{attr}"
    return text


@dataclass
class Config:
    # --- data -------------------------------------------------------------
    data: str = "digits-lt"  # digits-lt | digits | digits-writers | an ImageFolder dir | a CSV manifest
    data_root: str = ""  # folder the CSV's paths are relative to; "" means the CSV's folder
    image_size: int = 0  # side in pixels; 0: the built-in set's own (16, or 24 for digits-writers), 224 otherwise
    val_fraction: float = 0.2  # share of images (or of groups) held out for validation
    test_fraction: float = 0.0  # share of images (or of groups) held out as a test split no trial sees; 0: none
    cache: str = "auto"  # memory | disk | auto: decoded images kept in RAM or memory-mapped under studies/
    skip_bad_images: bool = False  # skip (and count) images that cannot be decoded instead of failing
    balance: str = "none"  # none | sampler (class-balanced sampling) | oversample (rare classes repeated, augmented)
    hflip: float = -1.0  # probability of a horizontal flip; -1: 0.5, or 0 for the digit sets
    affine: float = 0.5  # probability of a shift/scale/rotate
    color: float = 0.5  # probability of a brightness/contrast change
    rare_affine: float = 0.9  # shift/scale/rotate probability used on rare classes with balance=oversample
    crop: float = 0.0  # probability of a random-resized crop (8% to 100% of the area, aspect 3/4 to 4/3)
    augment: str = "auto"  # cpu (albumentations) | device (batched on a uint8 cache on the GPU) | auto: device on CUDA when the cache fits a quarter of its free memory
    num_workers: int = 0  # DataLoader worker processes (they persist across a trial's epochs)
    # --- model --------------------------------------------------------------
    model: str = "test_resnet"  # any timm model name, or your own model as module:callable or path/to/file.py:callable (importable from the current folder), called with the number of classes and returning a torch.nn.Module whose output is [batch, classes]
    pretrained: bool = False  # start from pretrained weights: timm's, downloaded once into the Hugging Face cache, or --weights
    weights: str = ""  # a local weights file (.pth, .pt, .bin, .safetensors) for --pretrained instead of the download
    # --- training -------------------------------------------------------------
    epochs: int = 10  # epochs per trial
    batch_size: int = 32  # micro-batch size; the effective batch is batch_size * accum
    optimizer: str = "adamw"  # adamw | sgd (momentum 0.9, nesterov)
    weight_decay: float = 0.01  # decoupled weight decay (AdamW), or L2 penalty (SGD)
    momentum: float = 0.9  # SGD only
    warmup_epochs: float = 0.0  # linear LR warmup in front of any scheduler, in epochs
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    amp: bool = True  # mixed precision on CUDA (bf16 where supported, else fp16 with a GradScaler)
    compile: bool = False  # torch.compile the model: a compile in each trial's first epoch, faster steps after it
    compile_mode: str = "default"  # with --compile: default | reduce-overhead (CUDA graphs: launch-bound steps) | max-autotune
    diverge_factor: float = 10.0  # a train loss above this multiple of its best ends the trial as diverged
    metric: str = "macro_f1"  # what the search maximizes and prunes on: macro_f1 | accuracy | balanced_accuracy | weighted_f1 | roc_auc (macro one-vs-rest)
    # --- search space --------------------------------------------------------
    lr_min: float = 1e-5  # log-uniform LR range; equal bounds fix the LR
    lr_max: float = 1.0  # upper bound of the log-uniform LR range
    schedulers: list[str] = field(default_factory=lambda: ["step", "cosine", "plateau"])  # schedulers to search
    losses: list[str] = field(default_factory=lambda: ["ce", "focal", "label_smoothing", "f1"])  # losses to search: ce, focal, label_smoothing, f1, or your own as module:callable, a function (logits, targets, **params) -> scalar whose dict attribute space declares its searched params
    accum: list[int] = field(default_factory=lambda: [1, 2, 4, 8])  # gradient accumulation steps
    lr_range: str = "auto"  # auto | off: an LR range test, once per study, narrows the LR range and queues its suggestion
    baselines: list[str] = field(default_factory=list)  # LR-free optimizers run as one fixed trial each beside the LR baseline: prodigy, schedulefree
    space: str = "auto"  # auto | lr-only | finetune: the fine-tune space adds the body's LRs, warmup epochs and head-only epochs to a model that starts from weights (--pretrained); auto: lr-only, which did as well in a measured transfer setting
    body_lrs: str = "layer-decay"  # layer-decay | ratio: in the fine-tune space, the body's LRs decayed layer group by layer group from the head down, or one share of the head's
    body_ratio: list[float] = field(default_factory=lambda: [0.01, 1.0])  # range of the body's LR as a share of the head's (log-uniform), within (0, 1]
    layer_decay: list[float] = field(default_factory=lambda: [0.5, 1.0])  # range of the LR decay factor per layer group, within (0, 1]
    warmup_max: float = 2.0  # the fine-tune space searches warmup epochs from 0 to this
    head_epochs: int = -1  # the fine-tune space searches epochs training the head alone from 0 to this; -1: 2, at most --epochs - 1
    # --- study ----------------------------------------------------------------
    trials: int = 50  # total finished (complete or pruned) trials the study should hold
    timeout: float = 0.0  # seconds for this run; 0: no limit
    study: str = ""  # study name; "" derives one from data and model
    storage: str = ""  # SQLAlchemy URL; "" means sqlite under studies_dir
    studies_dir: str = "studies"  # home of study databases, caches and artifacts
    sampler: str = "tpe"  # tpe | random | gp | qmc
    pruner: str = "median"  # median | hyperband | none
    pruner_warmup: int = 1  # epochs reported before the median pruner may prune
    seed: int = 0  # seeds the split, the sampler and every trial
    threads: int = 0  # CPU threads of each trial process: auto (or 0) chooses from the cores this process may use (affinity, CPU quota), the workers and loader processes, and a short measurement, and lowers it when another process takes the cores
    fuse: int = 1  # trials trained side by side as one fused model in each worker, one step for all on the same batch; auto: as many as a short probe finds faster (on CUDA also as the free memory holds)
    workers: int = 1  # local worker processes sharing the study; auto (or 0): on CUDA as many as its free memory and the model's speed call for, else 1
    keep: str = "best"  # best | all | none: which trials keep their final weights
    track: list[str] = field(default_factory=list)  # trackers that log every trial: mlflow[=URI] (a parent run per study, a nested run per trial), tensorboard[=DIR] (a folder per trial)
    force: bool = False  # resume even though the stored config differs
    # --- many machines -----------------------------------------------------------
    artifacts: str = ""  # shared folder or s3://bucket/prefix or gs://bucket/prefix for checkpoints any machine can read
    storage_retry: float = 120.0  # seconds a lost database connection is retried before the worker gives up
    heartbeat_interval: int = 10  # seconds between a running trial's heartbeats
    heartbeat_grace: int = 60  # a trial silent this long (on another machine) is failed and queued again


CHOICES: dict[str, tuple[str, ...]] = {
    "cache": ("auto", "memory", "disk"),
    "augment": ("auto", "cpu", "device"),
    "balance": ("none", "sampler", "oversample"),
    "optimizer": ("adamw", "sgd"),
    "keep": ("best", "all", "none"),
    "lr_range": ("auto", "off"),
    "metric": tuple(METRICS),
    "compile_mode": ("default", "reduce-overhead", "max-autotune"),
    "space": ("auto", "lr-only", "finetune"),
    "body_lrs": ("ratio", "layer-decay"),
}

# Fields that only say how or where this run happens; changing them never
# changes what a trial computes, so a study may be resumed with other values.
RUN_ONLY = frozenset(
    {"trials", "timeout", "study", "storage", "studies_dir", "workers", "keep", "force", "device", "num_workers",
     "artifacts", "storage_retry", "heartbeat_interval", "heartbeat_grace", "compile", "compile_mode", "threads",
     "fuse", "track"}
)
# Fields that belong to one machine: a worker joining a study keeps its own
# (its data may lie elsewhere), and takes every other field from the study.
# Data paths may differ as long as the data's classes and counts match.
MACHINE_LOCAL = frozenset(
    {"study", "storage", "studies_dir", "workers", "threads", "fuse", "track", "force", "device", "num_workers", "timeout", "data_root",
     "storage_retry", "heartbeat_interval", "heartbeat_grace"}
)

DATA_LOCATION = frozenset({"data", "data_root"})

FIELDS = {f.name: f for f in dataclasses.fields(Config)}
# Tables of a file written by ``lrtune export --format toml``: where its config came from, not options.
EXPORT_TABLES = ("trial", "dataset", "versions")
_HINTS = typing.get_type_hints(Config)


def _convert(name: str, value: Any, source: str) -> Any:
    """Coerce ``value`` (from TOML, env or CLI) to the declared type of ``name``."""
    hint = _HINTS[name]
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if typing.get_origin(hint) is list:
            (item_type,) = typing.get_args(hint)
            items = value if isinstance(value, (list, tuple)) else str(value).split(",")
            items = [item.strip() if isinstance(item, str) else item for item in items]
            return [item_type(item) for item in items if item != ""]
        if hint is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        if name in ("workers", "threads", "fuse") and str(value).strip().lower() == "auto":
            return 0
        if name == "fuse" and str(value).strip() == "0" and source.startswith(("--", "LRTUNE_")):
            raise ConfigError(f"{source}: fuse must be a positive number of trials or auto, got 0")
        if hint is int:
            return int(value)
        return hint(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {name} = {value!r} is not a valid {getattr(hint, '__name__', hint)}") from None


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    environ = os.environ if environ is None else environ
    out = {}
    for name in FIELDS:
        key = "LRTUNE_" + name.upper()
        if key in environ:
            out[name] = _convert(name, environ[key], key)
    return out


def file_overrides(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - set(FIELDS) - set(EXPORT_TABLES))
    if unknown:
        raise ConfigError(f"config file {path}: unknown key {unknown[0]!r} (valid keys: {', '.join(FIELDS)})")
    return {name: _convert(name, value, str(path)) for name, value in raw.items() if name in FIELDS}


def resolve(
    cli: Mapping[str, Any] | None = None,
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Merge the four layers and validate the result.

    ``cli`` holds only the options the user gave (``None`` values are dropped).
    The config file comes from ``config_file``, else from ``LRTUNE_CONFIG``.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    config_file = config_file or environ.get("LRTUNE_CONFIG") or None
    if config_file:
        values.update(file_overrides(config_file))
    values.update(env_overrides(environ))
    for name, value in (cli or {}).items():
        if value is not None:
            if name not in FIELDS:
                raise ConfigError(f"unknown option {name!r}")
            values[name] = _convert(name, value, "--" + name.replace("_", "-"))
    cfg = Config(**values)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    for name, choices in CHOICES.items():
        if getattr(cfg, name) not in choices:
            raise ConfigError(f"unknown {name} {getattr(cfg, name)!r} (valid: {', '.join(choices)})")
    if cfg.trials <= 0:
        raise ConfigError(f"--trials must be a positive number of trials, got {cfg.trials}")
    if cfg.epochs <= 0:
        raise ConfigError(f"--epochs must be positive, got {cfg.epochs}")
    if cfg.batch_size <= 0:
        raise ConfigError(f"--batch-size must be positive, got {cfg.batch_size}")
    if cfg.image_size < 0:
        raise ConfigError(f"--image-size must be positive, got {cfg.image_size}")
    if cfg.lr_min <= 0 or cfg.lr_max <= 0:
        raise ConfigError(f"--lr-min and --lr-max must be positive, got {cfg.lr_min:g} and {cfg.lr_max:g}")
    if cfg.lr_min > cfg.lr_max:
        raise ConfigError(f"--lr-min {cfg.lr_min:g} is greater than --lr-max {cfg.lr_max:g}")
    if not 0 < cfg.val_fraction < 1:
        raise ConfigError(f"--val-fraction must be between 0 and 1, got {cfg.val_fraction:g}")
    if not 0 <= cfg.test_fraction < 1 or cfg.val_fraction + cfg.test_fraction >= 1:
        raise ConfigError(
            f"--test-fraction must be at least 0 and leave training images beside --val-fraction "
            f"({cfg.val_fraction:g}), got {cfg.test_fraction:g}"
        )
    if cfg.test_fraction and cfg.keep == "none":
        raise ConfigError("--test-fraction scores the best trial's and the baseline's weights, which --keep none"
                          " throws away; use --keep best or --keep all")
    if cfg.heartbeat_interval <= 0 or cfg.heartbeat_grace <= cfg.heartbeat_interval:
        raise ConfigError(
            f"--heartbeat-grace ({cfg.heartbeat_grace}) must exceed --heartbeat-interval ({cfg.heartbeat_interval}), "
            "and both must be positive"
        )
    if cfg.storage_retry < 0:
        raise ConfigError(f"--storage-retry must not be negative, got {cfg.storage_retry:g}")
    if cfg.workers < 0:
        raise ConfigError(f"--workers must be positive or auto, got {cfg.workers}")
    if cfg.fuse < 0:
        raise ConfigError(f"--fuse must be a positive number of trials or auto, got {cfg.fuse}")
    if cfg.threads < 0:
        raise ConfigError(f"--threads must be positive or auto, got {cfg.threads}")
    if cfg.timeout < 0:
        raise ConfigError(f"--timeout must not be negative, got {cfg.timeout:g}")
    if not cfg.accum or any(a <= 0 for a in cfg.accum):
        raise ConfigError(f"--accum must list positive step counts, got {cfg.accum}")
    if not cfg.schedulers:
        raise ConfigError("--schedulers must name at least one scheduler")
    if not cfg.losses:
        raise ConfigError("--losses must name at least one loss")
    _validate_finetune(cfg)
    for name in ("num_workers", "pruner_warmup", "weight_decay", "warmup_epochs", "warmup_max"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must not be negative, got {getattr(cfg, name):g}")
    if not 0 <= cfg.momentum < 1:
        raise ConfigError(f"--momentum must be in [0, 1), got {cfg.momentum:g}")
    if cfg.diverge_factor <= 1:
        raise ConfigError(f"--diverge-factor must be greater than 1, got {cfg.diverge_factor:g}")
    for name in ("hflip", "affine", "color", "rare_affine", "crop"):
        p = getattr(cfg, name)
        if not (0 <= p <= 1 or (name == "hflip" and p == -1)):
            raise ConfigError(f"{name} must be a probability between 0 and 1, got {p:g}")


def _validate_finetune(cfg: Config) -> None:
    """The fine-tune space's ranges: within (0, 1], and head-only epochs that leave the body an epoch."""
    for name in ("body_ratio", "layer_decay"):
        bounds = getattr(cfg, name)
        if len(bounds) != 2 or not 0 < bounds[0] <= bounds[1] <= 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be a range LOW,HIGH within (0, 1], got "
                              f"{','.join(f'{b:g}' for b in bounds)}")
    if cfg.head_epochs >= cfg.epochs:
        raise ConfigError(f"--head-epochs {cfg.head_epochs} must be less than --epochs {cfg.epochs}: the body must "
                          "train at least one epoch")
    if cfg.head_epochs < -1:
        raise ConfigError(f"--head-epochs must not be negative, got {cfg.head_epochs}")
    if cfg.space == "finetune" and not cfg.pretrained:
        raise ConfigError("--space finetune tunes the LRs of a model that starts from weights: add --pretrained "
                          "(and --weights FILE), or use --space lr-only")


def finetune_space(cfg: Config) -> bool:
    """True when the search space holds the fine-tune dimensions (``space``; auto: lr-only)."""
    return cfg.space == "finetune" and cfg.pretrained


def head_epochs_max(cfg: Config) -> int:
    """The most epochs the fine-tune space trains the head alone: ``head_epochs``, or 2 and less than ``epochs``."""
    return cfg.head_epochs if cfg.head_epochs >= 0 else min(2, cfg.epochs - 1)


def effective_image_size(cfg: Config) -> int:
    if cfg.image_size:
        return cfg.image_size
    return BUILTIN_SIZES.get(cfg.data, 224)


def metric_label(name: str | None) -> str:
    """How metric ``name`` is written (``macro-F1``); a study stored without one used macro-F1."""
    return METRICS.get(name or "macro_f1", str(name))


def effective_hflip(cfg: Config) -> float:
    if cfg.hflip >= 0:
        return cfg.hflip
    return 0.0 if cfg.data in DIGITS_SETS else 0.5


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(values: Mapping[str, Any]) -> Config:
    """Rebuild a config stored on a study, ignoring fields this version does not know."""
    return Config(**{k: v for k, v in values.items() if k in FIELDS})


def identity(cfg: Config | Mapping[str, Any]) -> dict[str, Any]:
    """The part of a config that decides what a trial computes (everything but RUN_ONLY)."""
    values = to_dict(cfg) if isinstance(cfg, Config) else dict(cfg)
    return {k: v for k, v in sorted(values.items()) if k not in RUN_ONLY}


# Fields whose default has changed, with the value a study stored without the
# field (by a version that did not have it) was run with.
FORMER_DEFAULTS: dict[str, Any] = {"lr_range": "off"}


def fingerprint(cfg: Config | Mapping[str, Any]) -> str:
    blob = json.dumps(identity(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Human-readable ``name: old -> new`` lines for the identity fields that differ.

    Where the data lies (``data``, ``data_root``) is left out: each machine may
    keep it elsewhere, and the study checks the data itself (``dataset_changes``).
    A field missing from ``old`` (stored by a version without it) counts as
    the default of that version (``FORMER_DEFAULTS``, else today's).
    """
    a, b = identity({**to_dict(Config()), **FORMER_DEFAULTS, **old}), identity(new)
    names = sorted((set(a) | set(b)) - DATA_LOCATION)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in names if a.get(k) != b.get(k)]


def explicit_fields(
    cli: Mapping[str, Any] | None = None,
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> frozenset[str]:
    """The fields ``resolve`` takes from the user (flags, ``LRTUNE_*``, the config file) rather than defaults."""
    environ = os.environ if environ is None else environ
    config_file = config_file or environ.get("LRTUNE_CONFIG") or None
    names = set(env_overrides(environ)) | {k for k, v in (cli or {}).items() if v is not None}
    if config_file:
        names |= set(file_overrides(config_file))
    return frozenset(names)


def adopt(stored: Mapping[str, Any], cfg: Config, given: Collection[str]) -> Config:
    """``cfg`` with the stored value of every field not in ``given`` and not ``MACHINE_LOCAL``.

    This is how a worker joins a study with no options beyond ``--storage``
    and ``--study``: it computes what the study's trials compute.
    """
    values = to_dict(cfg)
    for name, value in ({**FORMER_DEFAULTS, **stored} if stored else {}).items():
        if name in FIELDS and name not in given and name not in MACHINE_LOCAL:
            values[name] = _convert(name, value, "the study's stored config")
    joined = Config(**values)
    validate(joined)
    return joined


DATASET_KEYS = ("classes", "n_train", "n_val", "train_counts", "val_counts")


def dataset_changes(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """How two datasets' fingerprints (class names, split sizes and per-class counts) differ."""
    return [
        f"{key}: {stored.get(key)!r} -> {current.get(key)!r}"
        for key in DATASET_KEYS
        if key in stored and stored.get(key) != current.get(key)
    ]
