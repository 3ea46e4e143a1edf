"""Your own model and loss by reference (``--model tests/userparts.py:small``), through the real CLI: what works
with them, what a resume checks, and the one-line errors before the first trial."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

import launcher
import lrtune
from helpers import ROOT, cli_env, load, run_cli, states
from lrtune.training import checkpoints

MODEL = "tests/userparts.py:small"
LOSS = "tests/userparts.py:tempered_ce"
NAME = "digits-lt-userparts.small"
EPOCHS = 6
PARTS = ["--model", MODEL, "--losses", "ce", "--loss", LOSS, "--batch-size", "64"]
SEARCH = [*PARTS, "--epochs", str(EPOCHS), "--lr-min", "1e-6", "--lr-max", "10"]


def finished(study):
    return [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]


def wait_for(proc, needle, timeout=600):
    seen = []
    while line := proc.stderr.readline():
        seen.append(line)
        if needle in line:
            return
    proc.kill()
    raise AssertionError(f"never saw {needle!r}; stderr was:\n{''.join(seen)}")


def wait_for_checkpoint(path, timeout=300):
    """Until the trial's first checkpoint is on disk (its writer thread puts it there after the epoch)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and checkpoints.load(path)["run"]["epoch"] >= 1:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} was never written")


def test_a_search_of_your_own_model_and_loss_resumes_after_a_kill_and_every_command_takes_it(tmp_path, augment):
    studies = ["--studies-dir", str(tmp_path)]
    proc = launcher.launch(["search", *studies, "-v", "--trials", "10", "--lr-range", "auto", *SEARCH],
                           env=cli_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(proc, f"trial 1 epoch 2/{EPOCHS}")
    wait_for_checkpoint(tmp_path / NAME / "trials" / "1" / "last.pt")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=300)
    on_disk = checkpoints.load(tmp_path / NAME / "trials" / "1" / "last.pt")["run"]["epoch"]
    killed = load(tmp_path, NAME)
    assert killed.user_attrs["config"]["model"] == MODEL and killed.user_attrs["config"]["losses"] == ["ce", LOSS]
    assert killed.trials[1].state.name == "RUNNING" and 1 <= on_disk < EPOCHS

    again = run_cli("search", *studies, "--trials", "10", "--lr-range", "auto", *SEARCH)
    assert again.returncode == 0, again.stderr
    study = load(tmp_path, NAME)
    assert len(finished(study)) == 10 and "RUNNING" not in states(study) and "WAITING" not in states(study)
    assert study.user_attrs["lr_range"]["lrs"]  # the range test ran on the user's model and loss
    retry = next(t for t in study.trials if t.user_attrs.get("retry_of") == 1)  # from the epoch its checkpoint held
    assert retry.user_attrs["resumed_at_epoch"] == on_disk + 1 and retry.params == killed.trials[1].params
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert pruned, "no trial was pruned"
    tempered = [t for t in finished(study) if t.params["loss"] == LOSS]
    assert tempered and all(0.5 <= t.params["tempered_ce.temperature"] <= 2.0 for t in tempered)

    confirmed = run_cli("confirm", *studies, "--top", "1", "--seeds", "1")
    assert confirmed.returncode == 0, confirmed.stderr
    trained = run_cli("train", *studies, "--on", "all")
    assert trained.returncode == 0, trained.stderr
    folder = trained.stdout.strip().splitlines()[-1]
    assert json.loads((Path(folder) / "config.json").read_text())["architecture"] == MODEL
    lrtune.export_split(study=load(tmp_path, NAME), split="validation", out=tmp_path / "val", studies_dir=tmp_path)
    predicted = run_cli("predict", folder, "--data", str(tmp_path / "val"), "--out", str(tmp_path / "p.csv"))
    assert predicted.returncode == 0, predicted.stderr
    assert len((tmp_path / "p.csv").read_text().splitlines()) > 10
    onnx = run_cli("export", folder, "--format", "onnx", "--out", str(tmp_path / "m.onnx"))
    assert onnx.returncode == 0, onnx.stderr
    assert (tmp_path / "m.onnx").stat().st_size > 0
    report = run_cli("report", *studies, "--out", str(tmp_path / "r.html"))
    assert report.returncode == 0, report.stderr
    assert "tempered_ce" in (tmp_path / "r.html").read_text()

    refused = run_cli("search", *studies, "--study", NAME, "--trials", "11", *SEARCH, "--model",
                      "tests/userparts.py:other")
    assert refused.returncode == 1
    assert f"model: '{MODEL}' -> 'tests/userparts.py:other'" in refused.stderr and "--force" in refused.stderr
    assert len(finished(load(tmp_path, NAME))) == 10


