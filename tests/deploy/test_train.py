"""``lrtune train``: the same run as the trial, a model folder, resume after a crash, errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import lrtune
from helpers import run_cli
from lrtune.cli.main import main

STUDY = "digits-lt-test_resnet"


def test_retraining_the_best_trial_on_train_reproduces_its_best_epoch_value_exactly(small_study, trained):
    best = small_study.best
    assert trained.folder == small_study.dir / STUDY / "models" / f"trial{best.number}-train"
    assert sorted(p.name for p in trained.folder.iterdir()) == [
        "config.json", "curves.json", "model.safetensors", "training.json"
    ]
    assert trained.training["val_value"] == best.value  # same machine, same seed: exact
    assert trained.training["epochs"] == best.user_attrs["best"]["epoch"]
    assert trained.training["params"]["lr"] == best.params["lr"] and trained.training["seed"] == best.user_attrs["seed"]
    curves = json.loads((trained.folder / "curves.json").read_text())
    assert curves["val_f1"] == best.user_attrs["curves"]["val_f1"][: trained.training["epochs"]]
    config = json.loads((trained.folder / "config.json").read_text())
    assert config["architecture"] == "test_resnet" and config["num_classes"] == 10
    assert config["label_names"] == [str(k) for k in range(10)]
    assert config["pretrained_cfg"]["input_size"] == [3, 16, 16]
    assert config["pretrained_cfg"]["mean"] == [0.485, 0.456, 0.406]
    assert f"validation macro-F1 {best.value:.4f} (the trial's best: {best.value:.4f})" in trained.stderr
    assert not list(trained.folder.parent.glob(".*"))  # no work folder, no temporary left


class CrashAfter:
    """A progress sink that kills the run (as a crash would) once an epoch's message is out."""

    def __init__(self, epoch: int) -> None:
        self.epoch, self.messages = epoch, []

    def message(self, text):
        self.messages.append(text)
        if text.startswith(f"epoch {self.epoch}/"):
            raise KeyboardInterrupt

    def start(self, **counts): ...

    def count(self, what, done, total): ...

    def epoch(self, *args): ...

    def trial_done(self, *args): ...


def test_a_crashed_retrain_continues_from_its_last_epoch_and_ends_with_the_same_model(small_study, trained):
    study = lrtune.open_study(name=STUDY, studies_dir=small_study.dir)
    folder = small_study.dir / STUDY / "models" / "resumed"
    with pytest.raises(KeyboardInterrupt):
        lrtune.train(study=study, name="resumed", studies_dir=small_study.dir, progress=CrashAfter(1))
    assert not folder.exists() and (folder.parent / ".resumed.work" / "last.pt").is_file()
    sink = CrashAfter(0)
    result = lrtune.train(study=study, name="resumed", studies_dir=small_study.dir, progress=sink)
    assert result.resumed_at_epoch == 2 and any(m.startswith("continuing from epoch 2") for m in sink.messages)
    assert result.value == small_study.best.value
    again, first = load_file(folder / "model.safetensors"), load_file(trained.folder / "model.safetensors")
    assert again.keys() == first.keys() and all(torch.equal(again[k], first[k]) for k in first)
    assert not (folder.parent / ".resumed.work").exists()


def test_train_on_all_from_an_exported_toml_says_there_is_no_validation_metric(small_study, tmp_path, capsys):
    toml = tmp_path / "best.toml"
    assert main(["export", "--format", "toml", "--studies-dir", str(small_study.dir), "--out", str(toml)]) == 0
    code = main(["train", "--config", str(toml), "--studies-dir", str(small_study.dir), "--on", "all",
                 "--epochs", "1", "--name", "final"])
    out, err = capsys.readouterr()
    assert code == 0, err
    folder = small_study.dir / STUDY / "models" / "final"
    assert out.strip().endswith(str(folder))
    assert "1 epochs on training and validation images: no validation metric" in err
    training = json.loads((folder / "training.json").read_text())
    assert training["on"] == "all" and training["n_images"] == 735 and training["val_value"] is None
    assert training["trial"] == small_study.best.number and training["params"]["lr"] == small_study.best.params["lr"]


def error_of(capsys, *argv: str) -> str:
    assert main(list(argv)) == 1
    err = capsys.readouterr().err
    assert err.startswith("lrtune: error: ") and err.count("\n") == 1, err
    return err


def test_an_unknown_study_or_trial_is_one_line_and_exit_1(small_study, capsys):
    where = ["--studies-dir", str(small_study.dir)]
    assert "unknown study 'nope'" in error_of(capsys, "train", "--study", "nope", *where)
    assert "has no trial 99 (trials 0 to 1)" in error_of(capsys, "train", "--trial", "99", *where)
    assert "has no trial 99" in error_of(capsys, "predict", "--trial", "99", "--data", "x", "--out", "y", *where)


def test_a_trial_without_weights_names_the_keep_that_would_have_kept_them(small_study, tmp_path, capsys):
    out = tmp_path / "p.csv"
    number = small_study.other.number
    err = error_of(capsys, "predict", "--trial", str(number), "--data", str(tmp_path), "--out", str(out),
                   "--studies-dir", str(small_study.dir))
    assert f"trial {number} of study '{STUDY}' kept no weights" in err and "--keep all" in err
    assert not out.exists()


def test_the_cli_train_command_runs_in_a_subprocess_too(small_study):
    done = run_cli("train", "--trial", "99", "--studies-dir", str(small_study.dir))
    assert done.returncode == 1 and done.stderr.startswith("lrtune: error: ") and "Traceback" not in done.stderr
