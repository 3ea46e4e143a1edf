"""Several workers on one study in a real PostgreSQL server, through the real CLI."""

from __future__ import annotations

import json
import signal
import statistics
import time

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

import postgres
from helpers import run_cli

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(900)]

# The augmentation path does not reach the storage: these tests share the two
# paths between them (``path``), each running once, instead of each running twice.
DEVICE, CPU = pytest.mark.path("device"), pytest.mark.path("cpu")

TINY = ["--epochs", "2", "--batch-size", "128", "--image-size", "8", "--sampler", "random"]
TRIALS = 12
WORKERS = 3


@pytest.fixture(scope="module")
def shared(tmp_path_factory, augment):
    """One study searched by three workers at once, each its own process."""
    url = postgres.server_url()
    name = postgres.new_study_name()
    folder = tmp_path_factory.mktemp("three")
    args = ["search", "--study", name, "--studies-dir", str(folder / "studies"), "--trials", str(TRIALS), "-v",
            *TINY, "--pruner", "median", "--pruner-warmup", "0"]
    logs = [folder / f"worker{i}.log" for i in range(WORKERS)]
    procs = [postgres.start(None, *args, log=logs[0], LRTUNE_STORAGE=url)]
    postgres.wait_for_study(url, name, procs[0])
    procs += [postgres.start(None, *args, log=log, LRTUNE_STORAGE=url) for log in logs[1:]]
    codes = [proc.wait(timeout=800) for proc in procs]
    texts = [log.read_text() for log in logs]
    assert codes == [0] * WORKERS, "\n\n".join(texts)
    return {"url": url, "name": name, "folder": folder, "logs": texts}


@DEVICE
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


@DEVICE
def test_pruning_decisions_used_the_other_workers_values(shared):
    """A pruned trial was below the median of what the complete trials had reported, other workers' included."""
    study = postgres.load(shared["url"], shared["name"])
    trials = study.get_trials(deepcopy=False)
    pruned = [t for t in trials if t.state == TrialState.PRUNED and str(t.user_attrs.get("reason", "")).startswith("pruned")]
    assert pruned, "no trial was pruned"
    used_others = 0
    for trial in pruned:
        step = max(trial.intermediate_values)
        # The pruner saw the trials complete before it was asked, a moment before this trial ended: the first
        # of those complete before it ended, in the order they completed, and at least its 5 startup trials.
        before = sorted((t for t in trials if t.state == TrialState.COMPLETE and step in t.intermediate_values
                         and t.datetime_complete < trial.datetime_complete), key=lambda t: t.datetime_complete)
        value = trial.intermediate_values[step]
        could_have_seen = [before[:k] for k in range(5, len(before) + 1)
                           if value < statistics.median(t.intermediate_values[step] for t in before[:k]) + 1e-12]
        assert could_have_seen, f"trial {trial.number} was pruned at epoch {step} above the median of every set"
        used_others += any(t.user_attrs["pid"] != trial.user_attrs["pid"] for t in could_have_seen[0])
    # Which worker ran which trial depends on scheduling: a worker may prune
    # with its own trials alone before the others have finished any.
    assert used_others >= 1, "no pruning decision saw another worker's trials"


@DEVICE
def test_another_machine_joins_with_the_stored_config(shared, tmp_path):
    url, name = shared["url"], shared["name"]
    before = postgres.load(url, name).get_trials(deepcopy=False)
    done = len(_finished(before))
    joined = run_cli("search", "--study", name, "--studies-dir", str(tmp_path), "--trials", str(done + 1),
                     LRTUNE_STORAGE=url, timeout=600)
    assert joined.returncode == 0, joined.stderr
    study = postgres.load(url, name)
    (new,) = [t for t in study.get_trials(deepcopy=False) if t.number >= len(before)]
    assert new.state in (TrialState.COMPLETE, TrialState.PRUNED)
    # The study's --epochs 2 and --batch-size 128, not the defaults (10 and 32).
    assert max(new.intermediate_values) <= 2
    assert new.user_attrs["effective_batch"] % 128 == 0
    if new.state == TrialState.COMPLETE:
        assert new.user_attrs["curves"]["epoch"] == [1, 2]


