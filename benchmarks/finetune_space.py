"""Which LRs to search for a fine-tune: one LR, the fine-tune space (body ratio or layer decay), or a fixed recipe.

A transfer setting made here, offline and reproducibly:
1. "Pretrain" `test_efficientnet` on the digits 0 to 4 (scikit-learn's digits, all of their images) and save the
   weights as a file for `--weights`.
2. Fine-tune on a different, imbalanced task: the digits 5 to 9, long-tailed (170, 90, 45, 22 and 12 images),
   with a test split (`--test-fraction 0.3`) that no trial sees.

For each seed (the seed sets the split, the sampler and the trials), at the same trial budget, in fresh folders:
- `lr-only`: today's single-LR search from the weights;
- `ratio`: the fine-tune space, the body's LR as a share of the head's;
- `layer-decay`: the fine-tune space, the body's LRs decayed layer by layer;
- `ratio, wd 0.1`: the fine-tune space (ratio) at ten times the default weight decay;
- `recipe`: no search, fastai-style `slice(lr/10, lr)` at the range test's LR: the trial the range test queues in
  the `ratio` study (cosine, cross-entropy, no warmup, no head-only epochs).
Each arm's score is its best trial's test macro-F1 (the recipe's, its one trial's). Paired 95% t-intervals of
each arm minus `lr-only`; the epochs trained and the wall time of each arm.

    python benchmarks/finetune_space.py [--seeds 10] [--trials 20] [--epochs 6] [--out FILE.json]
    python benchmarks/finetune_space.py --smoke
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.stats
import torch
from PIL import Image
from sklearn.datasets import load_digits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lrtune  # noqa: E402
from lrtune.config import Config  # noqa: E402
from lrtune.training import checkpoints  # noqa: E402
from lrtune.training.loop import AmpPolicy  # noqa: E402
from lrtune.training.run import Hyperparams, TrainingRun, load_training_data  # noqa: E402
from lrtune.tuner.holdout import predict_test  # noqa: E402

MODEL, SIZE = "test_efficientnet", 32
TAIL = (170, 90, 45, 22, 12)  # images of the digits 5 to 9 in the fine-tune task
ARMS = {
    "lr-only": {"space": "lr-only"},
    "ratio": {"space": "finetune", "body_lrs": "ratio"},
    "layer-decay": {"space": "finetune", "body_lrs": "layer-decay"},
    "ratio, wd 0.1": {"space": "finetune", "body_lrs": "ratio", "weight_decay": 0.1},
}


def write_folder(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 255 / 16).astype(np.uint8)).convert("RGB").save(folder / f"{i}.png")
    return root


def make_tasks(work: Path, tail: tuple[int, ...]) -> tuple[Path, Path]:
    digits = load_digits()
    images, labels = digits.images, digits.target
    first = labels < 5
    pretrain = write_folder(work / "pretrain", images[first], labels[first])
    rng = np.random.default_rng(0)
    keep = np.concatenate([rng.choice(np.flatnonzero(labels == 5 + i), n, replace=False) for i, n in enumerate(tail)])
    finetune = write_folder(work / "finetune", images[keep], labels[keep])
    return pretrain, finetune


def pretrain_weights(folder: Path, work: Path, epochs: int) -> Path:
    cfg = Config(data=str(folder), model=MODEL, image_size=SIZE, epochs=epochs, studies_dir=str(work / "pre"))
    run = TrainingRun(cfg, Hyperparams(lr=3e-3, scheduler="cosine", loss="ce", accum=1), data=load_training_data(cfg),
                      amp=AmpPolicy(torch.device("cpu")), seed=0)
    for epoch in range(1, epochs + 1):
        outcome = run.train_epoch(epoch)
    print(f"pretrained {MODEL} on the digits 0-4: validation macro-F1 {outcome.value:.3f}", flush=True)
    path = work / f"{MODEL}-digits-0-4.pth"
    torch.save(run.model.state_dict(), path)
    return path


def arm_run(name: str, seed: int, base: Config, work: Path) -> tuple[dict, lrtune.Config, object]:
    cfg = Config(**{**base.__dict__, **ARMS[name], "seed": seed, "studies_dir": tempfile.mkdtemp(dir=work)})
    started = time.perf_counter()
    study = lrtune.search(config=cfg)
    seconds = time.perf_counter() - started
    record = study.user_attrs["test_split"]
    row = {"arm": name, "seed": seed, "test": record["best"]["value"], "seconds": round(seconds, 1),
           "epochs": sum(len(t.intermediate_values) for t in study.trials),
           "best_params": study.best_trial.params}
    return row, cfg, study


def recipe(cfg: Config, study: object, seed: int) -> dict:
    """The range test's trial of the ratio study, scored on the test split."""
    trial = next(t for t in study.trials if t.user_attrs.get("lr_range"))
    data = load_training_data(cfg)
    folder = Path(cfg.studies_dir) / study.study_name
    ev = predict_test(checkpoints.trial_dir(folder, trial.number) / checkpoints.BEST, cfg, data,
                      AmpPolicy(torch.device("cpu")))
    return {"arm": "recipe", "seed": seed, "test": ev.macro_f1, "seconds": 0.0, "epochs": len(trial.intermediate_values),
            "best_params": trial.params}


def summary(rows: list[dict]) -> dict:
    by = {}
    for row in rows:
        by.setdefault(row["arm"], {})[row["seed"]] = row
    out = {}
    for arm, seeds in by.items():
        values = [r["test"] for r in seeds.values()]
        entry = {"mean_test": round(statistics.mean(values), 4), "epochs": sum(r["epochs"] for r in seeds.values()),
                 "seconds": round(sum(r["seconds"] for r in seeds.values()), 1)}
        if arm != "lr-only":
            diffs = [seeds[s]["test"] - by["lr-only"][s]["test"] for s in seeds if s in by["lr-only"]]
            mean = statistics.mean(diffs)
            half = (scipy.stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
                    if len(diffs) > 1 else float("nan"))
            entry.update(minus_lr_only=round(mean, 4), ci95=[round(mean - half, 4), round(mean + half, 4)],
                         wins=sum(d > 0 for d in diffs), losses=sum(d < 0 for d in diffs))
        out[arm] = entry
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--pretrain-epochs", type=int, default=15)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="1 seed, 3 trials of 2 epochs, a 2-epoch pretraining")
    args = parser.parse_args()
    if args.smoke:
        args.seeds, args.trials, args.epochs, args.pretrain_epochs = 1, 3, 2, 2
        torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="lrtune-finetune-"))
    pre, fine = make_tasks(work, TAIL)
    weights = pretrain_weights(pre, work, args.pretrain_epochs)
    base = Config(data=str(fine), model=MODEL, image_size=SIZE, pretrained=True, weights=str(weights),
                  trials=args.trials, epochs=args.epochs, test_fraction=0.3, keep="all",
                  threads=1 if args.smoke else 0)
    rows = []
    for seed in range(args.seeds):
        for arm in ARMS:
            row, cfg, study = arm_run(arm, seed, base, work)
            rows.append(row)
            if arm == "ratio":
                rows.append(recipe(cfg, study, seed))
            for done in rows[-2 if arm == "ratio" else -1:]:
                print(json.dumps({k: v for k, v in done.items() if k != "best_params"}), flush=True)
    result = {"machine": platform.node(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
              "args": vars(args) | {"out": str(args.out)}, "rows": rows, "summary": summary(rows)}
    print(json.dumps(result["summary"], indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
