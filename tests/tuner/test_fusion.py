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


def test_trials_start_only_as_the_pruner_still_needs_them_until_its_first_trials_are_complete():
    import optuna

    from lrtune.tuner.fusion import admitted
    from lrtune.tuner.samplers import create_pruner, unpruned_trials

    assert unpruned_trials(create_pruner("median", warmup=1, epochs=5)) == 5
    assert unpruned_trials(create_pruner("hyperband", warmup=1, epochs=5)) == 0
    assert unpruned_trials(create_pruner("none", warmup=1, epochs=5)) == 0
    study = optuna.create_study(direction="maximize")
    for _ in range(3):
        study.tell(study.ask(), 0.5)
    study.tell(study.ask(), state=optuna.trial.TrialState.PRUNED)  # a pruned trial is not one the pruner waits for
    assert admitted(study, 5, running=1)  # 3 complete and 1 running: one more may still start
    assert not admitted(study, 5, running=2)  # 3 and 2: those 5 are what the pruner waits for
    assert admitted(study, 0, running=7)  # a pruner that waits for none
    for _ in range(2):
        study.tell(study.ask(), 0.5)
    assert admitted(study, 5, running=7)  # 5 complete: the pruner prunes from now on


@pytest.mark.parametrize("augment", ["cpu", "device"])
def test_a_fused_search_starts_no_more_trials_than_the_median_pruner_waits_for(tmp_path, augment):
    """Every trial started before the fifth one completed trains all its epochs: at most five start then, plus one
    for each that ended without completing (diverged)."""
    import lrtune
    from optuna.trial import TrialState

    cfg = lrtune.Config(trials=10, epochs=3, fuse=4, lr_range="off", pruner="median", pruner_warmup=0,
                        augment=augment, studies_dir=str(tmp_path))
    trials = lrtune.search(config=cfg).trials
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.datetime_complete)
    assert len(complete) >= 5, [t.state for t in trials]
    fifth = complete[4].datetime_complete
    started = [t for t in trials if t.datetime_start < fifth]
    ended_early = [t for t in trials if t.state != TrialState.COMPLETE and t.datetime_complete is not None
                   and t.datetime_complete < fifth]
    assert len(started) <= 5 + len(ended_early), [(t.number, t.datetime_start, t.state) for t in trials]
    assert len({t.user_attrs.get("fused_group") for t in trials if t.number > 0}) == 1


def test_a_fused_search_draws_the_same_trials_as_a_solo_search(tmp_path):
    """Each trial draws its parameters whole and in the order of its number: the sampler's random startup gives
    trial n the parameters a solo search gives its trial n, however the group's threads interleave (the median
    pruner's admission wakes held threads together: without the turn they draw at once, and this fails)."""
    import lrtune

    def params(fuse: int) -> dict:
        cfg = lrtune.Config(trials=7, epochs=1, fuse=fuse, lr_range="off",
                            studies_dir=str(tmp_path / f"fuse{fuse}"))
        return {t.number: t.params for t in lrtune.search(config=cfg).trials}

    alone, fused = params(1), params(4)
    assert len(alone) == 7 and fused == alone