@DEVICE
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--epochs", "3"], "epochs: 2 -> 3"),
        (["--data", "digits"], "was made with other data (n_train: 588 -> 1438; "),
    ],
)
def test_a_join_that_would_compute_other_trials_is_refused(shared, tmp_path, flags, message):
    result = run_cli("search", "--study", shared["name"], "--studies-dir", str(tmp_path), "--trials", "99", *flags,
                     LRTUNE_STORAGE=shared["url"], timeout=300)
    assert result.returncode == 1
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr


@DEVICE
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
    outputs.append(json.dumps([study.user_attrs, study._storage.get_study_system_attrs(study._study_id)], default=str))
    outputs += [json.dumps([t.user_attrs, t.system_attrs], default=str) for t in study.get_trials(deepcopy=False)]
    leaks = [text for text in outputs if secret in text]
    assert not leaks, leaks[0][:2000]


RESUME = ["--trials", "2", "--epochs", "4", "--batch-size", "128", "--image-size", "8", "--pruner", "none"]
FAST_HEARTBEAT = ["--heartbeat-interval", "1", "--heartbeat-grace", "3"]


@CPU
def test_a_trial_killed_on_machine_a_is_finished_on_machine_b_from_its_uploaded_checkpoint(tmp_path):
    url = postgres.server_url()
    name, reference = postgres.new_study_name(), postgres.new_study_name()
    store = tmp_path / "artifacts"
    # The same search uninterrupted, for comparison, alongside.
    ref = postgres.start(None, "search", "--study", reference, "--studies-dir", str(tmp_path / "ref"), *RESUME,
                         log=tmp_path / "ref.log", LRTUNE_STORAGE=url)
    # Machine A's worker is SIGKILLed as soon as trial 1 has uploaded a checkpoint, whatever its speed.
    a = postgres.start("machine-a", "search", "--study", name, "--studies-dir", str(tmp_path / "a"), *RESUME,
                       *FAST_HEARTBEAT, "--artifacts", str(store), log=tmp_path / "a.log", inject="die-after-upload=1",
                       LRTUNE_STORAGE=url)
    assert a.wait(timeout=600) == -signal.SIGKILL, (tmp_path / "a.log").read_text()
    # What machine A left: trial 1 running, its last uploaded checkpoint, and that file in the store.
    killed = postgres.load(url, name).get_trials(deepcopy=False)[1]
    assert killed.state == TrialState.RUNNING and killed.user_attrs["host"] == "machine-a", (tmp_path / "a.log").read_text()
    uploaded = killed.user_attrs["checkpoint"]
    assert (store / uploaded["id"]).is_file() and 1 <= uploaded["epoch"] < 4
    time.sleep(3 + 2)  # past the heartbeat grace: machine A's trial is now stale
    b = postgres.start("machine-b", "search", "--study", name, "--studies-dir", str(tmp_path / "b"),
                       *FAST_HEARTBEAT, log=tmp_path / "b.log", LRTUNE_STORAGE=url)
    assert b.wait(timeout=600) == 0, (tmp_path / "b.log").read_text()
    assert ref.wait(timeout=600) == 0, (tmp_path / "ref.log").read_text()

    study = postgres.load(url, name)
    (retry,) = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("retry_of") == 1]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["host"] == "machine-b"
    assert retry.user_attrs["resumed_at_epoch"] == uploaded["epoch"] + 1
    assert "resume_failed" not in retry.user_attrs
    assert retry.user_attrs["curves"]["epoch"] == [1, 2, 3, 4] and sorted(retry.intermediate_values) == [1, 2, 3, 4]
    (uninterrupted,) = [t for t in postgres.load(url, reference).get_trials(deepcopy=False) if t.number == 1]
    assert uninterrupted.params == retry.params
    assert retry.value == uninterrupted.value
    assert retry.user_attrs["curves"] == uninterrupted.user_attrs["curves"]
    # The finished trial's last.pt is gone from the store; its best.pt is listed with it.
    assert not (store / uploaded["id"]).exists()
    kept = (tmp_path / "b" / name / "trials" / str(retry.number) / "best.pt").is_file()
    metas = optuna.artifacts.get_all_artifact_meta(retry, storage=study._storage)
    assert [m.filename for m in metas] == (["best.pt"] if kept else [])


