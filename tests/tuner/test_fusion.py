"""The threads of a fused group, and the trials it starts."""

import pytest

from lrtune.training.threads import ThreadGuard
from lrtune.tuner.fusion import fused_threads


def _guard(threads: int, budget: int, applied: list[int]) -> ThreadGuard:
    return ThreadGuard(threads, budget=budget, apply=applied.append)


def test_fused_passes_leave_one_of_the_budgets_threads_to_the_trials():
    applied, said = [], []
    fused = fused_threads(_guard(2, 4, applied), 4, said.append)
    assert fused.threads == 3 and fused.budget == 4 and applied == [3] and not fused.fixed
    assert said == ["threads: 3 for 4 fused trials (of 4: the trials report, checkpoint and sample beside the passes)"]
    assert fused_threads(_guard(1, 2, applied), 8, said.append).threads == 1
    assert fused_threads(_guard(1, 1, applied), 2, said.append).threads == 1  # never fewer than one


def test_one_trial_keeps_the_guard_and_its_count():
    applied, said = [], []
    guard = _guard(2, 4, applied)
    assert fused_threads(guard, 1, said.append) is guard
    assert applied == [2] and said == []


def test_split_passes_use_every_core_of_the_budget_in_parts_of_one_thread():
    applied, said = [], []
    fused = fused_threads(_guard(2, 4, applied), 3, said.append, split=True)
    assert fused.threads == 4 and applied == [4]
    assert said == ["threads: 4 for 3 fused trials: 3 parts, each on its own thread at one torch thread"]
    assert fused_threads(_guard(1, 1, applied), 2, said.append, split=True).threads == 1  # one core: no split
    assert said[-1].startswith("threads: 1 for 2 fused trials (of 1:")


def test_a_fused_search_with_auto_threads_splits_its_passes_over_the_cores_and_says_so(tmp_path):
    import torch

    import lrtune
    from lrtune.training import threads

    class Messages:  # a progress sink that keeps its lines
        def __init__(self) -> None:
            self.messages: list[str] = []

        def message(self, text: str) -> None:
            self.messages.append(text)

        def start(self, **kwargs) -> None:
            pass

        def count(self, *args) -> None:
            pass

        def epoch(self, *args) -> None:
            pass

        def trial_done(self, *args) -> None:
            pass

    before = torch.get_num_threads()
    sink = Messages()
    study = lrtune.search(config=lrtune.Config(trials=2, epochs=1, fuse=2, lr_range="off", studies_dir=str(tmp_path)),
                          progress=sink)
    assert torch.get_num_threads() == before  # the caller's count, as it was
    budget = threads.available_cores()[0]
    fused = [m for m in sink.messages if " fused trials" in m]
    if budget > 1:  # test_resnet draws no random numbers: its passes split, one part per core
        expected = f"threads: {budget} for 2 fused trials: 2 parts, each on its own thread at one torch thread"
    else:
        expected = "threads: 1 for 2 fused trials (of 1: the trials report, checkpoint and sample beside the passes)"
    assert fused == [expected], sink.messages
    assert len({t.user_attrs.get("fused_group") for t in study.trials if t.number > 0}) == 1


def test_the_median_pruner_counts_the_running_trials_numbered_before_a_trial_as_complete():
    """What a solo search would have finished before trial 5: trials 0 to 4, running a pass ahead in a fused group,
    count from their first epoch (the pruner's startup included); a later-numbered trial does not, nor one that
    has ended."""
    import optuna

    from lrtune.tuner.samplers import MedianPruner

    pruner = MedianPruner(n_warmup_steps=0)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    asked = [study.ask() for _ in range(10)]
    for trial in asked:
        trial.report(0.5 if trial.number in (3, 5, 9) else 0.8, 1)

    def frozen(number: int) -> optuna.trial.FrozenTrial:
        return study._storage.get_trial(asked[number]._trial_id)

    ahead = [pruner.ahead(study._study_id, n, lambda: {1: 0.8}) for n in (0, 1, 2, 4, 6, 7, 8)]
    for context in ahead:
        context.__enter__()
    assert not pruner.prune(study, frozen(3))  # three ahead of it: fewer than the startup's five
    assert not pruner.prune(study, frozen(5))  # 0, 1, 2 and 4: four, as 3 is not registered
    assert pruner.prune(study, frozen(9))  # seven ahead of it, all at 0.8
    with pruner.ahead(study._study_id, 3, lambda: {1: 0.5}):
        assert pruner.prune(study, frozen(5))  # five: 0.8, 0.8, 0.8, 0.5, 0.8, median 0.8
        ahead[3].__exit__(None, None, None)  # trial 4 ended (pruned; complete, the study would hold it)
        assert not pruner.prune(study, frozen(5))  # four
        with pruner.ahead(study._study_id, 4, lambda: {}):  # not at epoch 1 yet: five, four values there
            assert pruner.prune(study, frozen(5))
        with pruner.ahead(study._study_id + 1, 4, lambda: {1: 0.8}):  # another study's trial
            assert not pruner.prune(study, frozen(5))
    for context in ahead[:3] + ahead[4:]:
        context.__exit__(None, None, None)
    assert not pruner.prune(study, frozen(9)) and not pruner._ahead


