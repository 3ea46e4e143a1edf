import pytest

from lrtune.errors import LRTuneError
from lrtune.tuner import samplers


def test_unknown_sampler_and_pruner_list_the_valid_ones():
    with pytest.raises(LRTuneError, match=r"unknown sampler 'grid' \(valid: tpe, random, gp, qmc\)"):
        samplers.create_sampler("grid", 0)
    with pytest.raises(LRTuneError, match=r"unknown pruner 'x' \(valid: median, hyperband, none\)"):
        samplers.create_pruner("x", warmup=1, epochs=3)
    for name in samplers.SAMPLERS:
        samplers.create_sampler(name, 0)


def _curve_trial(study, values):
    trial = study.ask()
    for step, value in enumerate(values, start=1):
        trial.report(value, step)
    return trial


def test_the_median_pruner_decides_as_optunas_and_reads_each_complete_trials_curve_once(tmp_path, monkeypatch):
    import optuna

    from lrtune import storage as storage_mod

    url = storage_mod.default_storage_url(tmp_path)
    ours = samplers.create_pruner("median", warmup=1, epochs=4)
    theirs = optuna.pruners.MedianPruner(n_startup_trials=samplers.MEDIAN_STARTUP_TRIALS, n_warmup_steps=1)
    study = optuna.create_study(study_name="s", storage=storage_mod.open_storage(url), direction="maximize", pruner=ours)
    other_worker = optuna.load_study(study_name="s", storage=storage_mod.open_storage(url))
    for k in range(samplers.MEDIAN_STARTUP_TRIALS):
        study.tell(_curve_trial(study, [0.1 * k + 0.1 * s for s in range(4)]), 0.1 * k + 0.3)
    study.tell(_curve_trial(study, [0.9, 0.9]), state=optuna.trial.TrialState.PRUNED)  # not a complete trial
    loads, curves = [], []
    backend = storage_mod.ResilientStorage
    original_load, original_curves = backend._get_trials, backend.intermediate_values
    monkeypatch.setattr(backend, "_get_trials", lambda *a, **k: loads.append(1) or original_load(*a, **k))
    monkeypatch.setattr(backend, "intermediate_values", lambda self, ids: curves.append(len(ids)) or original_curves(self, ids))
    trial, decisions, our_reads = study.ask(), [], []

    def decide(frozen):
        loads.clear(), curves.clear()
        mine = bool(ours.prune(study, frozen))
        our_reads.append((len(loads), sum(curves)))
        return mine, bool(theirs.prune(study, frozen))

    for step, value in enumerate([0.25, 0.35, 0.3], start=1):
        trial.report(value, step)
        decisions.append(decide(study._storage.get_trial(trial._trial_id)))
    assert [a for a, _ in decisions] == [b for _, b in decisions] == [False, False, True]
    # No trial loaded; each complete trial's curve read once, at the trial's first decision.
    assert our_reads == [(0, 5), (0, 0), (0, 0)]
    # Another worker's trials complete: the first decision after the next read sees them, as Optuna's
    # does at once, and no longer prunes.
    for _ in range(3):
        other_worker.tell(_curve_trial(other_worker, [0.0, 0.0, 0.0, 0.0]), 0.0)
    frozen = study._storage.get_trial(trial._trial_id)
    assert decide(frozen) == (True, False) and our_reads[-1] == (0, 0)
    monkeypatch.setattr(samplers.MedianPruner, "REREAD_S", 0.0)
    assert decide(frozen) == (False, False) and our_reads[-1] == (0, 3)
    # A new trial's first decision reads the study again.
    monkeypatch.setattr(samplers.MedianPruner, "REREAD_S", 1e9)
    for _ in range(2):
        other_worker.tell(_curve_trial(other_worker, [0.0, 0.0, 0.0, 0.0]), 0.0)
    fresh = study.ask()
    fresh.report(0.3, 1)
    assert decide(study._storage.get_trial(fresh._trial_id)) == (False, False) and our_reads[-1] == (0, 2)


def _conditional_objective(trial):
    """Two groups, as lrtune's space has: a parameter only some trials have."""
    lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
    schedule = trial.suggest_categorical("schedule", ["step", "cosine"])
    gamma = trial.suggest_float("gamma", 0.1, 0.9) if schedule == "step" else 0.5
    return -abs(lr - 0.01) * gamma


def test_tpe_reads_the_study_once_per_trial_and_samples_as_optunas_with_one_worker():
    import optuna

    def run(sampler):
        study = optuna.create_study(direction="maximize", sampler=sampler)
        reads = []
        original = study._storage.get_all_trials
        study._storage.get_all_trials = lambda *a, **k: reads.append(1) or original(*a, **k)
        running = study.ask()  # a running trial, as another worker's
        running.suggest_float("lr", 1e-4, 1.0, log=True)
        study.optimize(_conditional_objective, n_trials=16)
        return [t.params for t in study.trials], len(reads)

    settings = {"seed": 3, "multivariate": True, "group": True, "n_startup_trials": 4}
    ours, our_reads = run(samplers.TPESampler(**settings))
    theirs, their_reads = run(optuna.samplers.TPESampler(**settings))
    assert optuna.samplers.TPESampler(**settings)._constant_liar  # Optuna's default, which lrtune's keeps
    assert ours == theirs
    # Each ask reads twice (Optuna's look for a queued trial, then the trials the sampler uses), a few
    # more in all; Optuna's TPE reads again for each group and each parameter it samples alone.
    assert our_reads <= 2 * 16 + 4
    assert their_reads - our_reads >= 16 - 4  # at least once more for every trial after the startup ones