def _finished(trials):
    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


@DEVICE
def test_a_server_restart_mid_search_loses_and_duplicates_no_trial(tmp_path):
    url = postgres.server_url()
    name = postgres.new_study_name()
    args = ["search", "--study", name, "--studies-dir", str(tmp_path), "--trials", "6", "--epochs", "2",
            "--batch-size", "128", "--image-size", "8", "--storage-retry", "60"]
    logs = [tmp_path / f"w{i}.log" for i in range(2)]
    procs = [postgres.start(None, *args, log=logs[0], LRTUNE_STORAGE=url)]
    postgres.wait_for_study(url, name, procs[0])
    procs.append(postgres.start(None, *args, log=logs[1], LRTUNE_STORAGE=url))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and all(p.poll() is None for p in procs):
        try:
            if _finished(postgres.load(url, name).get_trials(deepcopy=False)):
                break
        except KeyError:
            pass
        time.sleep(0.5)
    restarted = postgres.pg_ctl("restart", "-m", "fast", "-w")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    for proc, log in zip(procs, logs):
        code = proc.wait(timeout=600)
        text = log.read_text()
        assert "Traceback" not in text, text
        if code != 0:  # gave up: one line that says why
            assert code == 1 and text.strip().splitlines()[-1].startswith("lrtune: error: "), text
            assert text.count("lrtune: error:") == 1
    again = run_cli(*args, LRTUNE_STORAGE=url, timeout=600)
    assert again.returncode == 0, again.stderr
    trials = postgres.load(url, name).get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials)))
    assert len(_finished(trials)) >= 6
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # A trial that failed is continued by a retry that finished; none is retried twice.
    retried = [t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs]
    assert len(retried) == len(set(retried))
    assert {t.number for t in trials if t.state == TrialState.FAIL} <= set(retried)


def _connections(pid: int, port: int) -> int:
    """Connections to the server's ``port`` that process ``pid`` and its descendants hold open now. Counted on
    the client's side: a backend whose client has closed may linger on the server's list a while on a busy
    machine, and is no longer lrtune's."""
    import psutil

    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    held = 0
    for proc in procs:
        try:
            held += sum(1 for conn in proc.net_connections("tcp") if conn.raddr and conn.raddr.port == port
                        and conn.status == psutil.CONN_ESTABLISHED)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return held


@CPU
def test_sixteen_workers_stay_within_the_servers_connections(tmp_path):
    url = postgres.server_url()
    name = postgres.new_study_name()
    proc = postgres.start(None, "search", "--study", name, "--studies-dir", str(tmp_path), "--workers", "16",
                          "--trials", "16", "--epochs", "1", "--batch-size", "256", "--image-size", "8",
                          log=tmp_path / "log", LRTUNE_STORAGE=url)
    port = sqlalchemy.engine.make_url(url).port
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _connections(proc.pid, port))
        time.sleep(0.5)
    text = (tmp_path / "log").read_text()
    assert proc.returncode == 0, text
    assert "too many clients" not in text
    # 16 workers and their parent, each with at most POOL_SIZE connections (and the count saw them).
    assert 0 < peak <= 17 * 2, peak
    trials = postgres.load(url, name).get_trials(deepcopy=False)
    assert len(_finished(trials)) >= 16
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
