"""One small study and one retrained model, made once through the real CLI for every deploy test."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest

from helpers import FAST, load, run_cli

STUDY = "digits-lt-test_resnet"


@dataclass
class Study:
    dir: Path  # the studies dir
    study: optuna.Study

    @property
    def best(self) -> optuna.trial.FrozenTrial:
        return max((t for t in self.study.trials if t.value is not None), key=lambda t: (t.value, -t.number))

    @property
    def other(self) -> optuna.trial.FrozenTrial:
        return next(t for t in self.study.trials if t.number != self.best.number)


@dataclass
class Trained:
    folder: Path
    stdout: str
    stderr: str
    training: dict


@pytest.fixture(scope="session")
def small_study(tmp_path_factory) -> Study:
    studies = tmp_path_factory.mktemp("deploy") / "studies"
    done = run_cli("search", "--trials", "2", *FAST, "--studies-dir", str(studies), "-q")
    assert done.returncode == 0, done.stderr
    return Study(studies, load(studies, STUDY))


@pytest.fixture(scope="session")
def trained(small_study) -> Trained:
    done = run_cli("train", "--studies-dir", str(small_study.dir))
    assert done.returncode == 0, done.stderr
    folder = Path(done.stdout.strip())
    return Trained(folder, done.stdout, done.stderr, json.loads((folder / "training.json").read_text()))
