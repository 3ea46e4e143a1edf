"""What a search says before and while it runs: the estimate, --dry-run, and progress inside a long epoch."""

from helpers import load, run_cli

NAME = "digits-lt-test_resnet"


def test_a_long_epoch_says_its_batches_and_the_time_left_and_quiet_says_nothing(tmp_path, augment):
    args = ("search", "--studies-dir", str(tmp_path), "--trials", "2", "--epochs", "2", "--batch-size", "64")
    result = run_cli(*args, inject="progress-every-batch=1")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if ": batch " in line]
    assert lines and lines[0].startswith("trial 0 epoch 1/2: batch ")
    assert "images/s, epoch " in lines[0] and "if none is pruned" in lines[0]
    estimate = next(line for line in result.stderr.splitlines() if line.startswith("estimate: about "))
    assert "for 2 trials x 2 epochs" in estimate
    quiet = run_cli(*args, "--trials", "3", "-q", inject="progress-every-batch=1")
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_a_dry_run_prints_the_config_the_data_and_the_estimate_and_writes_nothing(tmp_path, augment):
    folder = tmp_path / "studies"
    result = run_cli("search", "--studies-dir", str(folder), "--trials", "7", "--epochs", "2", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "  trials = 7" in result.stdout and "data: digits-lt, 10 classes, 588 training" in result.stdout
    assert result.stdout.splitlines()[-1].startswith("estimate: about ")
    assert "for 7 trials x 2 epochs" in result.stdout
    assert not folder.exists()
    searched = run_cli("search", "--studies-dir", str(folder), "--trials", "2", "--epochs", "2", "-q")
    assert searched.returncode == 0, searched.stderr
    again = run_cli("search", "--studies-dir", str(folder), "--trials", "7", "--epochs", "2", "--dry-run")
    assert "for 5 trials x 2 epochs" in again.stdout
    assert len(load(folder, NAME).trials) == 2  # nothing more ran
