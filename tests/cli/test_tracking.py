"""Runs in MLflow (a real server) and TensorBoard (its event files), through the real CLI."""

import os

import pytest

from helpers import ROOT, load, run_cli, states
from mlflow_server import Server

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")

NAME = "digits-lt-test_resnet"
SEARCH = ("search", "--trials", "3", "--epochs", "2", "--batch-size", "64")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("mlflow"))
    yield server
    server.stop()


def trial_runs(url, study=NAME):
    client = mlflow.MlflowClient(tracking_uri=url)
    experiment = client.get_experiment_by_name(f"lrtune/{study}")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("lrtune.role") == "study"]
    return client, parents, [r for r in runs if r.data.tags.get("lrtune.role") == "trial"]


def test_a_search_logs_a_parent_run_and_one_nested_run_per_trial_to_mlflow(tmp_path, server, augment):
    study_name = f"mlflow-{augment}"
    result = run_cli(*SEARCH, "--studies-dir", str(tmp_path), "--study", study_name, "--track", f"mlflow={server.url}")
    assert result.returncode == 0, result.stderr
    assert "View run" not in result.stdout + result.stderr
    client, (parent,), runs = trial_runs(server.url, study_name)
    study = load(tmp_path, study_name)
    assert sorted(int(r.data.tags["lrtune.trial"]) for r in runs) == [t.number for t in study.trials]
    assert "lrtune.data" in parent.data.tags and parent.data.params["config.epochs"] == "2"
    for run in runs:
        trial = study.trials[int(run.data.tags["lrtune.trial"])]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.params["lr"] == str(trial.params["lr"])
        assert '"classes"' in run.data.tags["lrtune.data"]
        history = client.get_metric_history(run.info.run_id, "val_f1")
        assert [m.step for m in history] == sorted(trial.intermediate_values)
        assert [m.value for m in history] == pytest.approx([trial.intermediate_values[s] for s in sorted(trial.intermediate_values)])
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == sorted(trial.intermediate_values)
        state = "complete" if trial.state.name == "COMPLETE" else f"pruned at epoch {max(trial.intermediate_values)}"
        assert run.data.tags["lrtune.state"] == state
        assert run.info.status == ("FINISHED" if trial.state.name == "COMPLETE" else "KILLED")
    best = next(r for r in runs if int(r.data.tags["lrtune.trial"]) == study.best_trial.number)
    assert os.path.isfile(best.data.tags["lrtune.checkpoint"])


@pytest.mark.path("cpu")
def test_a_killed_trial_resumed_with_workers_continues_its_run_and_duplicates_none(tmp_path, server, augment):
    args = (*SEARCH, "--trials", "4", "--studies-dir", str(tmp_path), "--study", "resumed", "--track",
            f"mlflow={server.url}")
    killed = run_cli(*args, inject="die-after-checkpoint=1")
    assert killed.returncode == -9
    _, _, before = trial_runs(server.url, "resumed")
    killed_run = next(r.info.run_id for r in before if r.data.tags["lrtune.trial"] == "1")
    resumed = run_cli(*args, "--workers", "2", timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    study = load(tmp_path, "resumed")
    retry = next(t for t in study.trials if t.user_attrs.get("retry_of") == 1)
    assert retry.user_attrs["tracking"]["mlflow"] == killed_run
    client, _, runs = trial_runs(server.url, "resumed")
    ended = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(runs) == len(ended)  # one run per trial that ended; the retry continued its trial's run
    history = client.get_metric_history(killed_run, "val_f1")
    assert sorted({m.step for m in history}) == sorted(retry.intermediate_values)
    assert next(r for r in runs if r.info.run_id == killed_run).data.tags["lrtune.ended_as"] == str(retry.number)


@pytest.mark.path("cpu")
def test_a_server_that_goes_away_mid_study_is_one_warning_and_nothing_is_lost(tmp_path, augment):
    server = Server(tmp_path / "server")
    try:
        result = run_cli(*SEARCH, "--trials", "4", "--studies-dir", str(tmp_path), "--track", f"mlflow={server.url}",
                         inject=f"kill-after-trial=0:{server.proc.pid}", timeout=600)
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: tracking to mlflow failed")]
    assert len(warnings) == 1, result.stderr
    study = load(tmp_path, NAME)
    assert states(study).get("COMPLETE", 0) + states(study).get("PRUNED", 0) == 4
    (missed,) = [line for line in result.stderr.splitlines() if line.startswith("mlflow: trial(s) ")]
    assert f"`lrtune track --study {NAME} --to mlflow={server.url}` logs them" in missed


def _scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}, events


