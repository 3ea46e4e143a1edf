"""The size on disk of a trial's files, to size the disk a search needs.

For each model, one epoch of the baseline trial on `digits-lt` (AdamW, so the
optimizer holds its two moments), then the trial's `last.pt` (weights,
optimizer state, schedule and curves) and a `best.pt` (the weights and what
`train`, `predict` and `export` need) written as a search writes them, and
what `lrtune search` estimates for `last.pt` before it starts.

    python benchmarks/checkpoint_size.py [--models test_resnet efficientnet_b0] [--image-size 32]
    python benchmarks/checkpoint_size.py --smoke     # tiny, for the test suite
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lrtune.config import Config  # noqa: E402
from lrtune.training import checkpoints  # noqa: E402
from lrtune.training.loop import AmpPolicy  # noqa: E402
from lrtune.training.models import check_model  # noqa: E402
from lrtune.training.run import Hyperparams, TrainingRun, load_training_data  # noqa: E402
from lrtune.tuner import faults  # noqa: E402
from lrtune.tuner.space import baseline_params  # noqa: E402


def sizes(model: str, image_size: int, folder: Path) -> dict:
    cfg = Config(model=model, image_size=image_size, studies_dir=str(folder), epochs=1)
    data = load_training_data(cfg)
    params = Hyperparams.from_dict(baseline_params(cfg))
    run = TrainingRun(cfg, params, data=data, amp=AmpPolicy(torch.device("cpu")), seed=0)
    run.train_epoch(1)
    last, best = folder / model / checkpoints.LAST, folder / model / checkpoints.BEST
    checkpoints.save(last, run.checkpoint(checkpoints.pack(run.model.state_dict())))
    checkpoints.save(best, {"model": model, "state_dict": run.model.state_dict(), "classes": data.imageset.classes})
    model_bytes, _ = check_model(model, num_classes=data.n_classes, pretrained=False, weights="")
    return {"model": model, "parameters": sum(p.numel() for p in run.model.parameters()),
            "last_pt": last.stat().st_size, "best_pt": best.stat().st_size,
            "estimated_last_pt": model_bytes * (1 + faults.OPTIMIZER_COPIES)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["test_resnet", "test_efficientnet", "efficientnet_b0"])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    models = ["test_resnet"] if args.smoke else args.models
    torch.set_num_threads(1 if args.smoke else torch.get_num_threads())
    with tempfile.TemporaryDirectory() as folder:
        rows = [sizes(model, args.image_size, Path(folder)) for model in models]
    print(f"{platform.node()}, torch {torch.__version__}, digits-lt (10 classes), one epoch of AdamW")
    print("| model | parameters | `last.pt` | `best.pt` | estimated `last.pt` |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| `{row['model']}` | {row['parameters']:,} | {row['last_pt'] / 1e6:.1f} MB | {row['best_pt'] / 1e6:.1f} MB "
              f"| {row['estimated_last_pt'] / 1e6:.1f} MB |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
