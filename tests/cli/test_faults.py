"""Faults of the machine, through the real CLI: a full disk, a torn checkpoint, a broken database, a heartbeat
that cannot write, memory that runs out. Each gets one line and no traceback, and once the fault is gone the same
search finishes with the exact budget, nothing left running, and its baseline complete."""

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from helpers import load, run_cli, states
from lrtune.training import checkpoints

NAME = "digits-lt-test_resnet"
SEARCH = ("search", "--trials", "4", "--epochs", "3", "--batch-size", "64")


def search(folder, *extra, inject=None, **env):
    return run_cli(*SEARCH, "--studies-dir", str(folder), *extra, inject=inject, **env)


def one_line(result, needle):
    """The run failed with one line of lrtune's naming ``needle``, and no traceback from any thread."""
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("lrtune: error")]
    assert len(errors) == 1 and needle in errors[0], result.stderr
    assert "Traceback" not in result.stderr and "Exception in thread" not in result.stderr, result.stderr


def temporary_files(folder):
    return [p for p in Path(folder).rglob("*") if p.name.endswith(".tmp")]


def whole(folder, trials=4, epochs=3):
    """The study holds ``trials`` finished trials, none running or queued, and a complete baseline that trained
    every epoch; no temporary file is left."""
    study = load(folder, NAME)
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == trials, states(study)
    assert not [t for t in study.trials if t.state.name in ("RUNNING", "WAITING")], states(study)
    (baseline,) = [t for t in study.trials if t.user_attrs.get("baseline") and t.state.name == "COMPLETE"]
    assert baseline.user_attrs["curves"]["epoch"] == list(range(1, epochs + 1))
    assert temporary_files(folder) == []
    return study


def test_a_full_checkpoint_disk_stops_the_search_at_once_and_the_resume_loses_nothing(tmp_path, augment):
    result = search(tmp_path, "--keep", "all", inject="enospc-checkpoint=2")
    one_line(result, f"no space left under {tmp_path}")
    assert "for its last.pt" in result.stderr or "for its best.pt" in result.stderr
    assert "it needs about" in result.stderr
    assert temporary_files(tmp_path) == []
    resumed = search(tmp_path, "--keep", "all")
    assert resumed.returncode == 0, resumed.stderr
    whole(tmp_path)