def test_tensorboard_gets_a_folder_per_trial_with_its_scalars_and_hparams(tmp_path, augment):
    board = tmp_path / "tb"
    result = run_cli(*SEARCH, "--studies-dir", str(tmp_path), "--track", f"tensorboard={board}")
    assert result.returncode == 0, result.stderr
    study = load(tmp_path, NAME)
    for trial in study.trials:
        scalars, events = _scalars(board / NAME / f"trial-{trial.number}")
        steps = sorted(trial.intermediate_values)
        assert [s for s, _ in scalars["val_f1"]] == steps
        assert [v for _, v in scalars["val_f1"]] == pytest.approx([trial.intermediate_values[s] for s in steps])
        assert [s for s, _ in scalars["train_loss"]] == steps
        assert "hparams" in events.PluginTagToContent("hparams") or events.PluginTagToContent("hparams")


@pytest.mark.trains_nothing
def test_lrtune_track_logs_a_finished_study_once(tmp_path):
    searched = run_cli(*SEARCH, "--studies-dir", str(tmp_path), "--epochs", "1")
    assert searched.returncode == 0, searched.stderr
    board = tmp_path / "later"
    first = run_cli("track", "--studies-dir", str(tmp_path), "--to", f"tensorboard={board}")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"tensorboard: logged 3 trial(s) of study {NAME}"
    assert sorted(p.name for p in (board / NAME).iterdir()) == ["trial-0", "trial-1", "trial-2"]
    scalars, _ = _scalars(board / NAME / "trial-0")
    assert [s for s, _ in scalars["val_f1"]] == [1]
    again = run_cli("track", "--studies-dir", str(tmp_path), "--to", f"tensorboard={board}")
    assert again.stdout.strip() == f"tensorboard: logged 0 trial(s) of study {NAME}"


@pytest.mark.trains_nothing
def test_a_tracker_without_its_package_names_the_extra(tmp_path):
    fake = tmp_path / "fake"
    (fake / "mlflow").mkdir(parents=True)
    (fake / "mlflow" / "__init__.py").write_text("raise ImportError('No module named mlflow')\n")
    result = run_cli(*SEARCH, "--studies-dir", str(tmp_path), "--track", "mlflow", fresh=True,
                     PYTHONPATH=f"{fake}{os.pathsep}{ROOT}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "lrtune: error: --track mlflow needs the mlflow package: pip install 'lrtune[mlflow]'")
    bad = run_cli(*SEARCH, "--studies-dir", str(tmp_path), "--track", "wandb")
    assert "unknown tracker 'wandb' in --track wandb (valid: mlflow, tensorboard)" in bad.stderr


@pytest.mark.path("cpu")
def test_confirm_tags_its_winner_and_track_backfills_a_study_into_mlflow(tmp_path, server, augment):
    searched = run_cli(*SEARCH, "--epochs", "1", "--studies-dir", str(tmp_path), "--study", "confirmed", "--track",
                       f"mlflow={server.url}")
    assert searched.returncode == 0, searched.stderr
    confirmed = run_cli("confirm", "--studies-dir", str(tmp_path), "--study", "confirmed", "--top", "2", "--seeds", "2")
    assert confirmed.returncode == 0, confirmed.stderr
    winner = load(tmp_path, "confirmed").user_attrs["confirmed"]["winner"]
    client, (parent,), runs = trial_runs(server.url, "confirmed")
    tagged = [r for r in runs if r.data.tags.get("lrtune.confirmed_winner") == "true"]
    assert [int(r.data.tags["lrtune.trial"]) for r in tagged] == [winner]
    assert parent.data.tags["lrtune.confirmed_winner"] == tagged[0].info.run_id
    plain = tmp_path / "plain"
    assert run_cli(*SEARCH, "--epochs", "1", "--studies-dir", str(plain), "--study", "later").returncode == 0
    backfilled = run_cli("track", "--studies-dir", str(plain), "--study", "later", "--to", f"mlflow={server.url}")
    assert backfilled.returncode == 0, backfilled.stderr
    assert backfilled.stdout.strip() == "mlflow: logged 3 trial(s) of study later"
    client, _, runs = trial_runs(server.url, "later")
    assert len(runs) == 3 and all(r.data.tags["lrtune.state"] for r in runs)
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "val_f1")] == [1]
    again = run_cli("track", "--studies-dir", str(plain), "--study", "later", "--to", f"mlflow={server.url}")
    assert again.stdout.strip() == "mlflow: logged 0 trial(s) of study later"
