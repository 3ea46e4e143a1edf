"""A study's held-out images (its test or validation split) as a folder of class folders, to predict and look at.

The images are written as the trials saw them before augmentation: decoded,
upright and resized to the study's image size, as PNG. Prediction decodes a
PNG of that size to the same pixels, so scores on the folder are the scores
on the split.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
from PIL import Image

from lrtune import config as config_mod
from lrtune.deploy.files import replace_folder, temporary_sibling
from lrtune.errors import ConfigError, DataError, StorageError
from lrtune.training.run import load_training_data

SPLITS = ("test", "validation")


def write_split(study: optuna.Study, *, split: str, out: Path, studies_dir: str | Path) -> Path:
    """Write ``split`` of ``study``'s data into ``out/<class>/`` (replacing what is there); returns ``out``."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r} (valid: {', '.join(SPLITS)})")
    stored = study.user_attrs.get("config")
    if not isinstance(stored, dict):
        raise StorageError(f"study {study.study_name!r} has no stored config; it was not made by lrtune search")
    cfg = config_mod.from_dict({**stored, "studies_dir": str(studies_dir)})
    if split == "test" and not cfg.test_fraction:
        raise DataError(f"study {study.study_name!r} has no test split (it was searched without --test-fraction); "
                        "the validation split is the one it held out")
    data = load_training_data(cfg)
    if not data.own_images:
        raise DataError(f"study {study.study_name!r} trained on your own datasets; write their {split} split from them")
    changes = config_mod.dataset_changes(study.user_attrs.get("dataset") or {}, data.summary())
    if changes:
        raise DataError(f"the data at {cfg.data!r} is not study {study.study_name!r}'s any more ({'; '.join(changes)})")
    classes = data.imageset.classes
    bad = next((c for c in classes if not c or Path(c).name != c or c.startswith(".")), None)
    if bad is not None:
        raise DataError(f"class {bad!r} cannot be a folder name")
    indices = data.test_idx if split == "test" else data.val_idx
    paths = data.imageset.paths
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(out)
    try:
        for name in classes:
            (tmp / name).mkdir(parents=True)
        for i in indices:
            stem = f"{i:05d}" if paths is None else f"{i:05d}-{Path(paths[i]).stem}"
            label = classes[int(data.imageset.labels[i])]
            Image.fromarray(data.imageset.images[i]).save(tmp / label / f"{stem}.png")
        replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
