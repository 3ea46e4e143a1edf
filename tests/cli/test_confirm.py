"""``lrtune confirm``, LR-free baselines, and what show, train and export make of them, through the real CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import optuna

import launcher
from helpers import ROOT, cli_env, load, run_cli
from lrtune.training import checkpoints

NAME = "digits-lt-test_resnet"
STUDY = ["--trials", "6", "--epochs", "3", "--batch-size", "64", "--image-size", "8", "--pruner", "none",
         "--test-fraction", "0.2", "--baselines", "schedulefree"]


def running_checkpoint(folder, proc, timeout=300):
    """A confirmation run's last.pt, once its first epoch is on disk; None when the command ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        found = sorted((folder / f"{NAME}.confirm" / "trials").glob("*/last.pt"))
        if found:
            return found[0]
        time.sleep(0.02)
    assert proc.poll() is not None, "no confirmation run wrote a checkpoint"
    return None


def test_confirm_ranks_over_seeds_resumes_after_a_kill_and_leaves_the_study_as_it_was(tmp_path):
    studies = ["--studies-dir", str(tmp_path)]
    made = run_cli("search", *studies, *STUDY)
    assert made.returncode == 0, made.stderr
    before = load(tmp_path, NAME).trials
    assert any(t.user_attrs.get("lr_free") == "schedulefree" and t.state.name == "COMPLETE" for t in before)
    assert "against the best LR-free baseline, schedulefree" in made.stdout and "`lrtune confirm`" in made.stdout

    proc = launcher.launch(["confirm", *studies, "--top", "2", "--seeds", "2"], env=cli_env(), cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = running_checkpoint(tmp_path, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=300)
    on_disk = checkpoints.load(last)["run"]["epoch"] if last is not None and last.is_file() else 0  # or it ended

    again = run_cli("confirm", *studies, "--top", "2", "--seeds", "2")
    assert again.returncode == 0, again.stderr
    study = load(tmp_path, NAME)
    assert [(t.number, t.state, t.params) for t in study.trials] == [(t.number, t.state, t.params) for t in before]
    record = study.user_attrs["confirmed"]
    assert record["complete"] and record["seeds"] == 2 and record["top"] == 2
    roles = [c["role"] for c in record["configs"]]
    assert sorted(roles) == ["baseline", "schedulefree", "tuned", "tuned"]
    assert all(len(c["runs"]) == 2 and c["ci95"][0] <= c["mean"] <= c["ci95"][1] for c in record["configs"])
    assert [c["mean"] for c in record["configs"]] == sorted((c["mean"] for c in record["configs"]), reverse=True)
    assert all(len(c["test_runs"]) == 2 for c in record["configs"])  # the test split scored every run
    runs = optuna.load_study(study_name=f"{NAME}.confirm", storage=f"sqlite:///{tmp_path / 'lrtune.db'}").trials
    killed = [t for t in runs if t.state.name == "FAIL"]
    if on_disk and killed:  # killed mid-run: its retry continued from the checkpoint
        (retry,) = [t for t in runs if t.user_attrs.get("retry_of") == killed[0].number]
        assert retry.user_attrs["resumed_at_epoch"] == on_disk + 1
        assert retry.user_attrs["confirm_of"] == killed[0].user_attrs["confirm_of"]
    assert "confirmed over 2 fresh seeds" in again.stdout and "95% interval" in again.stdout
    assert not list((tmp_path / f"{NAME}.confirm" / "trials").glob("*/best.pt"))  # scored, then removed

    shown = run_cli("show", *studies)
    assert "confirmed over 2 fresh seeds" in shown.stdout and "over 2 seeds)" in shown.stdout
    assert json.loads(run_cli("show", *studies, "--json").stdout)["confirmed"] == record
    winner = record["winner"]
    trained = run_cli("train", *studies, "--epochs", "1")
    assert trained.returncode == 0, trained.stderr
    assert f"retraining trial {winner}, the confirmed winner: mean validation macro-F1" in trained.stderr
    exported = run_cli("export", *studies, "--format", "json")
    assert json.loads(exported.stdout)["trial"]["number"] == winner
    assert f"exported trial {winner}, the confirmed winner" in exported.stderr
    onnx = run_cli("export", *studies, "--format", "onnx", "--out", str(tmp_path / "winner.onnx"))
    if (checkpoints.trial_dir(tmp_path / NAME, winner) / checkpoints.BEST).is_file():  # --keep best kept its weights
        assert onnx.returncode == 0, onnx.stderr
        assert f"exported trial {winner}, the confirmed winner" in onnx.stderr and (tmp_path / "winner.onnx").is_file()
    else:  # the single-run best kept weights, not the confirmed winner: export says to retrain it
        assert onnx.returncode == 1 and onnx.stderr.count("\n") == 1, onnx.stderr
        assert f"trial {winner} of study" in onnx.stderr and f"lrtune train --trial {winner}" in onnx.stderr