@pytest.mark.parametrize("augment", ["cpu", "device"])
def test_a_fused_search_judges_each_trial_against_the_groups_trials_numbered_before_it(tmp_path, augment,
                                                                                         monkeypatch):
    """Every decision of a fused search's median pruner counts the group's running trials numbered before the
    trial, and none after it; the first trials do not wait for the first five to complete."""
    import lrtune
    from lrtune.tuner import samplers

    seen: list[tuple[int, list[int]]] = []
    prune = samplers.MedianPruner.prune

    def spy(self, study, trial):
        with self._lock:
            seen.append((trial.number, sorted(number for (_, number) in self._ahead)))
        return prune(self, study, trial)

    monkeypatch.setattr(samplers.MedianPruner, "prune", spy)
    cfg = lrtune.Config(trials=8, epochs=3, fuse=4, lr_range="off", pruner="median", pruner_warmup=0,
                        augment=augment, studies_dir=str(tmp_path))
    trials = lrtune.search(config=cfg).trials
    assert len(trials) == 8 and seen
    assert any(number < trial for trial, running in seen for number in running if number != trial)
    first = [running for trial, running in seen if trial == 3]
    beside = {t.number for t in trials if t.number < 3 and len(t.intermediate_values) >= 2}  # ran on past epoch 1
    assert first and beside <= set(first[0])  # trial 3's first decision: those running beside it counted
    assert len({t.user_attrs.get("fused_group") for t in trials if t.number > 0}) == 1


def test_a_fused_search_draws_the_same_trials_as_a_solo_search(tmp_path):
    """Each trial draws its parameters whole and in the order of its number: the sampler's random startup gives
    trial n the parameters a solo search gives its trial n, however the group's threads interleave (the group's
    first threads ask at once: without the turn they draw at once, and this fails)."""
    import lrtune

    def params(fuse: int) -> dict:
        cfg = lrtune.Config(trials=7, epochs=1, fuse=fuse, lr_range="off",
                            studies_dir=str(tmp_path / f"fuse{fuse}"))
        return {t.number: t.params for t in lrtune.search(config=cfg).trials}

    alone, fused = params(1), params(4)
    assert len(alone) == 7 and fused == alone


@pytest.mark.parametrize("augment", ["cpu", "device"])
def test_a_fused_search_repeats_itself_however_its_threads_are_timed(tmp_path, augment, monkeypatch):
    """The same fused search twice, its trials' threads held up at random after each epoch (differently each
    time): the same trials, judged the same, with the same curves to the last bit. The passes are formed, the
    trials judged, told and drawn in the group's turns, not in the order the threads happen to reach them."""
    import random
    import time

    import lrtune
    from lrtune.training.fused import FusedGroup
    from lrtune.tuner import trial as trial_module

    monkeypatch.setattr(FusedGroup, "GRACE_S", 3600.0)  # no pass starts without a thread, however slow the machine
    report = trial_module._report
    jitter = random.Random()

    def held_up(*args, **kwargs):
        time.sleep(jitter.random() * 0.03)
        return report(*args, **kwargs)

    monkeypatch.setattr(trial_module, "_report", held_up)

    def trials(name: str, seed: int) -> dict:
        jitter.seed(seed)
        cfg = lrtune.Config(trials=12, epochs=3, fuse=3, lr_range="off", pruner="median", pruner_warmup=0,
                            augment=augment, threads=1, studies_dir=str(tmp_path / name))  # threads: not measured
        return {t.number: (t.state, t.params, t.value, t.intermediate_values) for t in lrtune.search(config=cfg).trials}

    first, second = trials("first", 1), trials("second", 2)
    assert len(first) == 12 and second == first
    assert any(state.name == "PRUNED" for state, *_ in first.values())  # refilled slots: passes of new and old trials