def test_a_full_database_disk_stops_at_once_not_after_the_storage_retry(tmp_path, augment):
    result = search(tmp_path, "--storage-retry", "600", inject="enospc-storage=12", timeout=300)
    one_line(result, "for the study database")
    resumed = search(tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    whole(tmp_path)


def test_a_heartbeat_write_that_fails_is_one_line_from_the_trial_not_a_threads_traceback(tmp_path, augment):
    result = search(tmp_path, "--heartbeat-interval", "1", "--heartbeat-grace", "60", inject="heartbeat-enospc=1")
    one_line(result, "no space left under")
    resumed = search(tmp_path, "--heartbeat-interval", "1", "--heartbeat-grace", "60")
    assert resumed.returncode == 0, resumed.stderr
    whole(tmp_path)


def test_a_torn_checkpoint_is_set_aside_and_its_trial_starts_again(tmp_path, augment):
    killed = search(tmp_path, inject="die-after-checkpoint=0")
    assert killed.returncode == -9, killed.stderr
    last = checkpoints.trial_dir(tmp_path / NAME, 0) / checkpoints.LAST
    with open(last, "r+b") as file:  # what a partial copy or a failing disk leaves
        file.truncate(1000)
    resumed = search(tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "its checkpoint cannot be read" in resumed.stderr and "starts again from epoch 0" in resumed.stderr
    (aside,) = (tmp_path / NAME / checkpoints.UNREADABLE).iterdir()
    assert aside.stat().st_size == 1000  # kept, not deleted
    study = whole(tmp_path)
    retry = next(t for t in study.trials if t.user_attrs.get("retry_of") == 0)
    assert retry.user_attrs["checkpoint_set_aside"] == str(aside)
    assert "resumed_at_epoch" not in retry.user_attrs


def test_a_cpu_memory_error_fails_only_that_trial_and_the_search_goes_on(tmp_path, augment):
    result = search(tmp_path, inject="memory-error-trial=1")
    assert result.returncode == 0, result.stderr
    study = whole(tmp_path)
    assert study.trials[1].state.name == "FAIL"
    assert study.trials[1].user_attrs["reason"] == "out of memory on the CPU (MemoryError)"


def test_an_io_error_in_a_trial_queues_it_to_continue_from_its_checkpoint(tmp_path, augment):
    result = search(tmp_path, inject="eio-trial=1")
    assert result.returncode == 0, result.stderr
    study = whole(tmp_path)
    failed = study.trials[1]
    assert failed.state.name == "FAIL"
    assert failed.user_attrs["reason"].startswith("OSError: [Errno 5] Input/output error (a fault of the machine")
    retry = next(t for t in study.trials if t.user_attrs.get("retry_of") == 1)
    assert retry.state.name in ("COMPLETE", "PRUNED") and retry.user_attrs["faults"] == 1
    assert retry.user_attrs["resumed_at_epoch"] == 2  # from trial 1's checkpoint of epoch 1


@pytest.mark.path("cpu")
def test_a_lock_another_process_holds_is_waited_out_with_one_line(tmp_path, augment):
    # Another process takes the lock as trial 1 starts and holds it past SQLite's own wait (10 s).
    result = search(tmp_path, "--trials", "3", "--epochs", "1", inject="lock-db-before-trial=1:12")
    assert result.returncode == 0, result.stderr
    assert "database is locked; waiting for it, for up to 120 s (--storage-retry)" in result.stderr
    assert "Traceback" not in result.stderr
    whole(tmp_path, trials=3, epochs=1)


@pytest.mark.trains_nothing
@pytest.mark.parametrize("command", [SEARCH, ("show",), ("report", "--out", "r.html")])
def test_a_storage_file_that_is_not_a_database_is_refused_and_left_as_it_is(tmp_path, command):
    db = tmp_path / "lrtune.db"
    junk = os.urandom(8192)
    db.write_bytes(junk)
    result = run_cli(*command, "--studies-dir", str(tmp_path))
    one_line(result, f"storage {db} is not an SQLite database")
    assert db.read_bytes() == junk


@pytest.mark.path("cpu")
def test_a_database_that_vanishes_mid_search_stops_it_and_is_not_recreated(tmp_path, augment):
    result = search(tmp_path, inject="vanish-db-after-trial=0")
    one_line(result, "vanished or was replaced during the search")
    assert not (tmp_path / "lrtune.db").exists()


@pytest.mark.path("cpu")
def test_a_resume_sweeps_the_temporary_files_of_dead_processes(tmp_path, augment):
    killed = search(tmp_path, inject="die-after-checkpoint=0")
    assert killed.returncode == -9, killed.stderr
    dead = _dead_pid()
    folder = checkpoints.trial_dir(tmp_path / NAME, 99)  # a folder no trial of this search touches
    folder.mkdir(parents=True)
    orphan = folder / f".last.pt.{dead}@{os.uname().nodename}.tmp"
    orphan.write_bytes(b"half a checkpoint")
    other_host = folder / f".last.pt.{dead}@another-host.tmp"
    other_host.write_bytes(b"another machine's write, in progress")
    resumed = search(tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert not orphan.exists()
    assert other_host.exists()


def _dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture
def small_disk(tmp_path):
    """A real 3 MB file system (tmpfs), or a skip where this process may not mount one."""
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    folder = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(folder)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.path("cpu")
def test_a_real_full_disk_warns_first_stops_with_one_line_and_resumes_once_there_is_room(small_disk, augment):
    result = search(small_disk, "--keep", "all", "--trials", "8", "--epochs", "4", timeout=300)
    assert "this search may write about" in result.stderr  # warned before the first trial
    one_line(result, f"no space left under {small_disk}")
    assert temporary_files(small_disk) == []
    subprocess.run(["mount", "-o", "remount,size=200m", str(small_disk)], check=True)
    resumed = search(small_disk, "--keep", "all", "--trials", "8", "--epochs", "4")
    assert resumed.returncode == 0, resumed.stderr
    whole(small_disk, trials=8, epochs=4)