def test_local_workers_import_your_model_and_loss_each(tmp_path, augment):
    done = run_cli("search", "--studies-dir", str(tmp_path), "--trials", "4", "--workers", "2", *PARTS,
                   "--epochs", "1", timeout=900)
    assert done.returncode == 0, done.stderr
    study = load(tmp_path, NAME)
    assert len(finished(study)) >= 4 and "FAIL" not in states(study) and "RUNNING" not in states(study)
    assert len({t.user_attrs["pid"] for t in finished(study)}) == 2


@pytest.mark.trains_nothing
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "tests/userparts.py:nowhere"],
         "cannot import model 'tests/userparts.py:nowhere': tests/userparts.py has no attribute 'nowhere'"),
        (["--model", "no_such_module_here:build"],
         "cannot import model 'no_such_module_here:build': ModuleNotFoundError: No module named 'no_such_module_here'"),
        (["--model", "tests/missing.py:build"], "cannot import model 'tests/missing.py:build': no file tests/missing.py"),
        (["--model", "tests/userparts.py:not_callable"], "model 'tests/userparts.py:not_callable' is a value of type int, not a callable"),
        (["--model", "tests/userparts.py:wrong_shape"],
         "model 'tests/userparts.py:wrong_shape' returned shape [4, 7] for a batch of shape 4x3x16x16; it must return "
         "[batch, num_classes] = [4, 10]"),
        (["--model", "tests/userparts.py:not_a_module"],
         "model 'tests/userparts.py:not_a_module' returned a list, not a torch.nn.Module"),
        (["--model", MODEL, "--pretrained"], "--pretrained and --weights load timm's weights; model"),
        (["--losses", "ce,tests/userparts.py:per_image"],
         "loss 'tests/userparts.py:per_image' returned shape [4] on a probe batch (logits [4, 10]); a loss returns a "
         "scalar tensor"),
        (["--losses", "tests/userparts.py:nan_loss"],
         "loss 'tests/userparts.py:nan_loss' returned nan on a probe batch (logits [4, 10]); a loss returns a finite "
         "scalar"),
        (["--losses", "tests/userparts.py:bad_space"],
         "loss 'tests/userparts.py:bad_space': parameter 'alpha' = (2.0, 1.0) is not (low, high), (low, high, 'log') "
         "or a list of choices"),
    ],
)
def test_a_part_that_cannot_serve_is_one_line_before_the_first_trial(tmp_path, args, message):
    done = run_cli("search", "--studies-dir", str(tmp_path), "--trials", "2", "--epochs", "1", *args)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert message in lines[0], lines[0]
    assert not (tmp_path / "lrtune.db").exists() or not load_trials(tmp_path)


def load_trials(tmp_path):
    import optuna

    storage = f"sqlite:///{tmp_path / 'lrtune.db'}"
    return [t for s in optuna.get_all_study_summaries(storage) for t in optuna.load_study(
        study_name=s.study_name, storage=storage).trials]


@pytest.mark.trains_nothing
def test_help_documents_your_own_model_and_loss():
    done = run_cli("search", "--help")
    text = " ".join(done.stdout.split())
    assert "module:callable" in text and "path/to/file.py:callable" in text
