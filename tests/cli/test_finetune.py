"""The fine-tune space through the real CLI: the head's and the body's LRs, warmup and head-only epochs."""

import pytest
import torch

from helpers import load, run_cli
from lrtune.training.models import create_model

NAME = "digits-lt-test_resnet"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "test_resnet.pth"
    torch.save(create_model("test_resnet", num_classes=1000).state_dict(), path)
    return path


def test_a_fine_tune_search_records_and_shows_each_trials_head_and_body_lrs(tmp_path, weights, augment):
    args = ("search", "--studies-dir", str(tmp_path), "--pretrained", "--weights", str(weights), "--space", "finetune",
            "--trials", "4", "--epochs", "3", "--batch-size", "64", "--lr-range", "auto")
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert "sweeping the head's LR with a layer decay of 0.75" in result.stderr
    study = load(tmp_path, NAME)
    for trial in study.trials:
        assert {"layer_decay", "warmup_epochs", "head_epochs"} <= set(trial.params)
        assert trial.params["head_epochs"] <= 2
        scales = trial.user_attrs.get("lr_scales")
        assert (scales is None) == (trial.params["layer_decay"] == 1.0)  # the baseline trains at one LR
    shown = run_cli("show", "--studies-dir", str(tmp_path))
    assert shown.returncode == 0, shown.stderr
    assert "body_lr=" in shown.stdout and " to " in shown.stdout
    report = run_cli("report", "--studies-dir", str(tmp_path), "--out", str(tmp_path / "r.html"))
    assert report.returncode == 0, report.stderr
    page = (tmp_path / "r.html").read_text()
    assert "LR by depth" in page and "<br>body " in page
    refused = run_cli(*args[:-4], "--lr-range", "auto", "--space", "lr-only")
    assert refused.returncode == 1 and "was made with another config (space: 'finetune' -> 'lr-only')" in refused.stderr


@pytest.mark.trains_nothing
def test_head_only_epochs_must_leave_the_body_an_epoch(tmp_path, weights):
    result = run_cli("search", "--studies-dir", str(tmp_path), "--pretrained", "--weights", str(weights), "--space",
                     "finetune", "--epochs", "2", "--head-epochs", "2")
    assert result.returncode == 2 or result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "lrtune: error: --head-epochs 2 must be less than --epochs 2: the body must train at least one epoch")
