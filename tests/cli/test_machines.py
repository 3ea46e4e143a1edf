"""Several workers on one study in a real PostgreSQL server, through the real CLI."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from optuna.trial import TrialState

import postgres
from helpers import run_cli

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(900)]

TINY = ["--epochs", "2", "--batch-size", "128", "--image-size", "8", "--sampler", "random"]
TRIALS = 12
WORKERS = 3


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One study searched by three workers at once, each its own process."""
    url = postgres.server_url()
    name = postgres.new_study_name()
    folder = tmp_path_factory.mktemp("three")
    args = ["search", "--study", name, "--studies-dir", str(folder / "studies"), "--trials", str(TRIALS), "-v",
            *TINY, "--pruner", "median", "--pruner-warmup", "0"]
    logs = [folder / f"worker{i}.log" for i in range(WORKERS)]
    procs = [postgres.start(None, *args, log=log, LRTUNE_STORAGE=url) for log in logs]
    codes = [proc.wait(timeout=800) for proc in procs]
    texts = [log.read_text() for log in logs]
    assert codes == [0] * WORKERS, "\n\n".join(texts)
    return {"url": url, "name": name, "folder": folder, "logs": texts}


def test_three_workers_share_one_study(shared):
    study = postgres.load(shared["url"], shared["name"])
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) == max(numbers) + 1
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    # Each worker stops once the study holds --trials finished trials; the
    # trials the others are running then still finish: at most workers - 1 more.
    assert TRIALS <= len(finished) <= TRIALS + WORKERS - 1
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len({t.user_attrs["pid"] for t in finished}) == WORKERS
    for text in shared["logs"]:
        assert "error" not in text.lower() and "traceback" not in text.lower(), text


def test_pruning_decisions_used_the_other_workers_values(shared):
    """A pruned trial was below the median of what the complete trials had reported, other workers' included."""
    study = postgres.load(shared["url"], shared["name"])
    trials = study.get_trials(deepcopy=False)
    pruned = [t for t in trials if t.state == TrialState.PRUNED and str(t.user_attrs.get("reason", "")).startswith("pruned")]
    assert pruned, "no trial was pruned"
    used_others = 0
    for trial in pruned:
        step = max(trial.intermediate_values)
        # The pruner saw the trials complete before this one asked it.
        seen = [
            t for t in trials
            if t.state == TrialState.COMPLETE and t.datetime_complete < trial.datetime_complete and step in t.intermediate_values
        ]
        assert len(seen) >= 5  # MedianPruner's startup trials
        assert trial.intermediate_values[step] < statistics.median(t.intermediate_values[step] for t in seen) + 1e-12
        used_others += any(t.user_attrs["pid"] != trial.user_attrs["pid"] for t in seen)
    assert used_others == len(pruned)


def test_another_machine_joins_with_the_stored_config(shared, tmp_path):
    url, name = shared["url"], shared["name"]
    before = postgres.load(url, name)
    done = len([t for t in before.get_trials(deepcopy=False) if t.state.is_finished() and t.state != TrialState.FAIL])
    joined = run_cli("search", "--study", name, "--studies-dir", str(tmp_path), "--trials", str(done + 1),
                     "--pruner", "none", LRTUNE_STORAGE=url, timeout=600)
    assert joined.returncode == 0, joined.stderr
    study = postgres.load(url, name)
    new = [t for t in study.get_trials(deepcopy=False) if t.number >= len(before.trials)]
    assert len(new) == 1 and new[0].state == TrialState.COMPLETE
    assert len(new[0].user_attrs["curves"]["epoch"]) == 2  # the study's --epochs, not the default
    assert study.user_attrs["config"]["image_size"] == 8


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--epochs", "3"], "epochs: 2 -> 3"),
        (["--data", "digits"], "was made with other data (classes"),
    ],
)
def test_a_join_that_would_compute_other_trials_is_refused(shared, tmp_path, flags, message):
    result = run_cli("search", "--study", shared["name"], "--studies-dir", str(tmp_path), "--trials", "99", *flags,
                     LRTUNE_STORAGE=shared["url"], timeout=300)
    assert result.returncode == 1
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_the_password_never_appears(shared, tmp_path):
    url, name = shared["url"], shared["name"]
    secret = postgres.password(url)
    assert len(secret) >= 6
    outputs = list(shared["logs"])
    for args in (["studies"], ["show", "--study", name], ["report", "--study", name, "--studies-dir", str(tmp_path)]):
        result = run_cli(*args, LRTUNE_STORAGE=url, timeout=300)
        assert result.returncode == 0, result.stderr
        outputs += [result.stdout, result.stderr]
    outputs.append((tmp_path / name / "report.html").read_text())
    # Errors: a wrong password, a server that does not answer, a refused join.
    wrong = url.replace(f":{secret}@", f":{secret}x@")
    unreachable = url.rsplit("@", 1)[0] + "@127.0.0.1:1/none"
    for bad in (wrong, unreachable):
        result = run_cli("search", "--study", name, "--storage-retry", "1", LRTUNE_STORAGE=bad, timeout=300)
        assert result.returncode == 1 and "lrtune: error:" in result.stderr
        outputs += [result.stdout, result.stderr]
    refused = run_cli("search", "--study", name, "--epochs", "7", LRTUNE_STORAGE=url, timeout=300)
    outputs += [refused.stdout, refused.stderr]
    study = postgres.load(url, name)
    outputs.append(json.dumps([study.user_attrs, study.system_attrs], default=str))
    outputs += [json.dumps([t.user_attrs, t.system_attrs], default=str) for t in study.get_trials(deepcopy=False)]
    leaks = [text for text in outputs if secret in text]
    assert not leaks, leaks[0][:2000]
