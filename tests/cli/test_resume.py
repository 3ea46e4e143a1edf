"""Crash-safe resume, through the real CLI in subprocesses."""

import os
import signal
import subprocess
import time

import pytest
from PIL import Image

import launcher
from helpers import ROOT, cli_env, load, run_cli, states
from lrtune.training import checkpoints

NAME = "digits-lt-test_resnet"


def start(tmp_path, *args):
    return launcher.launch(["search", "--studies-dir", str(tmp_path), "-v", *args], env=cli_env(), cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(proc, needle, timeout=600):
    """Read stderr until a line containing ``needle``; return the lines read."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return seen
    proc.kill()
    raise AssertionError(f"never saw {needle!r}; stderr was:\n{''.join(seen)}")


def wait_for_checkpoint(tmp_path, timeout=300):
    """Until trial 1 has a checkpoint on disk (the writer thread puts it there after its epoch)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if saved_epoch(tmp_path) >= 1:
            return
        time.sleep(0.05)
    raise AssertionError("trial 1 never wrote a checkpoint")


def saved_epoch(tmp_path, trial=1):
    """The epoch of the trial's last checkpoint, as it is on disk now (0 when there is none)."""
    path = tmp_path / NAME / "trials" / str(trial) / "last.pt"
    return checkpoints.load(path)["run"]["epoch"] if path.is_file() else 0


def finished(study):
    return [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]


EPOCHS = 6
SEARCH = ["--trials", "2", "--epochs", str(EPOCHS), "--pruner", "none", "--batch-size", "64"]
ALL_EPOCHS = list(range(1, EPOCHS + 1))


def test_sigkill_mid_trial_then_the_same_command_resumes_the_trial_at_its_next_epoch(tmp_path):
    proc = start(tmp_path, *SEARCH)
    wait_for(proc, f"trial 1 epoch 2/{EPOCHS}")
    wait_for_checkpoint(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=300)
    on_disk = saved_epoch(tmp_path)  # what the killed process left: the epoch the retry continues after
    assert 1 <= on_disk < EPOCHS
    killed = load(tmp_path, NAME)
    assert [t.state.name for t in killed.trials][:2] == ["COMPLETE", "RUNNING"]

    again = run_cli("search", "--studies-dir", str(tmp_path), *SEARCH)
    assert again.returncode == 0, again.stderr
    assert "re-queued trial(s) 1 left running by a dead process" in again.stderr
    study = load(tmp_path, NAME)
    assert len(finished(study)) == 2
    assert "RUNNING" not in states(study) and "WAITING" not in states(study)
    retry = next(t for t in study.trials if t.user_attrs.get("retry_of") == 1)
    assert retry.state.name == "COMPLETE"
    assert retry.user_attrs["resumed_at_epoch"] == on_disk + 1
    assert retry.user_attrs["curves"]["epoch"] == ALL_EPOCHS
    assert sorted(retry.intermediate_values) == ALL_EPOCHS
    assert retry.params == study.trials[1].params
    assert study.trials[1].state.name == "FAIL" and study.trials[1].user_attrs["reason"] == "worker died"


# Ctrl-C on one path and SIGTERM on the other: both signals, and both paths, stop and resume.
SIGNALS = {"cpu": (signal.SIGINT, 130), "device": (signal.SIGTERM, 143)}


def test_sigint_and_sigterm_stop_cleanly_and_resume_continues_the_trial(tmp_path, augment):
    sig, code = SIGNALS[augment]
    proc = start(tmp_path, *SEARCH)
    wait_for(proc, f"trial 1 epoch 2/{EPOCHS}")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err
    on_disk = saved_epoch(tmp_path)  # the stop lands mid-epoch; the epochs before it are on disk
    assert 1 <= on_disk < EPOCHS
    assert "lrtune search --studies-dir" in err and "Traceback" not in err
    study = load(tmp_path, NAME)
    assert "RUNNING" not in states(study)
    assert study.trials[1].user_attrs["reason"] == "interrupted"

    again = run_cli("search", "--studies-dir", str(tmp_path), *SEARCH)
    assert again.returncode == 0, again.stderr
    study = load(tmp_path, NAME)
    assert len(finished(study)) == 2
    retry = next(t for t in study.trials if t.user_attrs.get("retry_of") == 1)
    assert retry.user_attrs["resumed_at_epoch"] == on_disk + 1
    assert retry.user_attrs["curves"]["epoch"] == ALL_EPOCHS


def test_a_nan_at_high_lr_prunes_that_trial_as_diverged_and_the_study_completes(tmp_path):
    result = run_cli(
        "search", "--studies-dir", str(tmp_path), "--trials", "4", "--epochs", "2", "--sampler", "random",
        "--lr-min", "1e-4", "--lr-max", "1.0", "--seed", "3",
        inject="nan-above-lr=0.01",
    )
    assert result.returncode == 0, result.stderr
    study = load(tmp_path, NAME)
    assert len(finished(study)) == 4
    diverged = [t for t in study.trials if t.params["lr"] > 0.01]
    assert diverged, "the seed should draw at least one high LR"
    for t in diverged:
        assert t.state.name == "PRUNED"
        assert t.user_attrs["reason"].startswith("diverged: non-finite train loss")
    assert any(t.state.name == "COMPLETE" for t in study.trials)


def test_out_of_memory_in_one_trial_records_the_reason_and_the_study_goes_on(tmp_path):
    result = run_cli(
        "search", "--studies-dir", str(tmp_path), "--trials", "3", "--epochs", "1", inject="oom-trial=1"
    )
    assert result.returncode == 0, result.stderr
    study = load(tmp_path, NAME)
    assert study.trials[1].state.name == "FAIL"
    assert study.trials[1].user_attrs["reason"].startswith("out of memory: CUDA out of memory")
    assert len(finished(study)) == 3


def test_local_workers_share_one_sqlite_study_without_losing_or_duplicating_trials(tmp_path, augment):
    workers = {"cpu": 4, "device": 2}[augment]
    result = run_cli(
        "search", "--studies-dir", str(tmp_path), "--trials", "12", "--epochs", "1", "--workers", str(workers),
        timeout=900,
    )
    assert result.returncode == 0, result.stderr
    assert "locked" not in result.stderr.lower()
    study = load(tmp_path, NAME)
    done = finished(study)
    assert 12 <= len(done) <= 12 + workers - 1
    assert len({t.number for t in study.trials}) == len(study.trials)
    assert "RUNNING" not in states(study) and "FAIL" not in states(study)


def test_resuming_with_another_config_is_refused_with_a_diff_unless_forced(tmp_path):
    base = ["search", "--studies-dir", str(tmp_path), "--study", "s", "--epochs", "1"]
    assert run_cli(*base, "--trials", "1").returncode == 0
    refused = run_cli(*base, "--trials", "2", "--model", "test_efficientnet")
    assert refused.returncode == 1
    assert "model: 'test_resnet' -> 'test_efficientnet'" in refused.stderr and "--force" in refused.stderr
    assert len(load(tmp_path, "s").trials) == 1
    forced = run_cli(*base, "--trials", "2", "--model", "test_efficientnet", "--force")
    assert forced.returncode == 0, forced.stderr
    study = load(tmp_path, "s")
    assert len(study.trials) == 2 and study.user_attrs["config"]["model"] == "test_efficientnet"


def test_keep_best_leaves_only_the_best_trials_weights(tmp_path):
    result = run_cli("search", "--studies-dir", str(tmp_path), "--trials", "20", "--epochs", "1", "--keep", "best")
    assert result.returncode == 0, result.stderr
    study = load(tmp_path, NAME)
    trials_dir = tmp_path / NAME / "trials"
    files = sorted(p.relative_to(trials_dir).as_posix() for p in trials_dir.rglob("*") if p.is_file())
    assert files == [f"{study.best_trial.number}/best.pt"]


@pytest.mark.path("device")  # where a decode per worker cost a GPU the most; the decode is the same on both paths
def test_local_workers_decode_each_image_once_for_the_whole_study(tmp_path):
    """The first process decodes into the disk cache and every worker maps it; decodes are counted in every process."""
    photos = tmp_path / "photos"
    for label, color in (("a", (200, 30, 30)), ("b", (30, 200, 30)), ("c", (30, 30, 200))):
        (photos / label).mkdir(parents=True)
        for i in range(12):
            Image.new("RGB", (40, 30), tuple(c + 3 * i for c in color)).save(photos / label / f"{i}.jpg", quality=90)
    log = tmp_path / "decodes.log"
    counter = ROOT / "tests" / "decode_counter"
    result = run_cli(
        "search", "--studies-dir", str(tmp_path / "s"), "--data", str(photos), "--image-size", "16",
        "--trials", "4", "--epochs", "1", "--workers", "2", "--batch-size", "8",
        DECODE_LOG=str(log), PYTHONPATH=f"{counter}{os.pathsep}{ROOT}", fresh=True,  # sitecustomize: at startup
    )
    assert result.returncode == 0, result.stderr
    decodes = log.read_text().splitlines()
    assert len(decodes) == 36, decodes  # each of the 36 files once, by the first process
    assert len({line.split()[0] for line in decodes}) == 1
    pids = {t.user_attrs["pid"] for t in load(tmp_path / "s", "photos-test_resnet").trials}
    assert len(pids) == 2 and str(next(iter(pids))) not in {line.split()[0] for line in decodes}
