import pytest
import torch

from lrtune.config import Config
from lrtune.training.loop import AmpPolicy
from lrtune.training.run import load_training_data
from lrtune.tuner.estimate import Estimate, estimate_search


def make(**changes):
    values = dict(trials=50, epochs=10, train_images=800, val_images=200, train_per_s=14.0, eval_per_s=40.0,
                  device="cpu", workers=1, image_size=224)
    return Estimate(**{**values, **changes})


def test_the_estimate_adds_training_and_validation_of_every_epoch_left():
    estimate = make()
    assert estimate.epoch_seconds == pytest.approx(800 / 14 + 200 / 40)
    assert estimate.seconds == pytest.approx(50 * 10 * estimate.epoch_seconds)
    assert make(workers=4).seconds == pytest.approx(estimate.seconds / 4)


def test_a_long_estimate_names_what_would_cut_it():
    line = make().line()
    assert line.startswith("estimate: about 8h 37m for 50 trials x 10 epochs at 14 training images/s on cpu (if none")
    assert line.endswith("; --image-size 112, --trials 25 or a GPU would cut it")
    short = make(trials=2, epochs=2, train_per_s=3000.0, eval_per_s=9000.0).line()
    assert "would cut it" not in short and short.startswith("estimate: about 1s for 2 trials x 2 epochs")
    assert make(trials=0).line() == "estimate: nothing left to run"


def test_estimate_search_times_the_real_data_and_counts_the_trials_left(tmp_path):
    cfg = Config(trials=20, epochs=3, studies_dir=str(tmp_path), threads=1)
    data = load_training_data(cfg)
    estimate = estimate_search(cfg, data=data, amp=AmpPolicy(torch.device("cpu")), finished=5)
    assert estimate.trials == 15 and estimate.epochs == 3
    assert estimate.train_images == len(data.train_idx)  # as the loader draws them (no oversampling here)
    assert estimate.val_images == len(data.val_idx)
    assert estimate.train_per_s > 0 and estimate.eval_per_s > 0
