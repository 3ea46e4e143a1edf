"""--fuse K: trials side by side in one fused step, through the real CLI: the budget, ordinary checkpoints that
plain timm loads, pruning, a SIGKILL and its resume, what cannot fuse, and bad input."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
import timm
import torch

import launcher
from helpers import ROOT, cli_env, load, run_cli, states
from lrtune.training import checkpoints
from lrtune.training.threads import available_cores

NAME = "digits-lt-test_resnet"


def finished(study):
    return [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]


def test_three_trials_train_side_by_side_and_each_is_an_ordinary_trial(tmp_path):
    done = run_cli("search", "--studies-dir", str(tmp_path), "--fuse", "3", "--trials", "7", "--epochs", "3",
                   "--batch-size", "64", "--keep", "all", "-v")
    assert done.returncode == 0, done.stderr
    assert "--fuse 3: 3 trials side by side in one fused step" in done.stderr
    study = load(tmp_path, NAME)
    assert len(finished(study)) == 7 and states(study).keys() <= {"COMPLETE", "PRUNED"}  # the budget, exactly
    groups = {t.user_attrs.get("fused_group") for t in study.trials}
    assert len(groups) == 1 and None not in groups
    assert all(len(t.user_attrs["curves"]["epoch"]) == max(t.intermediate_values) for t in finished(study))
    best = max((t for t in study.trials if t.value is not None), key=lambda t: t.value)
    record = torch.load(tmp_path / NAME / "trials" / str(best.number) / checkpoints.BEST, weights_only=True)
    model = timm.create_model("test_resnet", num_classes=10)
    model.load_state_dict(record["state_dict"])  # a plain timm model: nothing of the fusion in it
    assert record["value"] == best.value and record["params"]["lr"] == best.params["lr"]


def test_a_sigkilled_fused_search_resumes_every_trial_from_its_last_epoch(tmp_path):
    search = ["search", "--studies-dir", str(tmp_path), "--fuse", "2", "--trials", "4", "--epochs", "8",
              "--pruner", "none", "--batch-size", "64", "-v"]
    proc = launcher.launch(search, env=cli_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    folder = tmp_path / NAME / "trials"
    while time.monotonic() < deadline:  # two trials with a checkpoint each: both slots are mid-trial
        saved = list(folder.glob("*/last.pt")) if folder.is_dir() else []
        if len(saved) >= 2 or proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=300)
    on_disk = {int(p.parent.name): checkpoints.load(p)["run"]["epoch"] for p in folder.glob("*/last.pt")}
    running = [t.number for t in load(tmp_path, NAME).trials if t.state.name == "RUNNING"]
    if not running:
        pytest.skip("the search ended before the kill landed")
    again = run_cli(*search[:-1])
    assert again.returncode == 0, again.stderr
    study = load(tmp_path, NAME)
    assert len(finished(study)) == 4 and "RUNNING" not in states(study) and "WAITING" not in states(study)
    for number in running:
        retry = next(t for t in study.trials if t.user_attrs.get("retry_of") == number)
        assert retry.state.name == "COMPLETE"
        assert retry.user_attrs.get("resumed_at_epoch", 1) == on_disk.get(number, 0) + 1
        assert retry.user_attrs["curves"]["epoch"] == list(range(1, 9))


def test_what_cannot_fuse_runs_alone_and_says_why(tmp_path):
    done = run_cli("search", "--studies-dir", str(tmp_path), "--fuse", "2", "--trials", "3", "--epochs", "2",
                   "--batch-size", "64", "--baselines", "schedulefree")
    assert done.returncode == 0, done.stderr
    assert "a trial runs unfused: the LR-free baseline schedulefree runs alone" in done.stderr
    study = load(tmp_path, NAME)
    assert len(finished(study)) == 3 and any(t.user_attrs.get("lr_free") for t in study.trials)


def test_a_model_with_a_layer_the_fuser_does_not_know_runs_alone_and_names_it(tmp_path):
    done = run_cli("search", "--studies-dir", str(tmp_path), "--fuse", "2", "--trials", "2", "--epochs", "1",
                   "--batch-size", "64", "--model", "test_efficientnet_ln", LRTUNE_THREADS=None)
    assert done.returncode == 0, done.stderr
    assert ("--fuse 2: trials run one at a time: test_efficientnet_ln does not fuse: LayerNormAct2d (bn1) is a "
            "layer with weights the fuser does not know") in done.stderr
    if available_cores()[0] > 1:  # its trials run one at a time after all: their threads are measured then
        assert "measured images/s" in done.stderr.split("trials run one at a time")[1]
    study = load(tmp_path, "digits-lt-test_efficientnet_ln")
    assert len(finished(study)) == 2 and not any(t.user_attrs.get("fused_group") for t in study.trials)


def test_more_slots_than_trials_left_is_a_stated_reduction(tmp_path):
    done = run_cli("search", "--studies-dir", str(tmp_path), "--fuse", "8", "--trials", "2", "--epochs", "1",
                   "--batch-size", "64", LRTUNE_THREADS=None)
    assert done.returncode == 0, done.stderr
    assert "--fuse 8: 2 trials side by side in one fused step (2 trials left to run)" in done.stderr
    assert "measured images/s" not in done.stderr  # fused passes choose their own threads: no probe of a solo step
    assert len(finished(load(tmp_path, NAME))) == 2


@pytest.mark.trains_nothing
@pytest.mark.parametrize("value, message", [
    ("0", "fuse must be a positive number of trials or auto, got 0"),
    ("-2", "--fuse must be a positive number of trials or auto, got -2"),
    ("two", "fuse = 'two' is not a valid int"),
])
def test_a_bad_fuse_is_one_line(tmp_path, value, message):
    done = run_cli("search", "--studies-dir", str(tmp_path), "--fuse", value)
    assert done.returncode == 1 and done.stderr.startswith("lrtune: error: ") and message in done.stderr
    assert done.stderr.count("\n") == 1


def test_auto_measures_the_counts_and_says_what_it_picked(tmp_path):
    done = run_cli("search", "--studies-dir", str(tmp_path), "--fuse", "auto", "--trials", "3", "--epochs", "1",
                   "--batch-size", "64")
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stderr.splitlines() if line.startswith("--fuse auto: "))
    assert "images/s: " in line and " at 1, " in line and "each step up must gain 10%" in line, line
    assert len(finished(load(tmp_path, NAME))) == 3


def test_each_of_two_local_workers_trains_its_own_group(tmp_path):
    done = run_cli("search", "--studies-dir", str(tmp_path), "--workers", "2", "--fuse", "2", "--trials", "6",
                   "--epochs", "2", "--batch-size", "64")
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("--fuse 2: 2 trials side by side in one fused step") == 2
    study = load(tmp_path, NAME)
    groups = {t.user_attrs.get("fused_group") for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")}
    assert len(finished(study)) >= 6 and None not in groups
    # each worker's own group (a worker that started late may have found no trial left to take)
    assert 1 <= len(groups) <= 2 and {name.rsplit(":", 1)[1] for name in groups} <= {"0", "1"}
