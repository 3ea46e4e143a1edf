"""The threads of a fused group."""

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
